//! A lock and watchdog per test, bounded waits, and the temp directories
//! of remote execution.

use std::ffi::OsStr;
use std::fs;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

/// Generous bound on anything that should be quick.
pub(crate) const SOON: Duration = Duration::from_secs(10);

/// ptrace, signal and process state: one test at a time.
static LOCK: Mutex<()> = Mutex::new(());

/// Serializes the tests and aborts the run if one hangs.
pub(crate) struct Serial {
    _watchdog: Watchdog,
    _lock: MutexGuard<'static, ()>,
}

/// Takes the test lock and arms a one-minute watchdog for test `name`.
pub(crate) fn serial(name: &'static str) -> Serial {
    let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    Serial {
        _watchdog: Watchdog::new(name, Duration::from_secs(60)),
        _lock: lock,
    }
}

/// Aborts the process unless dropped within its limit.
struct Watchdog(#[allow(dead_code)] Sender<()>);

impl Watchdog {
    fn new(name: &'static str, limit: Duration) -> Watchdog {
        let (tx, rx) = bounded::<()>(0);
        thread::spawn(move || {
            if rx.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
                eprintln!("{name}: still running after {limit:?}: aborting");
                std::process::abort();
            }
        });
        Watchdog(tx)
    }
}

/// Waits until `condition` holds; fails naming `what` after [`SOON`].
pub(crate) fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// The per-request directories of remote execution that exist now
/// (`<tmp>/heli-remote-exec-<euid>/pep768-*`): every request removes its
/// own, so a test compares them before and after.
pub(crate) fn heli_dirs() -> Vec<PathBuf> {
    let parent = std::env::temp_dir().join(format!(
        "heli-remote-exec-{}",
        nix::unistd::geteuid().as_raw()
    ));
    let Ok(entries) = fs::read_dir(&parent) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|name| name.starts_with("pep768-"))
        })
        .collect();
    dirs.sort();
    dirs
}
