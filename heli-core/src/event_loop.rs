//! The controller's event loop: one `select!` over requests, the target's
//! exit, signals, the results of work run off the loop, and timers. It never
//! waits on the target itself: grants, revokes, stack reads and tree
//! listings run on worker threads, each with a deadline, and the loop serves
//! every other request meanwhile.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, Receiver, Sender};
use log::{debug, info, warn};

use crate::authorize::{self, GrantRecord, Refusal, Use};
use crate::deadline::Deadline;
use crate::grants::{GrantBook, Pending};
use crate::log_limit::LogLimit;
use crate::process::{Pid, ProcessId, ProcessState};
use crate::protocol::{
    GrantRequest, Reply, Request, RevokeRequest, Scope, Status, TreeGrant, MAX_REPLY,
};
use crate::restart::RestartPolicy;
use crate::signals::{self, Caught, STOP_SIGNALS, SUSPEND_SIGNALS};
use crate::stacks::{threads_text, ProcessStacks};
use crate::supervisor::{Exit, ExitStatus, Supervisor};
use crate::transport::{Event, GrantHolder, Incoming, Peer};
use crate::tree::Tree;
use crate::worker::{
    Claim, Done, GrantWork, GrantWorker, Inspected, Inspection, JobId, StackWorker,
};

/// How long after a piece of work's deadline the loop still waits for the
/// worker's own report (which says best what happened) before it answers
/// for it.
const WORKER_GRACE: Duration = Duration::from_millis(250);

/// How often the loop looks whether a killed target that has not ended is
/// frozen by a cgroup freezer (v1 lets such a process die only once thawed).
const KILLED_CHECK: Duration = Duration::from_millis(500);

/// The signal the kernel reports for a killed process.
const SIGKILL: i32 = signal_hook::consts::signal::SIGKILL;

/// What the loop needs besides its state: the supervisor, the workers, and
/// the controller's settings.
pub(crate) struct Loop<S> {
    pub(crate) supervisor: S,
    pub(crate) grants: GrantWorker,
    pub(crate) stacks: StackWorker,
    pub(crate) done: Receiver<Done>,
    pub(crate) granter_name: String,
    pub(crate) grace: Duration,
    pub(crate) grant_deadline: Duration,
    pub(crate) stack_deadline: Duration,
    pub(crate) restart: RestartPolicy,
    pub(crate) status_fields: Vec<(String, String)>,
    pub(crate) authenticates: bool,
    /// Whether the controller is a child subreaper (`PS` says so).
    pub(crate) subreaper: bool,
    /// Where suspensions are reported instead of stopping the process
    /// (tests).
    pub(crate) suspended: Option<Sender<()>>,
}

/// The loop's inputs besides the work's results.
pub(crate) struct Inputs {
    pub(crate) exits: Receiver<Exit>,
    pub(crate) events: Receiver<Event>,
    pub(crate) signals: Receiver<Caught>,
    pub(crate) shutdown: Receiver<()>,
}

impl<S: Supervisor> Loop<S> {
    /// Serves from `target`'s start until the controller is done; returns
    /// how the target ended. Work still pending is called off and answered.
    pub(crate) fn run(
        &mut self,
        target: Pid,
        holder: GrantHolder,
        inputs: &Inputs,
    ) -> io::Result<ExitStatus> {
        let mut state = State::new(target, holder);
        let mut listening = true;
        let status = loop {
            if let Phase::Ended(result) = &mut state.phase {
                break std::mem::replace(result, Ok(ExitStatus::Code(0)));
            }
            let timer = |at: Option<Instant>| match at {
                Some(at) => after(at.saturating_duration_since(Instant::now())),
                None => never(),
            };
            let stop_timer = timer(state.phase.stop_at());
            let respawn_timer = timer(state.phase.respawn_at());
            let work_timer = timer(state.next_give_up());
            // Once the listener has stopped, its closed channel would be
            // ready on every turn: stop watching it.
            let requests = if listening {
                inputs.events.clone()
            } else {
                never()
            };
            select! {
                recv(inputs.exits) -> exit => match exit {
                    Ok(exit) => self.target_exited(&mut state, exit),
                    Err(_) => {
                        warn!("supervisor lost its target; killing it");
                        let _ = self.supervisor.kill();
                        state.phase = Phase::Ended(Err(io::Error::other("supervisor lost its target")));
                    }
                },
                recv(respawn_timer) -> _ => self.respawn(&mut state),
                recv(requests) -> event => match event {
                    Ok(Event::Request(incoming)) => self.answer(&mut state, incoming),
                    Ok(Event::Disconnected(peer)) => self.disconnected(&mut state, peer),
                    Err(_) => {
                        warn!("listener stopped; stopping the target");
                        listening = false;
                        self.begin_stop(&mut state, None);
                    }
                },
                recv(self.done) -> done => {
                    if let Ok(done) = done {
                        self.work_done(&mut state, done);
                    }
                }
                recv(work_timer) -> _ => self.give_up_late_work(&mut state),
                recv(inputs.signals) -> caught => {
                    if let Ok(caught) = caught {
                        self.on_signal(&mut state, caught);
                    }
                }
                recv(inputs.shutdown) -> _ => self.begin_stop(&mut state, None),
                recv(stop_timer) -> _ => self.stop_step(&mut state),
            }
        };
        state.call_off_work(not_running);
        status
    }

    /// The target (or a former one) ended.
    fn target_exited(&mut self, state: &mut State, exit: Exit) {
        if !(state.phase.is_live() && state.run.target == exit.pid) {
            return;
        }
        let ran = state.run.started.elapsed();
        state.last_exit = Some(exit.status);
        // Every grant of its tree goes with it (a later process must not
        // inherit one; its descendants that live on are no longer its
        // tree); grants still being made fail when they are reported.
        for grant in state.grants.take(|_| true) {
            self.submit_revoke(state, grant.process);
        }
        if let Phase::Stopping(_) = state.phase {
            info!("target process {} ended ({})", exit.pid, exit.status);
            state.phase = Phase::Ended(Ok(exit.status));
            return;
        }
        warn!(
            "target process {} ended on its own ({})",
            exit.pid, exit.status
        );
        state.phase = match self.restart.next_delay(exit.status, ran) {
            Some(delay) => {
                info!(
                    "restarting the target in {delay:?} (restart {})",
                    self.restart.restarts()
                );
                Phase::Restarting {
                    at: Instant::now() + delay,
                }
            }
            None => Phase::Ended(Ok(exit.status)),
        };
    }

    /// The restart timer fired: start the target again.
    fn respawn(&mut self, state: &mut State) {
        if !matches!(state.phase, Phase::Restarting { .. }) {
            return;
        }
        state.phase = match self.supervisor.spawn() {
            Ok(pid) => {
                info!("target restarted with PID {pid}");
                state.run = state.run.next(pid);
                Phase::Running
            }
            Err(err) => {
                warn!("cannot restart the target: {err}");
                match self
                    .restart
                    .next_delay(ExitStatus::Code(127), Duration::ZERO)
                {
                    Some(delay) => Phase::Restarting {
                        at: Instant::now() + delay,
                    },
                    None => Phase::Ended(Err(err)),
                }
            }
        };
    }

    fn answer(&mut self, state: &mut State, incoming: Incoming) {
        let peer = incoming.peer();
        let request = match incoming.request() {
            Ok(request) => request,
            Err(err) => {
                state.warn_about(&peer, format_args!("bad request from {peer:?}: {err}"));
                let reply = Reply::error(err);
                incoming.reply(reply);
                return;
            }
        };
        debug!("request {request} from {peer:?}");
        let reply = match request {
            Request::Status => Reply::Status(self.status(state)),
            Request::Terminate => {
                info!("TERMINATE requested by {peer:?}");
                incoming.reply(Reply::Ready);
                self.begin_stop(state, None);
                return;
            }
            _ => match state.phase {
                // Between a target's end and its restart there is nobody to
                // grant access to.
                Phase::Restarting { at } => Reply::Error(format!(
                    "Target process not running (restarting in {} ms)",
                    at.saturating_duration_since(Instant::now()).as_millis()
                )),
                Phase::Running | Phase::Stopping(_) => {
                    let work = match request {
                        Request::GetTargetPid => Ok(None),
                        Request::GrantAccess(grant) => self.grant(state, peer, grant).map(Some),
                        Request::Revoke(revoke) => self.revoke(state, peer, revoke),
                        Request::Ps => self.inspect(state, Ask::Ps).map(Some),
                        Request::Stack(scope) => self.inspect(state, Ask::Stack(scope)).map(Some),
                        Request::Stacks(scope) => self.inspect(state, Ask::Stacks(scope)).map(Some),
                        // Answered above.
                        Request::Status | Request::Terminate => Ok(None),
                    };
                    match (work, request) {
                        (Ok(Some(work)), _) => {
                            state.wait_for(work, incoming);
                            return;
                        }
                        (Ok(None), Request::GetTargetPid) => Reply::TargetPid(state.run.target),
                        (Ok(None), _) => Reply::Ready,
                        (Err(refusal), _) => Reply::Error(refusal),
                    }
                }
                Phase::Ended(_) => not_running(),
            },
        };
        incoming.reply(reply);
    }

    /// Whether process `id` still runs (an error of the table counts as
    /// no).
    fn runs(&self) -> impl Fn(ProcessId) -> bool + '_ {
        |id| self.supervisor.is_running(id)
    }

    /// Drops the grants on processes that exited (or whose pid now names
    /// another process); the granter forgets them through a revoke.
    fn prune(&mut self, state: &mut State) {
        let gone = state
            .grants
            .take(|grant| !self.supervisor.is_running(grant.process));
        for grant in gone {
            info!(
                "PID {} exited: the grant of client PID {} on it is dropped",
                grant.process.pid, grant.holder.pid
            );
            self.submit_revoke(state, grant.process);
        }
    }

    /// How a process of the tree is named in messages.
    fn name_of(state: &State, process: Pid) -> String {
        if process == state.run.target {
            "target".to_owned()
        } else {
            format!("PID {process}")
        }
    }

    /// Starts granting the process `request` names access to the target or
    /// to a process of its tree, unless the policy refuses it, or another
    /// client holds the grant on that process and `FORCE` is not set (Yama
    /// keeps one ptracer per process): the work, or the refusal.
    fn grant(
        &mut self,
        state: &mut State,
        peer: Peer,
        request: GrantRequest,
    ) -> Result<Work, Refusal> {
        if !matches!(state.phase, Phase::Running) {
            return Err("The controller is shutting down".into());
        }
        self.prune(state);
        let target = state.run.target;
        let asked = Request::GrantAccess(request);
        let refused = |state: &mut State, refusal: String| {
            state.warn_about(
                &peer,
                format_args!("refused {asked} from {peer:?}: {refusal}"),
            );
            refusal
        };
        let client = match authorize::grantee(&peer, request.client, target, &self.supervisor) {
            Ok(client) => client,
            Err(refusal) => return Err(refused(state, refusal)),
        };
        let target_id = match self.supervisor.identity(target) {
            Ok(Some(id)) => id,
            Ok(None) => return Err(format!("Grant failed: target PID {target} is not running")),
            Err(err) => return Err(format!("Grant failed: {err}")),
        };
        let process = match request.process.filter(|&process| process != target) {
            None => target_id,
            Some(pid) => {
                match authorize::tree_member(pid, target_id, &self.supervisor, Use::Grant) {
                    Ok(process) => process,
                    Err(refusal) => return Err(refused(state, refusal)),
                }
            }
        };
        let previous = state.grants.to_be(process, self.runs());
        if let Some(holder) = previous.filter(|grant| grant.holder != client && !request.force) {
            return Err(format!(
                "{} is being debugged by client PID {} (attach --force takes it over)",
                Self::name_of(state, process.pid),
                holder.holder.pid
            ));
        }
        let deadline = Deadline::after(self.grant_deadline);
        let (id, claim) = state.new_job();
        self.grants.submit(
            id,
            GrantWork::Grant {
                target: process,
                client,
            },
            deadline.clone(),
            claim.clone(),
        );
        state.grants.ask(Pending {
            id,
            record: GrantRecord {
                holder: client,
                process,
                connection: peer.connection,
            },
            previous,
            revoked: false,
            run: state.run.number,
            target,
        });
        Ok(Work {
            id,
            deadline,
            claim,
            what: Waiting::Grant { on: process.pid },
        })
    }

    /// Starts withdrawing the grant on the target or on a process of its
    /// tree, if the policy lets `peer` withdraw it: the work (`None` when
    /// there is nothing to withdraw: `READY` at once), or the refusal.
    fn revoke(
        &mut self,
        state: &mut State,
        peer: Peer,
        request: RevokeRequest,
    ) -> Result<Option<Work>, Refusal> {
        self.prune(state);
        let target = state.run.target;
        let process = match request.process.filter(|&process| process != target) {
            // The target: whatever the book says, the granter withdraws
            // any grant on it.
            None => self.supervisor.identity(target).ok().flatten(),
            // Another process: only one a grant is on (or is being made
            // for) has anything to withdraw; nothing is done to any other.
            Some(pid) => state.grants.process_of(pid),
        };
        // Nothing runs there any more: nothing to withdraw.
        let Some(process) = process else {
            return Ok(None);
        };
        let holder = state.grants.to_be(process, self.runs());
        if let Err(refusal) = authorize::may_revoke(holder.as_ref(), &peer, request.client) {
            state.warn_about(
                &peer,
                format_args!(
                    "refused {} from {peer:?}: {refusal}",
                    Request::Revoke(request)
                ),
            );
            return Err(refusal);
        }
        // The revoke runs after the grants in progress: none of them on
        // that process stays.
        state.grants.withdraw_pending(process);
        state.grants.take(|grant| grant.process == process);
        let deadline = Deadline::after(self.grant_deadline);
        let (id, claim) = state.new_job();
        self.grants.submit(
            id,
            GrantWork::Revoke { target: process },
            deadline.clone(),
            claim.clone(),
        );
        Ok(Some(Work {
            id,
            deadline,
            claim,
            what: Waiting::Revoke { on: process.pid },
        }))
    }

    /// Withdraws the grant on `process` with nobody waiting for the answer.
    fn submit_revoke(&mut self, state: &mut State, process: ProcessId) {
        let (id, claim) = state.new_job();
        self.grants.submit(
            id,
            GrantWork::Revoke { target: process },
            Deadline::after(self.grant_deadline),
            claim,
        );
    }

    /// Starts a read of the inspector's, on its thread with the stack
    /// deadline: the work, or the refusal.
    fn inspect(&mut self, state: &mut State, ask: Ask) -> Result<Work, Refusal> {
        let target = state.run.target;
        self.prune(state);
        let root = match self.supervisor.identity(target) {
            Ok(Some(root)) => root,
            Ok(None) => return Err("Target process not running".into()),
            Err(err) => return Err(format!("Cannot look up the target, PID {target}: {err}")),
        };
        let (inspection, failed) = match ask {
            // Today's `STACK`: the target's threads, as text.
            Ask::Stack(Scope::Target) => (
                Inspection::Threads(root),
                "Cannot read the target's stacks".to_owned(),
            ),
            _ => {
                let scope = match ask {
                    Ask::Ps => None,
                    Ask::Stack(scope) | Ask::Stacks(scope) => Some(scope),
                };
                match scope {
                    None => (
                        Inspection::Tree(root),
                        "Cannot list the target's tree".to_owned(),
                    ),
                    Some(Scope::All) => (
                        Inspection::Stacks {
                            root,
                            only: None,
                            me: self.controller_user(),
                        },
                        "Cannot list the target's tree".to_owned(),
                    ),
                    Some(Scope::Target) => (
                        Inspection::Stacks {
                            root,
                            only: Some(root),
                            me: None,
                        },
                        "Cannot read the target's stacks".to_owned(),
                    ),
                    Some(Scope::Process(pid)) => {
                        let process =
                            authorize::tree_member(pid, root, &self.supervisor, Use::Stacks)?;
                        let failed = if process == root {
                            "Cannot read the target's stacks".to_owned()
                        } else {
                            format!("Cannot read the stacks of PID {}", process.pid)
                        };
                        (
                            Inspection::Stacks {
                                root,
                                only: Some(process),
                                me: None,
                            },
                            failed,
                        )
                    }
                }
            }
        };
        let on = match inspection {
            Inspection::Stacks {
                only: Some(process),
                ..
            } => process.pid,
            _ => target,
        };
        let answer = match ask {
            Ask::Ps => Answer::Ps,
            Ask::Stack(Scope::Target) => Answer::Threads,
            Ask::Stack(_) => Answer::Text,
            Ask::Stacks(_) => Answer::Json,
        };
        let deadline = Deadline::after(self.stack_deadline);
        let (id, claim) = state.new_job();
        self.stacks
            .submit(id, inspection, deadline.clone(), claim.clone());
        Ok(Work {
            id,
            deadline,
            claim,
            what: Waiting::Inspect { answer, failed, on },
        })
    }

    /// The effective user this controller runs as, if the table tells.
    fn controller_user(&self) -> Option<u32> {
        match self.supervisor.process(Pid::this()) {
            Ok(Some(me)) => Some(me.euid),
            _ => None,
        }
    }

    /// A worker finished a piece of work the loop may still wait for.
    fn work_done(&mut self, state: &mut State, done: Done) {
        let id = match &done {
            Done::Grant { id, .. } | Done::Inspect { id, .. } => *id,
        };
        // The request that waits for it, if the loop has not given up.
        let waiting = state.take_waiting(id);
        let reply = match done {
            Done::Grant {
                work,
                result,
                status_fields,
                ..
            } => {
                state.granter_fields = status_fields;
                match (work, state.grants.take_pending(id), result) {
                    (GrantWork::Grant { .. }, Some(pending), Ok(())) if pending.revoked => {
                        Reply::Error(
                            "Grant failed: a REVOKE that came during it withdrew it".into(),
                        )
                    }
                    (GrantWork::Grant { .. }, Some(pending), Ok(())) => {
                        self.granted(state, pending)
                    }
                    (GrantWork::Grant { client, .. }, _, Err(err)) => {
                        // A peer may ask for grants that fail as often as it
                        // likes: its allowance of warnings applies.
                        let peer = waiting
                            .as_ref()
                            .map_or_else(Peer::default, |waiting| waiting.incoming.peer());
                        state.warn_about(
                            &peer,
                            format_args!("grant for PID {} failed: {err}", client.pid),
                        );
                        Reply::Error(format!("Grant failed: {err}"))
                    }
                    // Given up or called off meanwhile: the worker withdrew it.
                    (GrantWork::Grant { .. }, None, Ok(())) => {
                        Reply::Error("Grant failed: it completed too late".into())
                    }
                    (GrantWork::Revoke { target }, _, Ok(())) => {
                        if target.pid == state.run.target {
                            info!("revoked access to target {}", state.run.target);
                        } else {
                            info!("revoked access to PID {}", target.pid);
                        }
                        Reply::Ready
                    }
                    (GrantWork::Revoke { .. }, _, Err(err)) => {
                        Reply::Error(format!("Revoke failed: {err}"))
                    }
                }
            }
            Done::Inspect { result, .. } => match waiting.as_ref().map(|waiting| &waiting.what) {
                Some(Waiting::Inspect { answer, failed, .. }) => match result {
                    Ok(inspected) => self.inspected(state, *answer, inspected),
                    Err(err) => Reply::Error(format!("{failed}: {err}")),
                },
                _ => Reply::Error("a read nobody waits for".into()),
            },
        };
        match waiting {
            Some(waiting) => waiting.incoming.reply(reply),
            None => {
                if let Reply::Error(message) = reply {
                    debug!("work {id} that nobody waits for: {message}");
                }
            }
        }
    }

    /// The reply for what the inspector read: what only the controller
    /// knows added (the target, who holds a grant where).
    fn inspected(&self, state: &State, answer: Answer, inspected: Inspected) -> Reply {
        match (answer, inspected) {
            (Answer::Threads, Inspected::Threads(threads)) => {
                Reply::Stack(fit_reply(threads_text(&threads)))
            }
            (Answer::Ps, Inspected::Tree(mut processes)) => {
                let live = state.phase.is_live();
                for process in &mut processes {
                    process.target = live && process.pid == state.run.target;
                    process.holder = state
                        .grants
                        .held()
                        .iter()
                        .filter(|grant| live && grant.process.pid == process.pid)
                        .find(|grant| self.supervisor.is_running(grant.holder))
                        .map(|grant| grant.holder.pid);
                }
                Reply::Ps(Tree::new(processes, self.subreaper))
            }
            (Answer::Text, Inspected::Stacks(stacks)) => {
                let text: Vec<String> = stacks.iter().map(ToString::to_string).collect();
                Reply::Stack(fit_reply(text.join("\n")))
            }
            (Answer::Json, Inspected::Stacks(stacks)) => Reply::Stacks(fit_stacks(stacks)),
            (answer, inspected) => Reply::Error(format!(
                "the inspector's thread read {inspected:?} for {answer:?}"
            )),
        }
    }

    /// A grant is in force: record it, unless its target ended meanwhile.
    fn granted(&mut self, state: &mut State, pending: Pending) -> Reply {
        let Pending {
            record, previous, ..
        } = pending;
        if !(state.phase.is_live() && pending.run == state.run.number) {
            // Whatever was granted on a process of a former target's tree
            // does not stay.
            self.submit_revoke(state, record.process);
            return Reply::Error(format!(
                "Grant failed: target PID {} exited during the grant",
                pending.target
            ));
        }
        let on = match Self::name_of(state, record.process.pid).as_str() {
            "target" => format!("target {}", state.run.target),
            other => format!("{other} of the target's tree"),
        };
        match previous {
            Some(old) if old.holder != record.holder => info!(
                "granted PID {} access to {on}, taking it over from PID {}",
                record.holder.pid, old.holder.pid
            ),
            _ => info!("granted PID {} access to {on}", record.holder.pid),
        }
        state.grants.record(record);
        Reply::Ready
    }

    /// Answers for work past its deadline (and the worker's grace) that the
    /// worker has not reported: the worker cleans up after it.
    fn give_up_late_work(&mut self, state: &mut State) {
        let now = Instant::now();
        let mut index = 0;
        while index < state.waiting.len() {
            let waiting = &state.waiting[index];
            if waiting.due() > now || !waiting.claim.abandon() {
                index += 1;
                continue;
            }
            let waiting = state.waiting.remove(index);
            let reply = match &waiting.what {
                Waiting::Grant { on } => {
                    let why = self.why_no_answer(state, *on);
                    state.grants.take_pending(waiting.id);
                    warn!("a grant got no answer in time: {why}");
                    Reply::Error(format!("Grant failed: {why}"))
                }
                Waiting::Revoke { on } => {
                    let why = self.why_no_answer(state, *on);
                    Reply::Error(format!("Revoke failed: {why}"))
                }
                Waiting::Inspect { failed, on, .. } => {
                    let why = self.why_no_answer(state, *on);
                    Reply::Error(format!("{failed}: {why}"))
                }
            };
            waiting.incoming.reply(reply);
        }
    }

    /// Why work on `process` (the target, or a process of its tree) got no
    /// answer in time, as far as the supervisor can tell.
    fn why_no_answer(&self, state: &State, process: Pid) -> String {
        let name = if process == state.run.target {
            "the target".to_owned()
        } else {
            format!("PID {process}")
        };
        let condition = match self.condition(process) {
            Some("frozen") => format!("{name} is frozen (cgroup freezer)"),
            Some(_) => format!("{name} is in uninterruptible sleep (state D)"),
            None => match self.supervisor.process(process) {
                Ok(Some(info)) => format!("{name} is in state {}", info.state.code()),
                Ok(None) => format!("{name} is gone"),
                Err(err) => format!("{name}'s state cannot be read: {err}"),
            },
        };
        format!("no answer within its deadline: {condition}")
    }

    /// A connection closed: the grants it asked for, those still in force,
    /// go with it.
    fn disconnected(&mut self, state: &mut State, peer: Peer) {
        debug!("client {peer:?} disconnected");
        // Connectionless transports (named pipes) tie no grant to a peer.
        if peer.connection == 0 {
            return;
        }
        // A grant it asked for that is still being made would be tied to a
        // closed connection: it is called off (the worker withdraws it if
        // it was made meanwhile). One the worker has just reported made is
        // recorded, and goes when its holder does.
        state.call_off(
            |waiting| {
                matches!(waiting.what, Waiting::Grant { .. })
                    && waiting.incoming.peer().connection == peer.connection
            },
            || Reply::Error("Grant failed: its connection closed".into()),
        );
        let closed = state
            .grants
            .take(|grant| grant.connection == peer.connection);
        for grant in closed {
            info!(
                "the connection of client PID {} closed: revoking its grant on {}",
                grant.holder.pid,
                Self::name_of(state, grant.process.pid)
            );
            self.submit_revoke(state, grant.process);
        }
    }

    fn status(&mut self, state: &mut State) -> Status {
        self.prune(state);
        let clients = if self.authenticates {
            "authenticated"
        } else {
            "unauthenticated"
        };
        let mut extra = vec![
            ("restarts".to_owned(), self.restart.restarts().to_string()),
            ("clients".to_owned(), clients.to_owned()),
        ];
        if let Some(exit) = state.last_exit {
            extra.push(("last_exit".to_owned(), exit.shell_code().to_string()));
        }
        if state.phase.is_live() {
            if let Some(condition) = self.condition(state.run.target) {
                extra.push(("target_state".to_owned(), condition.to_owned()));
            }
        }
        extra.extend(self.status_fields.iter().cloned());
        extra.extend(state.granter_fields.iter().cloned());
        let state_name = match state.phase {
            Phase::Running => "running",
            Phase::Stopping(_) => "stopping",
            Phase::Restarting { .. } => "restarting",
            Phase::Ended(_) => "ended",
        };
        let target = state.run.target;
        // The grants whose holders still run, the target's first.
        let mut grants: Vec<TreeGrant> = state
            .grants
            .held()
            .iter()
            .filter(|grant| state.phase.is_live() && self.supervisor.is_running(grant.holder))
            .map(|grant| TreeGrant {
                process: grant.process.pid,
                client: grant.holder.pid,
            })
            .collect();
        grants.sort_by_key(|grant| (grant.process != target, grant.process));
        Status {
            pid: target,
            state: state_name.to_owned(),
            uptime_secs: state.run.started.elapsed().as_secs(),
            granter: self.granter_name.clone(),
            holder: grants
                .first()
                .filter(|grant| grant.process == target)
                .map(|grant| grant.client),
            grants,
            extra,
            command: self.supervisor.describe(),
        }
    }

    /// How the target is doing when that holds up work on it: frozen, or
    /// in uninterruptible sleep.
    fn condition(&self, target: Pid) -> Option<&'static str> {
        if self.supervisor.is_frozen(target).unwrap_or(false) {
            return Some("frozen");
        }
        match self.supervisor.process(target) {
            Ok(Some(info)) if info.state == ProcessState::DiskSleep => {
                Some("uninterruptible-sleep")
            }
            _ => None,
        }
    }

    /// Asks the target to end, with `signal` if given, else with the
    /// supervisor's polite stop, and arms the kill timer. Work in progress
    /// is called off.
    fn begin_stop(&mut self, state: &mut State, signal: Option<i32>) {
        state.call_off_work(|| Reply::Error("The controller is shutting down".into()));
        match state.phase {
            Phase::Running | Phase::Stopping(_) => {}
            // Waiting to restart: there is nothing to stop; end now.
            Phase::Restarting { .. } => {
                let last = state.last_exit.unwrap_or(ExitStatus::Code(0));
                state.phase = Phase::Ended(Ok(last));
                return;
            }
            Phase::Ended(_) => return,
        }
        let result = match signal {
            Some(signal) => self.supervisor.signal(signal),
            None => self.supervisor.terminate(),
        };
        if let Err(err) = result {
            warn!("cannot signal the target: {err}");
        }
        self.arm_kill_timer(state);
    }

    /// Moves a running target to the stopping phase, where it is killed
    /// after the grace period; a stopping one keeps its timer.
    fn arm_kill_timer(&self, state: &mut State) {
        if let Phase::Running = state.phase {
            state.phase = Phase::Stopping(Stop::Asked {
                kill_at: Instant::now() + self.grace,
            });
        }
    }

    /// The stopping phase's timer fired: a target still running after the
    /// grace period is killed; a killed target that a cgroup v1 freezer
    /// holds (it dies only when thawed) is
    /// not waited for: the controller ends, and the target ends when
    /// thawed, of the SIGKILL it has.
    fn stop_step(&mut self, state: &mut State) {
        let Phase::Stopping(stop) = state.phase else {
            return;
        };
        let target = state.run.target;
        match stop {
            Stop::Asked { .. } => {
                warn!(
                    "target still running {:?} after being asked to stop: killing it",
                    self.grace
                );
                if let Err(err) = self.supervisor.kill() {
                    warn!("cannot kill the target: {err}");
                }
            }
            Stop::Killed { .. } if self.supervisor.is_frozen(target).unwrap_or(false) => {
                warn!(
                    "target process {target} was killed but is frozen by the cgroup freezer: \
                     it ends when thawed; not waiting for it"
                );
                state.phase = Phase::Ended(Ok(ExitStatus::Signal(SIGKILL)));
                return;
            }
            Stop::Killed { .. } => {}
        }
        state.phase = Phase::Stopping(Stop::Killed {
            check_at: Instant::now() + KILLED_CHECK,
        });
    }

    fn on_signal(&mut self, state: &mut State, caught: Caught) {
        let signal = caught.signal;
        // The terminal sends Ctrl-C, Ctrl-\ and hang-ups to the whole
        // foreground process group, the target included: do not double them.
        let from_terminal = caught.from_kernel && self.supervisor.shares_terminal();
        let live = state.phase.is_live();
        if STOP_SIGNALS.contains(&signal) {
            info!("got signal {signal}; stopping the target");
            if from_terminal && live {
                state.call_off_work(|| Reply::Error("The controller is shutting down".into()));
                self.arm_kill_timer(state);
            } else {
                self.begin_stop(state, Some(signal));
            }
            return;
        }
        if !from_terminal && live {
            debug!("passing signal {signal} to the target");
            if let Err(err) = self.supervisor.signal(signal) {
                warn!("cannot pass signal {signal} to the target: {err}");
            }
        }
        if SUSPEND_SIGNALS.contains(&signal) {
            info!("got signal {signal}; suspending (SIGCONT continues)");
            // A PID 1 cannot be stopped from inside its namespace: then the
            // target alone stops.
            if let Err(err) = self.suspend() {
                warn!("cannot stop: {err}");
            }
        }
    }

    fn suspend(&self) -> io::Result<()> {
        match &self.suspended {
            Some(suspended) => {
                let _ = suspended.send(());
                Ok(())
            }
            None => signals::stop_self(),
        }
    }
}

/// Cuts a stack dump that would not fit in a reply line ([`MAX_REPLY`];
/// escaping at most doubles its size), saying so at its end.
pub(crate) fn fit_reply(mut text: String) -> String {
    const ROOM: usize = MAX_REPLY / 2 - 100;
    if text.len() > ROOM {
        let mut end = ROOM;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let total = text.len();
        text.truncate(end);
        text.push_str(&format!(
            "\n... (cut: the whole dump is {total} bytes, a reply holds {ROOM})"
        ));
    }
    text
}

pub(crate) fn not_running() -> Reply {
    Reply::Error("Target process not running".into())
}

/// Cuts a `STACKS` reply that would not fit in a reply line
/// ([`MAX_REPLY`]): the last processes' threads are left out, each saying
/// so, until it fits.
pub(crate) fn fit_stacks(mut stacks: Vec<ProcessStacks>) -> Vec<ProcessStacks> {
    const ROOM: usize = MAX_REPLY - 100;
    let size =
        |process: &ProcessStacks| serde_json::to_string(process).map_or(0, |json| json.len());
    let mut total: usize = stacks.iter().map(|process| size(process) + 1).sum();
    for process in stacks.iter_mut().rev() {
        if total <= ROOM {
            break;
        }
        if process.threads.is_empty() {
            continue;
        }
        total -= size(process);
        process.threads.clear();
        process.skipped = Some(format!(
            "cut: the stacks of every process would not fit in a reply of {MAX_REPLY} bytes"
        ));
        total += size(process);
    }
    stacks
}

/// What the loop knows between events.
#[derive(Debug)]
struct State {
    /// The current run of the target, or the last one while restarting.
    run: Run,
    phase: Phase,
    /// How the last target ended, once one did.
    last_exit: Option<ExitStatus>,
    /// The grants of the tree, in force and in progress.
    grants: GrantBook,
    /// Requests waiting for work off the loop, oldest first.
    waiting: Vec<WaitingRequest>,
    /// The granter's facts for `STATUS`, as of its last piece of work.
    granter_fields: Vec<(String, String)>,
    next_job: JobId,
    /// Warnings peers cause (bad requests, refusals), limited per peer
    /// process (peers a transport cannot tell apart share one allowance).
    warnings: LogLimit<Option<ProcessId>>,
}

/// A request whose answer waits for work off the loop.
#[derive(Debug)]
struct WaitingRequest {
    id: JobId,
    incoming: Incoming,
    deadline: Deadline,
    claim: Claim,
    what: Waiting,
}

/// Work handed to a worker, for a request to wait on.
#[derive(Debug)]
struct Work {
    id: JobId,
    deadline: Deadline,
    claim: Claim,
    what: Waiting,
}

impl WaitingRequest {
    /// When the loop gives up on the work if the worker has not reported
    /// it: past its deadline, after the worker's grace.
    fn due(&self) -> Instant {
        self.deadline.instant() + WORKER_GRACE
    }
}

/// What a waiting request waits for.
#[derive(Clone, Debug)]
enum Waiting {
    /// A grant on process `on` (the target, or one of its tree).
    Grant { on: Pid },
    /// A revoke on process `on`.
    Revoke { on: Pid },
    /// A read of the inspector's, on process `on`: answered as `answer`
    /// says, or with `failed: <why>`.
    Inspect {
        answer: Answer,
        failed: String,
        on: Pid,
    },
}

/// What a client asked the inspector for.
#[derive(Clone, Copy, Debug)]
enum Ask {
    Ps,
    Stack(Scope),
    Stacks(Scope),
}

/// The reply a read of the inspector's becomes.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// `STACK`: the target's threads as text, as ever.
    Threads,
    /// `STACK <pid>|ALL`: each process under its header, as text.
    Text,
    /// `STACKS`.
    Json,
    /// `PS`.
    Ps,
}

impl State {
    fn new(target: Pid, holder: GrantHolder) -> State {
        State {
            run: Run::first(target),
            phase: Phase::Running,
            last_exit: None,
            grants: GrantBook::new(holder),
            waiting: Vec::new(),
            granter_fields: Vec::new(),
            next_job: 0,
            warnings: LogLimit::new(),
        }
    }

    /// Logs `what` a peer caused, within the peer's allowance.
    fn warn_about(&mut self, peer: &Peer, what: fmt::Arguments<'_>) {
        if let Some(note) = self.warnings.check(peer.process(), Instant::now()) {
            warn!("{what}{note}");
        }
    }

    fn new_job(&mut self) -> (JobId, Claim) {
        self.next_job += 1;
        (self.next_job, Claim::default())
    }

    fn wait_for(&mut self, work: Work, incoming: Incoming) {
        self.waiting.push(WaitingRequest {
            id: work.id,
            incoming,
            deadline: work.deadline,
            claim: work.claim,
            what: work.what,
        });
    }

    fn take_waiting(&mut self, id: JobId) -> Option<WaitingRequest> {
        let at = self.waiting.iter().position(|waiting| waiting.id == id)?;
        Some(self.waiting.remove(at))
    }

    /// When the loop next gives up on work past its deadline.
    fn next_give_up(&self) -> Option<Instant> {
        self.waiting.iter().map(WaitingRequest::due).min()
    }

    /// Calls off all work in progress and answers its requests with
    /// `reply()`; work a worker has just finished is answered when its
    /// result comes.
    fn call_off_work(&mut self, reply: impl Fn() -> Reply) {
        self.call_off(|_| true, reply);
    }

    /// Calls off the work in progress that `which` picks, as
    /// [`call_off_work`](Self::call_off_work) does.
    fn call_off(&mut self, which: impl Fn(&WaitingRequest) -> bool, reply: impl Fn() -> Reply) {
        let (called_off, left): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|waiting| {
                if !which(waiting) {
                    return false;
                }
                waiting.deadline.cancel();
                // Work a worker has just finished stays: its result comes.
                waiting.claim.abandon()
            });
        self.waiting = left;
        for waiting in called_off {
            if let Waiting::Grant { .. } = waiting.what {
                self.grants.take_pending(waiting.id);
            }
            waiting.incoming.reply(reply());
        }
    }
}

/// One run of the target.
#[derive(Clone, Copy, Debug)]
struct Run {
    target: Pid,
    started: Instant,
    /// Counts the runs: 1 for the first target, one more per restart.
    number: u64,
}

impl Run {
    fn first(target: Pid) -> Run {
        Run {
            target,
            started: Instant::now(),
            number: 1,
        }
    }

    /// The run of a restarted target, `target`.
    fn next(self, target: Pid) -> Run {
        Run {
            number: self.number + 1,
            ..Run::first(target)
        }
    }
}

/// Where the controller is in its target's life.
#[derive(Debug)]
enum Phase {
    /// The target runs.
    Running,
    /// The target was asked to end.
    Stopping(Stop),
    /// The last target ended on its own; a new one starts `at`.
    Restarting { at: Instant },
    /// The controller is done: `run` returns this.
    Ended(io::Result<ExitStatus>),
}

/// Where a stopping target is.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// Asked to end: killed at `kill_at` if it still runs.
    Asked { kill_at: Instant },
    /// Killed: its exit is awaited; at `check_at` the loop looks whether a
    /// cgroup freezer holds it (then it is not waited for).
    Killed { check_at: Instant },
}

impl Phase {
    /// Whether a target runs (it may be stopping).
    fn is_live(&self) -> bool {
        matches!(self, Phase::Running | Phase::Stopping(_))
    }

    /// When the stopping phase takes its next step.
    fn stop_at(&self) -> Option<Instant> {
        match self {
            Phase::Stopping(Stop::Asked { kill_at }) => Some(*kill_at),
            Phase::Stopping(Stop::Killed { check_at }) => Some(*check_at),
            _ => None,
        }
    }

    fn respawn_at(&self) -> Option<Instant> {
        match self {
            Phase::Restarting { at } => Some(*at),
            _ => None,
        }
    }
}
