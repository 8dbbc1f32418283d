//! Files and directories: modes, owners, listings, refusals.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use heli_core::Transport;

/// A uid nobody in these tests runs as.
pub(crate) const NOBODY: u32 = 65534;

pub(crate) fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

pub(crate) fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// Makes `path` a private directory, as `listen` would make it.
pub(crate) fn private_dir(path: PathBuf) -> PathBuf {
    fs::create_dir(&path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
    path
}

/// The names of the entries in `dir`, sorted.
pub(crate) fn names_in(dir: impl AsRef<Path>) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// `err` is a refusal that says `needle`.
pub(crate) fn expect_refused(err: io::Error, needle: &str) {
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    let text = err.to_string();
    assert!(text.contains("refusing"), "{text}");
    assert!(text.contains(needle), "{text:?} should say {needle:?}");
}

/// Neither listening on `transport` nor connecting to it is allowed; both
/// refusals say `needle`.
pub(crate) fn expect_unusable(transport: &impl Transport, needle: &str) {
    let Err(err) = transport.listen() else {
        panic!("listening was allowed, {needle:?} notwithstanding");
    };
    expect_refused(err, needle);
    let Err(err) = transport.connect(Duration::from_secs(1)) else {
        panic!("connecting was allowed, {needle:?} notwithstanding");
    };
    expect_refused(err, needle);
}
