//! Work the controller runs off its loop, each piece with a deadline:
//! grants and revokes on the granter's own thread, stack reads on the
//! inspector's. The loop hands work over and goes on serving; the result
//! comes back on a channel, or the loop gives up on it at its deadline.

use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};
use log::warn;

use crate::deadline::Deadline;
use crate::granter::Granter;
use crate::inspector::Inspector;
use crate::process::{Pid, ProcessId};

/// Tells a piece of work from the others.
pub(crate) type JobId = u64;

/// How long undoing a grant that completed after its asker was answered
/// may take.
const UNDO_DEADLINE: Duration = Duration::from_secs(5);

/// Who settles a piece of work first: the worker that finished it, or the
/// loop that gave up on it. Exactly one of them wins.
#[derive(Clone, Debug, Default)]
pub(crate) struct Claim(Arc<AtomicU8>);

impl Claim {
    const OPEN: u8 = 0;
    const FINISHED: u8 = 1;
    const ABANDONED: u8 = 2;

    /// The worker finished: true if the loop had not given up yet (the
    /// result is then the loop's to deliver).
    fn finish(&self) -> bool {
        self.settle(Self::FINISHED)
    }

    /// The loop gives up: true if the worker had not finished yet (its
    /// result, if one comes, is then the worker's to clean up).
    pub(crate) fn abandon(&self) -> bool {
        self.settle(Self::ABANDONED)
    }

    fn settle(&self, how: u8) -> bool {
        self.0
            .compare_exchange(Self::OPEN, how, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// What the granter's thread does.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GrantWork {
    /// Lets `client` ptrace `target`.
    Grant {
        target: ProcessId,
        client: ProcessId,
    },
    /// Withdraws any grant on `target`.
    Revoke { target: ProcessId },
}

/// A result for the loop.
#[derive(Debug)]
pub(crate) enum Done {
    /// A grant or revoke ended; with the granter's facts for `STATUS`.
    Grant {
        id: JobId,
        work: GrantWork,
        result: io::Result<()>,
        status_fields: Vec<(String, String)>,
    },
    /// A stack read ended.
    Stack {
        id: JobId,
        result: io::Result<String>,
    },
}

type GrantJob = (JobId, GrantWork, Deadline, Claim);
type StackJob = (JobId, Pid, Deadline, Claim);

/// The granter, on a thread of its own that does one piece of work at a
/// time, in order.
#[derive(Debug)]
pub(crate) struct GrantWorker(Sender<GrantJob>);

impl GrantWorker {
    /// Moves `granter` to a new thread; results go to `done`.
    pub(crate) fn start<G: Granter + Send + 'static>(
        mut granter: G,
        done: Sender<Done>,
    ) -> io::Result<GrantWorker> {
        let jobs = spawn_worker(
            "heli-granter",
            move |(id, work, deadline, claim): GrantJob| {
                let result = unless_expired(&deadline, || match work {
                    GrantWork::Grant { target, client } => granter.grant(target, client, &deadline),
                    GrantWork::Revoke { target } => granter.revoke(target, &deadline),
                });
                if !claim.finish() {
                    undo_late(&mut granter, work, &result);
                }
                let status_fields = granter.status_fields();
                done.send(Done::Grant {
                    id,
                    work,
                    result,
                    status_fields,
                })
                .is_ok()
            },
        )?;
        Ok(GrantWorker(jobs))
    }

    /// Queues `work`; its result comes back as [`Done::Grant`] with `id`.
    pub(crate) fn submit(&self, id: JobId, work: GrantWork, deadline: Deadline, claim: Claim) {
        // The thread ends only when the loop's receiver is gone.
        let _ = self.0.send((id, work, deadline, claim));
    }
}

/// A grant that completed after the loop gave up on it (its asker was told
/// it failed) must not stay in force: it is withdrawn at once, before any
/// later work.
fn undo_late(granter: &mut impl Granter, work: GrantWork, result: &io::Result<()>) {
    if let (GrantWork::Grant { target, client }, Ok(())) = (work, result) {
        warn!(
            "the grant to PID {} completed after its deadline, its client told it failed: \
             withdrawing it",
            client.pid
        );
        if let Err(err) = granter.revoke(target, &Deadline::after(UNDO_DEADLINE)) {
            warn!(
                "cannot withdraw the late grant on PID {}: {err}",
                target.pid
            );
        }
    }
}

/// Starts a thread named `name` that hands each job sent on the returned
/// channel to `each`, in order, until `each` returns false (its results
/// have nowhere to go) or every sender is gone.
fn spawn_worker<J: Send + 'static>(
    name: &str,
    mut each: impl FnMut(J) -> bool + Send + 'static,
) -> io::Result<Sender<J>> {
    let (jobs, queue) = unbounded::<J>();
    thread::Builder::new().name(name.into()).spawn(move || {
        for job in queue {
            if !each(job) {
                break;
            }
        }
    })?;
    Ok(jobs)
}

/// Runs `work`, unless its deadline passed (or it was called off) before it
/// could start.
fn unless_expired<T>(deadline: &Deadline, work: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    if deadline.expired() {
        Err(not_started(deadline))
    } else {
        work()
    }
}

/// The error for work whose deadline passed before it could start.
fn not_started(deadline: &Deadline) -> io::Error {
    if deadline.is_cancelled() {
        io::Error::new(io::ErrorKind::Interrupted, "called off")
    } else {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "not started before its deadline: earlier work is still waiting on the target",
        )
    }
}

/// The inspector, on a thread of its own that reads one stack dump at a
/// time.
#[derive(Debug)]
pub(crate) struct StackWorker(Sender<StackJob>);

impl StackWorker {
    /// Shares `inspector` with a new thread; results go to `done`.
    pub(crate) fn start<I: Inspector + Send + Sync + 'static>(
        inspector: Arc<I>,
        done: Sender<Done>,
    ) -> io::Result<StackWorker> {
        let jobs = spawn_worker(
            "heli-inspector",
            move |(id, pid, deadline, claim): StackJob| {
                let result = unless_expired(&deadline, || {
                    inspector
                        .stacks(pid)
                        .map(|threads| crate::stacks::threads_text(&threads))
                });
                !claim.finish() || done.send(Done::Stack { id, result }).is_ok()
            },
        )?;
        Ok(StackWorker(jobs))
    }

    /// Queues a stack read of `pid`; its result comes back as
    /// [`Done::Stack`] with `id`, unless the loop gave up on it.
    pub(crate) fn submit(&self, id: JobId, pid: Pid, deadline: Deadline, claim: Claim) {
        let _ = self.0.send((id, pid, deadline, claim));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_side_settles_a_claim() {
        let claim = Claim::default();
        let other = claim.clone();
        assert!(claim.finish());
        assert!(!other.abandon());
        assert!(!other.finish());
        let claim = Claim::default();
        assert!(claim.abandon());
        assert!(!claim.finish());
    }

    #[test]
    fn work_whose_deadline_passed_is_not_started() {
        let expired = Deadline::after(Duration::ZERO);
        assert_eq!(not_started(&expired).kind(), io::ErrorKind::TimedOut);
        let called_off = Deadline::after(Duration::from_secs(60));
        called_off.cancel();
        assert_eq!(not_started(&called_off).kind(), io::ErrorKind::Interrupted);
    }
}
