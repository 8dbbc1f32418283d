//! Work the controller runs off its loop, each piece with a deadline:
//! grants and revokes on the granter's own thread, stack reads and tree
//! listings on the inspector's (reading `/proc/PID/cmdline` or a process's
//! memory can block on a frozen process's memory lock: never on the loop). The loop hands work over and goes on serving; the result
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
use crate::process::ProcessId;
use crate::stacks::{ProcessStacks, ThreadStack};
use crate::tree::TreeProcess;

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
    /// A read of the inspector's ended.
    Inspect {
        id: JobId,
        result: io::Result<Inspected>,
    },
}

/// What the inspector's thread reads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Inspection {
    /// The threads of a process (`STACK` of the target).
    Threads(ProcessId),
    /// The tree under `root` (`PS`).
    Tree(ProcessId),
    /// The stacks of process `only` of the tree under `root`, or of every
    /// process of it (`STACKS`, `STACK <pid>|ALL`). A process not of the
    /// controller's user (`me`, when known) is skipped.
    Stacks {
        root: ProcessId,
        only: Option<ProcessId>,
        me: Option<u32>,
    },
}

/// What the inspector's thread read.
#[derive(Debug)]
pub(crate) enum Inspected {
    Threads(Vec<ThreadStack>),
    Tree(Vec<TreeProcess>),
    Stacks(Vec<ProcessStacks>),
}

type GrantJob = (JobId, GrantWork, Deadline, Claim);
type InspectJob = (JobId, Inspection, Deadline, Claim);

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

/// The inspector, on a thread of its own that does one read at a time.
#[derive(Debug)]
pub(crate) struct StackWorker(Sender<InspectJob>);

impl StackWorker {
    /// Shares `inspector` with a new thread; results go to `done`.
    pub(crate) fn start<I: Inspector + Send + Sync + 'static>(
        inspector: Arc<I>,
        done: Sender<Done>,
    ) -> io::Result<StackWorker> {
        let jobs = spawn_worker(
            "heli-inspector",
            move |(id, inspection, deadline, claim): InspectJob| {
                let result =
                    unless_expired(&deadline, || inspect(&*inspector, inspection, &deadline));
                !claim.finish() || done.send(Done::Inspect { id, result }).is_ok()
            },
        )?;
        Ok(StackWorker(jobs))
    }

    /// Queues `inspection`; its result comes back as [`Done::Inspect`] with
    /// `id`, unless the loop gave up on it.
    pub(crate) fn submit(
        &self,
        id: JobId,
        inspection: Inspection,
        deadline: Deadline,
        claim: Claim,
    ) {
        let _ = self.0.send((id, inspection, deadline, claim));
    }
}

/// Carries `inspection` out with `inspector`, within `deadline` as far as
/// it can tell (a read that hangs is the loop's to give up on).
fn inspect(
    inspector: &impl Inspector,
    inspection: Inspection,
    deadline: &Deadline,
) -> io::Result<Inspected> {
    match inspection {
        Inspection::Threads(process) => inspector.stacks(process).map(Inspected::Threads),
        Inspection::Tree(root) => inspector.tree(root).map(Inspected::Tree),
        Inspection::Stacks {
            root,
            only: Some(process),
            ..
        } => {
            // The header's facts, when the inspector can tell them.
            let facts = inspector
                .tree(process)
                .ok()
                .and_then(|tree| tree.into_iter().find(|facts| facts.pid == process.pid))
                .unwrap_or_else(|| TreeProcess::new(process.pid));
            let mut stacks = stacks_header(&facts, root);
            stacks.threads = inspector.stacks(process)?;
            Ok(Inspected::Stacks(vec![stacks]))
        }
        Inspection::Stacks {
            root,
            only: None,
            me,
        } => {
            let tree = inspector.tree(root)?;
            let stacks = tree
                .iter()
                .map(|process| {
                    let mut stacks = stacks_header(process, root);
                    let skipped = if deadline.expired() {
                        Some("not read: the request's deadline passed".to_owned())
                    } else if let Some(me) = me.filter(|&me| me != process.uid) {
                        Some(format!(
                            "runs as another user (uid {}; the controller runs as {me})",
                            process.uid
                        ))
                    } else {
                        match inspector.stacks(process.id()) {
                            Ok(threads) => {
                                stacks.threads = threads;
                                None
                            }
                            Err(err) => Some(err.to_string()),
                        }
                    };
                    stacks.skipped = skipped;
                    stacks
                })
                .collect();
            Ok(Inspected::Stacks(stacks))
        }
    }
}

/// A process's stacks, without threads yet, with its facts from the tree.
fn stacks_header(process: &TreeProcess, root: ProcessId) -> ProcessStacks {
    let mut stacks = ProcessStacks::new(process.pid);
    stacks.parent = process.parent;
    stacks.target = process.pid == root.pid;
    stacks.command = process.command.clone();
    stacks.python = process.python.clone();
    stacks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Pid;
    use crate::tree::Role;

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

    /// A tree 10 -> 11 -> 12 and 13 (uid 2000): 10 and 12 are Python
    /// processes, 11 is not.
    struct Forest;
    impl Inspector for Forest {
        fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            match process.pid.get() {
                10 | 12 => Ok(vec![ThreadStack::new(process.pid.get().into())]),
                _ => Err(io::Error::other("not a Python process")),
            }
        }
        fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
            let facts = |raw: u32, parent: u32, uid: u32| {
                let mut facts = TreeProcess::new(Pid::new(raw).unwrap());
                facts.parent = Pid::new(parent);
                facts.uid = uid;
                facts.command = format!("cmd {raw}");
                facts.python = (raw % 2 == 0).then(|| "3.14.0".to_owned());
                facts
            };
            let all = [
                facts(10, 1, 1000),
                facts(11, 10, 1000),
                facts(12, 11, 1000),
                facts(13, 10, 2000),
            ];
            let start = all
                .iter()
                .position(|p| p.pid == root.pid)
                .unwrap_or(all.len());
            Ok(all[start..].to_vec())
        }
    }

    fn id(raw: u32) -> ProcessId {
        ProcessId {
            pid: Pid::new(raw).unwrap(),
            start_time: 1,
        }
    }

    fn stacks(inspection: Inspection, deadline: &Deadline) -> Vec<ProcessStacks> {
        match inspect(&Forest, inspection, deadline).unwrap() {
            Inspected::Stacks(stacks) => stacks,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn all_stacks_list_every_process_and_skip_with_the_reason() {
        let soon = Deadline::after(Duration::from_secs(60));
        let all = Inspection::Stacks {
            root: id(10),
            only: None,
            me: Some(1000),
        };
        let got = stacks(all, &soon);
        let summary: Vec<_> = got
            .iter()
            .map(|p| (p.pid.get(), p.target, p.threads.len(), p.skipped.clone()))
            .collect();
        assert_eq!(
            summary,
            [
                (10, true, 1, None),
                (11, false, 0, Some("not a Python process".into())),
                (12, false, 1, None),
                (
                    13,
                    false,
                    0,
                    Some("runs as another user (uid 2000; the controller runs as 1000)".into())
                ),
            ]
        );
        assert_eq!(got[2].role(), Some(Role::ChildOf(Pid::new(11).unwrap())));
        assert_eq!(got[2].python.as_deref(), Some("3.14.0"));
        assert_eq!(got[2].command, "cmd 12");
        // Past the deadline, what is left is listed, not read.
        let late = Deadline::after(Duration::ZERO);
        for process in stacks(all, &late) {
            assert_eq!(
                process.skipped.as_deref(),
                Some("not read: the request's deadline passed")
            );
        }
    }

    #[test]
    fn one_process_stacks_carry_its_facts_or_fail() {
        let soon = Deadline::after(Duration::from_secs(60));
        let one = |raw| Inspection::Stacks {
            root: id(10),
            only: Some(id(raw)),
            me: None,
        };
        let got = stacks(one(12), &soon);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].pid.get(), got[0].target), (12, false));
        assert_eq!(got[0].parent, Pid::new(11));
        assert_eq!(got[0].threads.len(), 1);
        assert!(stacks(one(10), &soon)[0].target);
        let err = inspect(&Forest, one(11), &soon).unwrap_err();
        assert_eq!(err.to_string(), "not a Python process");
        // An inspector that cannot list the tree still reads the stacks.
        struct Bare;
        impl Inspector for Bare {
            fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
                Forest.stacks(process)
            }
        }
        match inspect(&Bare, one(12), &soon).unwrap() {
            Inspected::Stacks(got) => {
                assert_eq!((got[0].pid.get(), got[0].threads.len()), (12, 1));
                assert_eq!(got[0].command, "");
            }
            other => panic!("{other:?}"),
        }
        let all = Inspection::Stacks {
            root: id(10),
            only: None,
            me: None,
        };
        assert_eq!(
            inspect(&Bare, all, &soon).unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
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
