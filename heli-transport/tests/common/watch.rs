//! Watchdogs and bounded waits: a hang is a failure, never a stuck run.

use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

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

/// Declares each `name: secs` as a test, in a module `watched`, that runs
/// the function `name` under a watchdog of `secs` seconds ([`bounded`]).
/// A function left out of the list is never used, and the compiler says so.
#[macro_export]
macro_rules! watched {
    ($($name:ident: $secs:literal),* $(,)?) => {
        mod watched {
            $(#[test] fn $name() { $crate::common::bounded($secs, super::$name) })*
        }
    };
}

/// Waits for `thread` to finish, at most `limit`.
pub(crate) fn join_within<T>(thread: JoinHandle<T>, limit: Duration) -> T {
    wait_until(limit, "the thread is still running", || {
        thread.is_finished()
    });
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Polls `done` until it holds, failing with `what` after `limit`.
pub(crate) fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "after {limit:?}: {what}");
        thread::sleep(Duration::from_millis(5));
    }
}
