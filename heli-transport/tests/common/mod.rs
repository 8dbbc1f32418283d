//! What both transports' test files share: watchdogs and file helpers.

#![allow(dead_code)]

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The pid the fake controller reports for its target.
pub(crate) const TARGET: heli_core::Pid = heli_core::Pid::new(4242).unwrap();

/// `raw` as a pid.
pub(crate) fn as_pid(raw: u32) -> heli_core::Pid {
    heli_core::Pid::new(raw).unwrap()
}

/// A uid nobody in these tests runs as.
pub(crate) const NOBODY: u32 = 65534;

/// Runs `body` on a thread and fails the test if it takes longer than
/// `secs` seconds; a panic in `body` is the test's panic.
pub(crate) fn bounded<T: Send + 'static>(
    secs: u64,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, result) = mpsc::channel();
    let runner = thread::spawn(move || {
        let _ = done.send(body());
    });
    match result.recv_timeout(Duration::from_secs(secs)) {
        Ok(value) => {
            let _ = runner.join();
            value
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("test still running after {secs} s: something hangs")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => match runner.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the body returned without sending its result"),
        },
    }
}

/// Waits for `thread` to finish, at most `limit`.
pub(crate) fn join_within<T>(thread: JoinHandle<T>, limit: Duration) -> T {
    let deadline = Instant::now() + limit;
    while !thread.is_finished() {
        assert!(
            Instant::now() < deadline,
            "thread still running after {limit:?}"
        );
        thread::sleep(Duration::from_millis(5));
    }
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

pub(crate) fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

pub(crate) fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

/// A private directory, as `listen` would make it.
pub(crate) fn private_dir(path: &Path) {
    fs::create_dir(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
}

pub(crate) fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

pub(crate) fn expect_refused(err: io::Error, needle: &str) {
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    let text = err.to_string();
    assert!(text.contains("refusing"), "{text}");
    assert!(text.contains(needle), "{text:?} should say {needle:?}");
}
