//! A logger that keeps what is logged, for tests that check what heli logs
//! (with the `test-log` feature, meant for dev-dependencies only).
//!
//! The `log` crate takes one logger per process, for good: [`capture`]
//! installs this one the first time it is called, and every later call only
//! sets the level. Tests that count lines in the one log run one at a time
//! (or in a test binary of their own) and [`clear`] it first.
//!
//! # Examples
//!
//! ```
//! use heli_core::test_log;
//!
//! assert!(test_log::capture(log::LevelFilter::Warn));
//! log::warn!("disk {} full", 1);
//! log::info!("not kept: below the level");
//! let lines = test_log::lines();
//! assert_eq!(lines.len(), 1);
//! assert_eq!((lines[0].level, lines[0].text.as_str()), (log::Level::Warn, "disk 1 full"));
//! ```

use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, ThreadId};

/// A line logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The thread that logged it.
    pub thread: ThreadId,
    /// Its level.
    pub level: log::Level,
    /// Its text, as an operator's logger shows it (without level or time).
    pub text: String,
}

/// Every line kept so far.
static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());

/// The logger: keeps what it is given (the `log` macros give it only what
/// the level set by [`capture`] lets through).
struct Keeper;

impl log::Log for Keeper {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = Line {
            thread: thread::current().id(),
            level: record.level(),
            text: record.args().to_string(),
        };
        kept().push(line);
    }

    fn flush(&self) {}
}

/// The kept lines, even after a test that panicked while holding them.
fn kept() -> MutexGuard<'static, Vec<Line>> {
    LINES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps what is logged at `level` and above from now on; false (and
/// nothing changed) when another logger was installed first.
pub fn capture(level: log::LevelFilter) -> bool {
    static KEEPER: Keeper = Keeper;
    static OURS: OnceLock<bool> = OnceLock::new();
    let ours = *OURS.get_or_init(|| log::set_logger(&KEEPER).is_ok());
    if ours {
        log::set_max_level(level);
    }
    ours
}

/// Every line kept so far, oldest first.
pub fn lines() -> Vec<Line> {
    kept().clone()
}

/// Forgets the lines kept so far.
pub fn clear() {
    kept().clear();
}
