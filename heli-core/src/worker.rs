//! Work the controller runs off its loop, each piece with a deadline:
//! grants and revokes on the granter's own thread, stack reads and tree
//! listings on the inspector's (reading `/proc/PID/cmdline` or a process's
//! memory can block on a frozen process's memory lock: never on the loop),
//! attaches through the agent on the agent's (and, for a process whose
//! memory the inspector may not read, stack reads through the agent on the
//! inspector's). The loop hands work over and goes on serving; the result
//! comes back on a channel, or the loop gives up on it at its deadline.

use std::collections::HashSet;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{unbounded, Sender};
use log::{debug, error, info, warn};

use crate::agent::{Agent, AgentSession};
use crate::authorize;
use crate::deadline::Deadline;
use crate::granter::Granter;
use crate::inspector::Inspector;
use crate::process::ProcessId;
use crate::stacks::{ProcessStacks, ThreadStack};
use crate::tasks::AsyncTasks;
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
    /// Withdraws any grant on `target`, `within` this long from when it
    /// starts (not from when it was queued: a revoke behind a slow grant
    /// still gets its time).
    Revoke { target: ProcessId, within: Duration },
}

impl GrantWork {
    /// The process the work is on.
    pub(crate) fn process(self) -> ProcessId {
        match self {
            GrantWork::Grant { target, .. } | GrantWork::Revoke { target, .. } => target,
        }
    }
}

/// What a worker is busy with now: the work and the process it waits on
/// (the loop names that process when other work is late behind it).
#[derive(Clone, Debug, Default)]
pub(crate) struct Busy(Arc<Mutex<Option<(JobId, ProcessId)>>>);

impl Busy {
    fn set(&self, now: Option<(JobId, ProcessId)>) {
        *self.0.lock().unwrap_or_else(|poison| poison.into_inner()) = now;
    }

    /// The work the worker is on and its process, if any.
    pub(crate) fn get(&self) -> Option<(JobId, ProcessId)> {
        *self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A result for the loop.
#[derive(Debug)]
pub(crate) enum Done {
    /// A grant or revoke ended; with the granter's facts for `STATUS`.
    Grant {
        id: JobId,
        work: GrantWork,
        result: io::Result<()>,
        /// A grant that completed too late could not be withdrawn: the
        /// loop keeps trying.
        undo_failed: bool,
        status_fields: Vec<(String, String)>,
    },
    /// A read of the inspector's ended.
    Inspect {
        id: JobId,
        result: io::Result<Inspected>,
    },
    /// An attach through the agent ended: the client's ends of pdb's
    /// sockets, or why not.
    Agent {
        id: JobId,
        process: ProcessId,
        result: io::Result<AgentSession>,
    },
}

/// What the inspector's thread reads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Inspection {
    /// The tree (`PS`).
    Tree(TreeRoot),
    /// The stacks of process `only` of the tree, or of every process of it
    /// (`STACKS`, `STACK <pid>|ALL`). A process not of the controller's
    /// user (`me`, when known) is skipped.
    Stacks {
        tree: TreeRoot,
        only: Option<ProcessId>,
        me: Option<u32>,
    },
    /// The asyncio tasks of this process of the tree (`TASKS`).
    Tasks(ProcessId),
}

/// Where the supervised tree is: under the target, and when the controller
/// is a subreaper, under the controller (`adopter`) too, which adopts the
/// processes of the target's tree whose parent died.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TreeRoot {
    pub(crate) target: ProcessId,
    pub(crate) adopter: Option<ProcessId>,
}

/// What the inspector's thread read.
#[derive(Debug)]
pub(crate) enum Inspected {
    Tree(Vec<TreeProcess>),
    Stacks(Vec<ProcessStacks>),
    Tasks(AsyncTasks),
}

type GrantJob = (JobId, GrantWork, Deadline, Claim);
type InspectJob = (JobId, Inspection, Deadline, Claim);
/// What the agent's thread does: an attach, or the end of a session whose
/// time is up.
enum AgentJob {
    Attach(JobId, ProcessId, Deadline, Claim),
    HangUp(ProcessId, u64, Deadline),
}

/// The granter, on a thread of its own that does one piece of work at a
/// time, in order.
#[derive(Debug)]
pub(crate) struct GrantWorker(Sender<GrantJob>, Busy);

impl GrantWorker {
    /// Moves `granter` to a new thread; results go to `done`.
    pub(crate) fn start<G: Granter + Send + 'static>(
        mut granter: G,
        done: Sender<Done>,
    ) -> io::Result<GrantWorker> {
        let busy = Busy::default();
        let on = busy.clone();
        let jobs = spawn_worker(
            "heli-granter",
            move |(id, work, deadline, claim): GrantJob| {
                on.set(Some((id, work.process())));
                let result = match work {
                    GrantWork::Grant { target, client } => {
                        unless_expired(&deadline, || granter.grant(target, client, &deadline))
                    }
                    GrantWork::Revoke { target, within } => {
                        let deadline = deadline.restarted(within);
                        unless_expired(&deadline, || granter.revoke(target, &deadline))
                    }
                };
                // Withdrawing a late grant waits on its process too.
                let undo_failed = !claim.finish() && !undo_late(&mut granter, work, &result);
                on.set(None);
                let status_fields = granter.status_fields();
                done.send(Done::Grant {
                    id,
                    work,
                    result,
                    undo_failed,
                    status_fields,
                })
                .is_ok()
            },
        )?;
        Ok(GrantWorker(jobs, busy))
    }

    /// What the granter is busy with now.
    pub(crate) fn busy(&self) -> Option<(JobId, ProcessId)> {
        self.1.get()
    }

    /// Queues `work`; its result comes back as [`Done::Grant`] with `id`.
    pub(crate) fn submit(&self, id: JobId, work: GrantWork, deadline: Deadline, claim: Claim) {
        // The thread ends only when the loop's receiver is gone.
        let _ = self.0.send((id, work, deadline, claim));
    }
}

/// A grant that completed after the loop gave up on it (its asker was told
/// it failed) must not stay in force: it is withdrawn at once, before any
/// later work. False if that failed (the loop then keeps trying).
fn undo_late(granter: &mut impl Granter, work: GrantWork, result: &io::Result<()>) -> bool {
    if let (GrantWork::Grant { target, client }, Ok(())) = (work, result) {
        warn!(
            "the grant to PID {} completed after its deadline, its client told it failed: \
             withdrawing it",
            client.pid
        );
        if let Err(err) = granter.revoke(target, &Deadline::after(UNDO_DEADLINE)) {
            warn!(
                "cannot withdraw the late grant on PID {}: {err}; trying again later",
                target.pid
            );
            return false;
        }
    }
    true
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
/// could start. A panic in it (a granter's, an inspector's or an agent's
/// bug, whoever wrote them) is its error: the request that asked for it is
/// answered, and the worker's thread goes on serving the next ones.
fn unless_expired<T>(deadline: &Deadline, work: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    if deadline.expired() {
        return Err(not_started(deadline));
    }
    panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|text| text.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        error!("a worker's job panicked: {what}");
        Err(io::Error::other(format!(
            "it failed: a bug in the controller (it panicked: {what})"
        )))
    })
}

/// The error for work whose deadline passed before it could start.
fn not_started(deadline: &Deadline) -> io::Error {
    if deadline.is_cancelled() {
        io::Error::new(io::ErrorKind::Interrupted, "called off")
    } else {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "not started before its deadline: earlier work took its time",
        )
    }
}

/// Who reads stacks the inspector cannot: the agent in the process, when
/// it serves, where the inspector may not read the process's memory
/// (`PermissionDenied`: Yama's `ptrace_scope` 2 or 3), or after any failure
/// of the inspector's when the controller prefers the agent (ptrace cannot
/// work there at all).
#[derive(Debug)]
pub(crate) struct AgentStacks<A> {
    pub(crate) agent: A,
    pub(crate) prefer: bool,
}

impl<A: Agent> AgentStacks<A> {
    /// The threads of `process`, read by `inspector`, or failing that by
    /// the agent (within `deadline`): with who read them when not the
    /// inspector (`agent`).
    fn read(
        &self,
        inspector: &impl Inspector,
        process: ProcessId,
        deadline: &Deadline,
    ) -> io::Result<(Vec<ThreadStack>, Option<String>)> {
        let err = match inspector.stacks(process) {
            Ok(threads) => return Ok((threads, None)),
            Err(err) => err,
        };
        let denied = err.kind() == io::ErrorKind::PermissionDenied;
        if !((denied || self.prefer) && self.agent.state(process).is_ready()) {
            return Err(err);
        }
        match self.agent.stacks(process, deadline) {
            Ok(threads) => Ok((threads, Some("agent".to_owned()))),
            Err(agent_err) => Err(io::Error::new(
                err.kind(),
                format!("{err}; nor could the agent in it: {agent_err}"),
            )),
        }
    }
}

/// The inspector, on a thread of its own that does one read at a time.
#[derive(Debug)]
pub(crate) struct StackWorker(Sender<InspectJob>, Busy);

impl StackWorker {
    /// Shares `inspector` and `agent` with a new thread; results go to
    /// `done`.
    pub(crate) fn start<I, A>(
        inspector: Arc<I>,
        agent: AgentStacks<Arc<A>>,
        done: Sender<Done>,
    ) -> io::Result<StackWorker>
    where
        I: Inspector + Send + Sync + 'static,
        A: Agent + Send + Sync + 'static,
    {
        let busy = Busy::default();
        let on = busy.clone();
        let jobs = spawn_worker(
            "heli-inspector",
            move |(id, inspection, deadline, claim): InspectJob| {
                let note = |process| on.set(Some((id, process)));
                let result = unless_expired(&deadline, || {
                    inspect(&*inspector, &agent, inspection, &deadline, note)
                });
                on.set(None);
                !claim.finish() || done.send(Done::Inspect { id, result }).is_ok()
            },
        )?;
        Ok(StackWorker(jobs, busy))
    }

    /// What the inspector is busy with now: the read and the process it
    /// reads.
    pub(crate) fn busy(&self) -> Option<(JobId, ProcessId)> {
        self.1.get()
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

/// The agent, on a thread of its own that does one attach at a time.
#[derive(Debug)]
pub(crate) struct AgentWorker(Sender<AgentJob>, Busy);

impl AgentWorker {
    /// Shares `agent` with a new thread; results go to `done`.
    pub(crate) fn start<A: Agent + Send + Sync + 'static>(
        agent: Arc<A>,
        done: Sender<Done>,
    ) -> io::Result<AgentWorker> {
        let busy = Busy::default();
        let on = busy.clone();
        let jobs = spawn_worker("heli-agent", move |job: AgentJob| match job {
            AgentJob::Attach(id, process, deadline, claim) => {
                on.set(Some((id, process)));
                let result = unless_expired(&deadline, || agent.attach(process, &deadline));
                on.set(None);
                // A session nobody waits for any more is dropped: its
                // sockets close, and pdb in the process finds its
                // client gone.
                !claim.finish()
                    || done
                        .send(Done::Agent {
                            id,
                            process,
                            result,
                        })
                        .is_ok()
            }
            AgentJob::HangUp(process, session, deadline) => {
                match unless_expired(&deadline, || agent.hang_up(process, session, &deadline)) {
                    Ok(true) => info!(
                        "session {session} of pdb through the agent in PID {} ended: \
                             its time was up",
                        process.pid
                    ),
                    Ok(false) => debug!(
                        "session {session} of pdb through the agent in PID {} was over \
                             when its time was up",
                        process.pid
                    ),
                    // Asked, unanswered (a stopped process acts on it
                    // once continued), or not asked (its agent is gone).
                    Err(err) => warn!(
                        "the agent in PID {} did not say it ended session {session} of pdb, \
                         whose time is up: {err}",
                        process.pid
                    ),
                }
                true
            }
        })?;
        Ok(AgentWorker(jobs, busy))
    }

    /// What the agent's thread is busy with now: the attach and its
    /// process.
    pub(crate) fn busy(&self) -> Option<(JobId, ProcessId)> {
        self.1.get()
    }

    /// Queues an attach to `process`; its result comes back as
    /// [`Done::Agent`] with `id`, unless the loop gave up on it.
    pub(crate) fn submit(&self, id: JobId, process: ProcessId, deadline: Deadline, claim: Claim) {
        let _ = self.0.send(AgentJob::Attach(id, process, deadline, claim));
    }

    /// Queues the end of session `session` in `process` (see
    /// [`Agent::hang_up`]), logged once done.
    pub(crate) fn hang_up(&self, process: ProcessId, session: u64, deadline: Deadline) {
        let _ = self.0.send(AgentJob::HangUp(process, session, deadline));
    }
}

/// Carries `inspection` out with `inspector` (or, where that cannot read a
/// process, `agent`), within `deadline` as far as it can tell (a read that
/// hangs is the loop's to give up on). Each process it is about to read is
/// told to `reading`.
fn inspect(
    inspector: &impl Inspector,
    agent: &AgentStacks<impl Agent>,
    inspection: Inspection,
    deadline: &Deadline,
    reading: impl Fn(ProcessId),
) -> io::Result<Inspected> {
    match inspection {
        Inspection::Tree(root) => {
            reading(root.target);
            read_tree(inspector, root).map(Inspected::Tree)
        }
        Inspection::Tasks(process) => {
            reading(process);
            inspector.tasks(process).map(Inspected::Tasks)
        }
        Inspection::Stacks {
            tree,
            only: Some(process),
            ..
        } => {
            reading(process);
            // That process's facts alone for the header, as far as the
            // inspector can tell them; none of its tree's.
            let facts = match inspector.process(process) {
                Ok(Some(facts)) => facts,
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("PID {} is not running", process.pid),
                    ))
                }
                Err(_) => TreeProcess::new(process.pid),
            };
            let mut stacks = stacks_header(&facts, tree.target);
            (stacks.threads, stacks.via) = agent.read(inspector, process, deadline)?;
            Ok(Inspected::Stacks(vec![stacks]))
        }
        Inspection::Stacks {
            tree,
            only: None,
            me,
        } => {
            reading(tree.target);
            let processes = read_tree(inspector, tree)?;
            let stacks = processes
                .iter()
                .map(|process| {
                    let mut stacks = stacks_header(process, tree.target);
                    let skipped = if deadline.expired() {
                        Some("not read: the request's deadline passed".to_owned())
                    } else if let Some(why) =
                        me.and_then(|me| authorize::other_user(process.uid, process.euid, me))
                    {
                        Some(why)
                    } else {
                        // The process the tree listed, not one that took
                        // its pid since.
                        reading(process.id());
                        match agent.read(inspector, process.id(), deadline) {
                            Ok((threads, via)) => {
                                (stacks.threads, stacks.via) = (threads, via);
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

/// The supervised tree, in depth-first order: the target's tree; when the
/// controller is a subreaper, every process under the controller but the
/// controller itself, the target's subtree first, then each process the
/// controller adopted, with its subtree.
fn read_tree(inspector: &impl Inspector, root: TreeRoot) -> io::Result<Vec<TreeProcess>> {
    let Some(adopter) = root.adopter else {
        return inspector.tree(root.target);
    };
    let mut all = inspector.tree(adopter)?;
    all.retain(|process| process.pid != adopter.pid);
    let Some(start) = all
        .iter()
        .position(|process| process.pid == root.target.pid)
    else {
        return Ok(all);
    };
    // In depth-first order, the target's subtree is the run of processes
    // after it whose parents are in it.
    let mut subtree = HashSet::from([root.target.pid]);
    let mut end = start + 1;
    while let Some(parent) = all.get(end).and_then(|process| process.parent) {
        if !subtree.contains(&parent) {
            break;
        }
        subtree.insert(all[end].pid);
        end += 1;
    }
    let mut tree: Vec<TreeProcess> = all.drain(start..end).collect();
    tree.append(&mut all);
    Ok(tree)
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
    use crate::agent::{AgentState, NoAgent};
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

    /// Under 1 (the controller): 10 (the target) -> 11 -> 12, 10 -> 13
    /// (uid 2000) and 5 -> 6, which 1 adopted. The even ones are Python
    /// processes; each started at the tick of its pid.
    struct Forest;

    fn facts(raw: u32, parent: u32, uid: u32) -> TreeProcess {
        let mut facts = TreeProcess::new(Pid::new(raw).unwrap());
        facts.start_time = raw.into();
        facts.parent = Pid::new(parent);
        facts.uid = uid;
        facts.euid = uid;
        facts.command = format!("cmd {raw}");
        facts.python = (raw % 2 == 0).then(|| "3.14.0".to_owned());
        facts
    }

    impl Inspector for Forest {
        fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            let pid = process.pid.get();
            if process.start_time != u64::from(pid) {
                return Err(io::Error::other("another process"));
            }
            match pid % 2 {
                0 => Ok(vec![ThreadStack::new(pid.into())]),
                _ => Err(io::Error::other("not a Python process")),
            }
        }
        fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
            // Depth first, children in pid order.
            let all = [
                facts(1, 0, 1000),
                facts(5, 1, 1000),
                facts(6, 5, 1000),
                facts(10, 1, 1000),
                facts(11, 10, 1000),
                facts(12, 11, 1000),
                facts(13, 10, 2000),
            ];
            let Some(start) = all.iter().position(|p| p.id() == root) else {
                return Ok(Vec::new());
            };
            let mut tree = vec![all[start].clone()];
            for process in &all[start + 1..] {
                if !tree.iter().any(|p| Some(p.pid) == process.parent) {
                    break;
                }
                tree.push(process.clone());
            }
            Ok(tree)
        }
    }

    fn id(raw: u32) -> ProcessId {
        ProcessId {
            pid: Pid::new(raw).unwrap(),
            start_time: raw.into(),
        }
    }

    /// The target's tree, or with `adopter` 1 the controller's.
    fn root(adopter: Option<u32>) -> TreeRoot {
        TreeRoot {
            target: id(10),
            adopter: adopter.map(id),
        }
    }

    /// No agent to ask.
    const NONE: AgentStacks<NoAgent> = AgentStacks {
        agent: NoAgent,
        prefer: false,
    };

    fn stacks(inspection: Inspection, deadline: &Deadline) -> Vec<ProcessStacks> {
        match inspect(&Forest, &NONE, inspection, deadline, |_| {}).unwrap() {
            Inspected::Stacks(stacks) => stacks,
            other => panic!("{other:?}"),
        }
    }

    fn pids(tree: &[TreeProcess]) -> Vec<u32> {
        tree.iter().map(|p| p.pid.get()).collect()
    }

    #[test]
    fn a_subreapers_tree_is_the_targets_then_what_it_adopted() {
        let target_only = read_tree(&Forest, root(None)).unwrap();
        assert_eq!(pids(&target_only), [10, 11, 12, 13]);
        // Every process under the controller but itself, the target's
        // subtree first: then the adopted ones keep their parent.
        let with_adopted = read_tree(&Forest, root(Some(1))).unwrap();
        assert_eq!(pids(&with_adopted), [10, 11, 12, 13, 5, 6]);
        assert_eq!(with_adopted[4].parent, Pid::new(1));
        // STACKS ALL walks the same tree.
        let all = Inspection::Stacks {
            tree: root(Some(1)),
            only: None,
            me: None,
        };
        let got = stacks(all, &Deadline::after(Duration::from_secs(60)));
        let read: Vec<_> = got
            .iter()
            .map(|p| (p.pid.get(), p.target, p.threads.len()))
            .collect();
        assert_eq!(
            read,
            [
                (10, true, 1),
                (11, false, 0),
                (12, false, 1),
                (13, false, 0),
                (5, false, 0),
                (6, false, 1)
            ]
        );
        // A target no longer under the controller: what is left.
        let gone = TreeRoot {
            target: id(30),
            adopter: Some(id(1)),
        };
        assert_eq!(
            pids(&read_tree(&Forest, gone).unwrap()),
            [5, 6, 10, 11, 12, 13]
        );
    }

    #[test]
    fn all_stacks_list_every_process_and_skip_with_the_reason() {
        let soon = Deadline::after(Duration::from_secs(60));
        let all = Inspection::Stacks {
            tree: root(None),
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
                    Some(
                        "runs as another user (uid 2000, euid 2000; the controller runs as 1000)"
                            .into()
                    )
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

    /// Forest, whose tree cannot be listed, but one process's facts can be
    /// read.
    struct OneByOne;
    impl Inspector for OneByOne {
        fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            Forest.stacks(process)
        }
        fn process(&self, process: ProcessId) -> io::Result<Option<TreeProcess>> {
            let all = Forest.tree(id(1))?;
            Ok(all.into_iter().find(|facts| facts.id() == process))
        }
    }

    #[test]
    fn one_process_stacks_carry_its_facts_alone_or_fail() {
        let soon = Deadline::after(Duration::from_secs(60));
        let one = |raw| Inspection::Stacks {
            tree: root(None),
            only: Some(id(raw)),
            me: None,
        };
        // Its facts are read without its tree's.
        for inspector in [&Forest as &dyn Inspector, &OneByOne] {
            let got = match inspect(&inspector, &NONE, one(12), &soon, |_| {}).unwrap() {
                Inspected::Stacks(got) => got,
                other => panic!("{other:?}"),
            };
            assert_eq!(got.len(), 1);
            assert_eq!((got[0].pid.get(), got[0].target), (12, false));
            assert_eq!(got[0].parent, Pid::new(11));
            assert_eq!(got[0].command, "cmd 12");
            assert_eq!(got[0].threads.len(), 1);
        }
        assert!(stacks(one(10), &soon)[0].target);
        let err = inspect(&Forest, &NONE, one(11), &soon, |_| {}).unwrap_err();
        assert_eq!(err.to_string(), "not a Python process");
        // A process whose pid names another one now is not read.
        let reused = Inspection::Stacks {
            tree: root(None),
            only: Some(ProcessId {
                start_time: 99,
                ..id(12)
            }),
            me: None,
        };
        let err = inspect(&OneByOne, &NONE, reused, &soon, |_| {}).unwrap_err();
        assert_eq!(
            (err.kind(), err.to_string()),
            (io::ErrorKind::NotFound, "PID 12 is not running".into())
        );
        // An inspector that cannot tell facts still reads the stacks.
        struct Bare;
        impl Inspector for Bare {
            fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
                Forest.stacks(process)
            }
        }
        match inspect(&Bare, &NONE, one(12), &soon, |_| {}).unwrap() {
            Inspected::Stacks(got) => {
                assert_eq!((got[0].pid.get(), got[0].threads.len()), (12, 1));
                assert_eq!(got[0].command, "");
            }
            other => panic!("{other:?}"),
        }
        let all = Inspection::Stacks {
            tree: root(None),
            only: None,
            me: None,
        };
        assert_eq!(
            inspect(&Bare, &NONE, all, &soon, |_| {})
                .unwrap_err()
                .kind(),
            io::ErrorKind::Unsupported
        );
    }

    /// Fails every read with an error of its kind.
    struct Locked(io::ErrorKind);
    impl Inspector for Locked {
        fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            Err(io::Error::new(
                self.0,
                format!("cannot read PID {}", process.pid),
            ))
        }
        fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
            Forest.tree(root)
        }
    }

    /// An agent that serves in the processes of pids `ready`, and reads a
    /// thread 100 + pid in each (or fails, when `broken`).
    struct Inside {
        ready: Vec<u32>,
        broken: bool,
    }
    impl Agent for Inside {
        fn state(&self, process: ProcessId) -> AgentState {
            if self.ready.contains(&process.pid.get()) {
                AgentState::Ready {
                    python: "3.14.0".into(),
                    trigger: "remote_exec".into(),
                }
            } else {
                AgentState::Absent("not started with one".into())
            }
        }
        fn attach(&self, _: ProcessId, _: &Deadline) -> io::Result<AgentSession> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn stacks(&self, process: ProcessId, _: &Deadline) -> io::Result<Vec<ThreadStack>> {
            if self.broken {
                return Err(io::Error::other("the agent broke"));
            }
            Ok(vec![ThreadStack::new(100 + u64::from(process.pid.get()))])
        }
    }

    fn agent(ready: &[u32], prefer: bool) -> AgentStacks<Inside> {
        AgentStacks {
            agent: Inside {
                ready: ready.to_vec(),
                broken: false,
            },
            prefer,
        }
    }

    /// What `agent` makes of `inspector`'s read of process 12: the first
    /// thread's id and who read it, or the error.
    fn read_12(
        agent: &AgentStacks<Inside>,
        inspector: &impl Inspector,
    ) -> Result<(u64, Option<String>), (io::ErrorKind, String)> {
        let soon = Deadline::after(Duration::from_secs(60));
        agent
            .read(inspector, id(12), &soon)
            .map(|(threads, via)| (threads[0].native_thread_id, via))
            .map_err(|err| (err.kind(), err.to_string()))
    }

    #[test]
    fn the_agent_reads_what_the_inspector_may_not_when_it_serves() {
        use io::ErrorKind::{Other, PermissionDenied};
        let by_agent = Ok((112, Some("agent".to_owned())));
        let denied = Err((PermissionDenied, "cannot read PID 12".to_owned()));
        // What the inspector reads, it reads, whatever the agent.
        assert_eq!(read_12(&agent(&[12], true), &Forest), Ok((12, None)));
        // Its memory may not be read: the agent, if it serves there.
        assert_eq!(
            read_12(&agent(&[12], false), &Locked(PermissionDenied)),
            by_agent
        );
        assert_eq!(
            read_12(&agent(&[10], true), &Locked(PermissionDenied)),
            denied
        );
        // Any other failure: the agent only when the controller prefers it.
        assert_eq!(
            read_12(&agent(&[12], false), &Locked(Other)),
            Err((Other, "cannot read PID 12".to_owned()))
        );
        assert_eq!(read_12(&agent(&[12], true), &Locked(Other)), by_agent);
        // When the agent fails too, both say why.
        let mut broken = agent(&[12], false);
        broken.agent.broken = true;
        assert_eq!(
            read_12(&broken, &Locked(PermissionDenied)),
            Err((
                PermissionDenied,
                "cannot read PID 12; nor could the agent in it: the agent broke".to_owned()
            ))
        );
    }

    #[test]
    fn stacks_the_agent_read_are_labelled_so_one_process_or_all() {
        let soon = Deadline::after(Duration::from_secs(60));
        let denied = Locked(io::ErrorKind::PermissionDenied);
        let agent = agent(&[10, 12], false);
        let all = Inspection::Stacks {
            tree: root(None),
            only: None,
            me: None,
        };
        let Inspected::Stacks(got) = inspect(&denied, &agent, all, &soon, |_| {}).unwrap() else {
            panic!("not stacks");
        };
        let summary: Vec<_> = got
            .iter()
            .map(|p| {
                (
                    p.pid.get(),
                    p.threads.len(),
                    p.via.as_deref(),
                    p.skipped.is_some(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (10, 1, Some("agent"), false),
                (11, 0, None, true),
                (12, 1, Some("agent"), false),
                (13, 0, None, true),
            ]
        );
        let one = Inspection::Stacks {
            tree: root(None),
            only: Some(id(12)),
            me: None,
        };
        let Inspected::Stacks(got) = inspect(&denied, &agent, one, &soon, |_| {}).unwrap() else {
            panic!("not stacks");
        };
        assert_eq!(
            (got[0].threads[0].native_thread_id, got[0].via.as_deref()),
            (112, Some("agent"))
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
