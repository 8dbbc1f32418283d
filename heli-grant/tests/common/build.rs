//! C programs the tests build for themselves.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// Builds `source` with `cc` (or `$CC`) into `name` in the tests' temp
/// directory, linking `libs`, and returns the program's path. Built under
/// a name of its own first, so a test binary running meanwhile never finds
/// half a program.
pub(crate) fn build_c(name: &str, source: &str, libs: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let exe = dir.join(name);
    let tmp = dir.join(format!("{name}-{}", std::process::id()));
    let src = tmp.with_extension("c");
    fs::write(&src, source).unwrap();
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let status = Command::new(&cc)
        .args(["-O1", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src)
        .args(libs)
        .status()
        .unwrap_or_else(|err| panic!("cannot run {cc:?} to build {name}: {err}"));
    assert!(status.success(), "building {name} failed");
    fs::remove_file(&src).unwrap();
    fs::rename(&tmp, &exe).unwrap();
    exe
}
