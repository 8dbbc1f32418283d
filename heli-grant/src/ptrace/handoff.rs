//! Between the caller of an injection and its tracer thread: where the
//! injection stands, its result, and whether the caller still waits for it.

use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use heli_core::Pid;
use log::debug;

use super::bell::Bell;

/// Where the tracer thread is, for the caller's error if it gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Waiting for the right to wait for children (the reaper, or another
    /// injection, holds it).
    Queued,
    /// Working; the target's registers are its own.
    Working,
    /// The registers of thread `tid` are set for the call: the tracer
    /// thread stays with it until it can put them back.
    Borrowed { tid: Pid },
    /// The registers of thread `tid` are back, but the call was interrupted
    /// in its course (it blocks) and left its single-step trap pending: the
    /// tracer thread stays until the thread can drop it.
    Draining { tid: Pid },
}

/// The meeting point of a caller and its tracer thread, shared by both.
#[derive(Debug)]
pub(super) struct Handoff<R> {
    shared: Mutex<Shared<R>>,
    /// Rung when the report is there.
    done: Bell,
}

#[derive(Debug)]
struct Shared<R> {
    stage: Stage,
    report: Option<R>,
    caller_gone: bool,
}

impl<R> Handoff<R> {
    pub(super) fn new() -> io::Result<Handoff<R>> {
        Ok(Handoff {
            shared: Mutex::new(Shared {
                stage: Stage::Queued,
                report: None,
                caller_gone: false,
            }),
            done: Bell::new()?,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared<R>> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The tracer thread: where it is now.
    pub(super) fn set_stage(&self, stage: Stage) {
        self.lock().stage = stage;
    }

    /// The tracer thread: hands `report` over; gives it back if the caller
    /// is gone (it gave up at its deadline).
    pub(super) fn finish(&self, report: R) -> Result<(), R> {
        let mut shared = self.lock();
        if shared.caller_gone {
            return Err(report);
        }
        shared.report = Some(report);
        drop(shared);
        if let Err(err) = self.done.ring() {
            debug!("cannot ring the caller of an injection: {err}");
        }
        Ok(())
    }

    /// The caller: the report, if it comes within `timeout`.
    pub(super) fn wait(&self, timeout: Duration) -> Option<R> {
        if let Some(report) = self.lock().report.take() {
            return Some(report);
        }
        self.done.wait(Some(timeout));
        self.lock().report.take()
    }

    /// The caller: gives up, unless the report came meanwhile; else where
    /// the tracer thread was.
    pub(super) fn give_up(&self) -> Result<R, Stage> {
        let mut shared = self.lock();
        match shared.report.take() {
            Some(report) => Ok(report),
            None => {
                shared.caller_gone = true;
                Err(shared.stage)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn hands_over_or_tells_the_tracer_it_is_late() {
        let handoff = Arc::new(Handoff::new().unwrap());
        assert_eq!(handoff.wait(Duration::from_millis(1)), None);
        let tracer = handoff.clone();
        let thread = std::thread::spawn(move || tracer.finish(7));
        assert_eq!(handoff.wait(Duration::from_secs(10)), Some(7));
        assert_eq!(thread.join().unwrap(), Ok(()));

        let late = Handoff::new().unwrap();
        late.set_stage(Stage::Borrowed {
            tid: Pid::new(9).unwrap(),
        });
        assert_eq!(
            late.give_up(),
            Err(Stage::Borrowed {
                tid: Pid::new(9).unwrap()
            })
        );
        assert_eq!(late.finish(8), Err(8));

        let just_in_time = Handoff::new().unwrap();
        just_in_time.finish(5).unwrap();
        assert_eq!(just_in_time.give_up(), Ok(5));
    }
}
