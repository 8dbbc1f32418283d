//! The interpreters the targets run, and where their scripts go.

use std::path::PathBuf;

/// `$var` if that file exists, else `default` if it does.
pub(crate) fn existing(var: &str, default: impl Into<PathBuf>) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .into_iter()
        .chain([default.into()])
        .find(|path| path.exists())
}

/// The directory scripts/install-python314.sh and scripts/test.sh install
/// into, as scripts/lib/deps.sh decides it: `$HELI_DEPS`, else /opt/heli
/// for root, else `$XDG_DATA_HOME/heli` or `~/.local/share/heli`.
pub(crate) fn deps_dir() -> PathBuf {
    if let Some(deps) = std::env::var_os("HELI_DEPS").filter(|d| !d.is_empty()) {
        return PathBuf::from(deps);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/opt/heli");
    }
    match std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|data| data.is_absolute())
    {
        Some(data) => data.join("heli"),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/heli")
        }
    }
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
    existing("HELI_PYTHON", deps_dir().join("py314/usr/bin/python3.14"))
        .expect("Python 3.14 not found: run scripts/test.sh (it installs it) or set HELI_PYTHON")
}
