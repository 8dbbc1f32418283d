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

/// The private directories of remote execution now in the temp directory
/// (not the tests' own `heli-pep768-test-*` ones).
pub(crate) fn heli_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|name| name.starts_with("heli-pep768-") && !name.contains("test"))
        })
        .collect();
    dirs.sort();
    dirs
}
