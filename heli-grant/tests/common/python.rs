//! The interpreters the targets run, and where their scripts go.

use std::path::PathBuf;

/// `$var` if that file exists, else `default` if it does.
pub(crate) fn existing(var: &str, default: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(default)])
        .find(|path| path.exists())
}

/// A temp directory for the scripts a test has a target run.
pub(crate) fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("heli-pep768-test-")
        .tempdir()
        .unwrap()
}

/// Debian's CPython 3.14: `$HELI_PYTHON`, else the project's private
/// install; a failure saying how to get it when there is neither (never a
/// skip).
pub(crate) fn python314() -> PathBuf {
    existing("HELI_PYTHON", "/opt/heli/py314/usr/bin/python3.14")
        .expect("Python 3.14 not found: run scripts/test.sh (it installs it) or set HELI_PYTHON")
}
