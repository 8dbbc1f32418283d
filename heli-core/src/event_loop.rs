//! The controller's event loop: one `select!` over requests, the target's
//! exit, signals, the results of work run off the loop, and timers. It never
//! waits on the target itself: grants, revokes and stack reads run on
//! worker threads, each with a deadline, and the loop serves every other
//! request meanwhile.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, never, select, Receiver, Sender};
use log::{debug, info, warn};

use crate::authorize::{self, GrantRecord};
use crate::deadline::Deadline;
use crate::log_limit::LogLimit;
use crate::process::{Pid, ProcessId, ProcessState};
use crate::protocol::{Reply, Request, Scope, Status, MAX_REPLY};
use crate::restart::RestartPolicy;
use crate::signals::{self, Caught, STOP_SIGNALS, SUSPEND_SIGNALS};
use crate::supervisor::{Exit, ExitStatus, Supervisor};
use crate::transport::{Event, GrantHolder, Incoming, Peer};
use crate::worker::{Claim, Done, GrantWork, GrantWorker, JobId, StackWorker};

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
        // A later process must not inherit the grant.
        if let Some(grant) = state.take_grant() {
            self.submit_revoke(state, grant.target);
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
                state.run = Run::new(pid);
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
                    let target = state.run.target;
                    match request {
                        Request::GetTargetPid => Reply::TargetPid(target),
                        // TODO(tree-core): scopes other than the target, PS, STACKS.
                        Request::Stack(Scope::Target) => {
                            let deadline = Deadline::after(self.stack_deadline);
                            let (id, claim) = state.new_job();
                            self.stacks
                                .submit(id, target, deadline.clone(), claim.clone());
                            state.wait_for(id, incoming, deadline, claim, Waiting::Stack);
                            return;
                        }
                        Request::GrantAccess(grant) if grant.process.is_none() => {
                            let (client, force) = (grant.client, grant.force);
                            match self.grant(state, peer, client, force) {
                                Ok(waiting) => {
                                    let (id, deadline, claim) = waiting;
                                    state.wait_for(id, incoming, deadline, claim, Waiting::Grant);
                                    return;
                                }
                                Err(reply) => reply,
                            }
                        }
                        Request::Revoke(revoke) if revoke.process.is_none() => {
                            let named = revoke.client;
                            let holder = self.holder_to_be(state);
                            match authorize::may_revoke(holder.as_ref(), &peer, named) {
                                Ok(()) => match self.revoke(state) {
                                    Some((id, deadline, claim)) => {
                                        state.wait_for(
                                            id,
                                            incoming,
                                            deadline,
                                            claim,
                                            Waiting::Revoke,
                                        );
                                        return;
                                    }
                                    // Nothing runs there any more: nothing to
                                    // withdraw.
                                    None => Reply::Ready,
                                },
                                Err(refusal) => {
                                    state.warn_about(
                                        &peer,
                                        format_args!("refused REVOKE from {peer:?}: {refusal}"),
                                    );
                                    Reply::Error(refusal)
                                }
                            }
                        }
                        _ => Reply::Error("not implemented yet".into()),
                    }
                }
                Phase::Ended(_) => not_running(),
            },
        };
        incoming.reply(reply);
    }

    /// The grant in force, if its holder still runs.
    fn holder(&self, state: &State) -> Option<GrantRecord> {
        state
            .grant
            .filter(|grant| self.supervisor.is_running(grant.holder))
    }

    /// The grant as it will stand once the grants in progress are made:
    /// the newest of them (the worker makes them in order, and Yama keeps
    /// one ptracer), else the grant in force. Another client's grant and a
    /// REVOKE are weighed against it: either, queued behind a grant in
    /// progress, would take its access away once its client was told
    /// `READY`.
    fn holder_to_be(&self, state: &State) -> Option<GrantRecord> {
        state
            .granting
            .iter()
            .rev()
            .find(|pending| !pending.revoked)
            .map(|pending| pending.record)
            .filter(|grant| self.supervisor.is_running(grant.holder))
            .or_else(|| self.holder(state))
    }

    /// Starts granting the process `requested` names access, unless the
    /// policy refuses it, or another client holds the grant and `force` is
    /// not set (Yama keeps one ptracer per target): the work's id, deadline
    /// and claim, or the refusal.
    fn grant(
        &mut self,
        state: &mut State,
        peer: Peer,
        requested: Pid,
        force: bool,
    ) -> Result<(JobId, Deadline, Claim), Reply> {
        if !matches!(state.phase, Phase::Running) {
            return Err(Reply::Error("The controller is shutting down".into()));
        }
        let target = state.run.target;
        let client = match authorize::grantee(&peer, requested, target, &self.supervisor) {
            Ok(client) => client,
            Err(refusal) => {
                state.warn_about(
                    &peer,
                    format_args!("refused GRANT_ACCESS {requested} from {peer:?}: {refusal}"),
                );
                return Err(Reply::Error(refusal));
            }
        };
        let previous = self.holder_to_be(state);
        if let Some(holder) = previous.filter(|grant| grant.holder != client && !force) {
            return Err(Reply::Error(format!(
                "target is being debugged by client PID {} (attach --force takes it over)",
                holder.holder.pid
            )));
        }
        let target_id = match self.supervisor.identity(target) {
            Ok(Some(id)) => id,
            Ok(None) => {
                return Err(Reply::Error(format!(
                    "Grant failed: target PID {target} is not running"
                )))
            }
            Err(err) => return Err(Reply::Error(format!("Grant failed: {err}"))),
        };
        let deadline = Deadline::after(self.grant_deadline);
        let (id, claim) = state.new_job();
        self.grants.submit(
            id,
            GrantWork::Grant {
                target: target_id,
                client,
            },
            deadline.clone(),
            claim.clone(),
        );
        state.granting.push(Pending {
            id,
            record: GrantRecord {
                holder: client,
                target: target_id,
                connection: peer.connection,
            },
            previous,
            revoked: false,
        });
        Ok((id, deadline, claim))
    }

    /// Starts withdrawing the grant on the target: the work's id, deadline
    /// and claim; `None` when no target runs to withdraw it from.
    fn revoke(&mut self, state: &mut State) -> Option<(JobId, Deadline, Claim)> {
        // The revoke runs after the grants in progress: none of them stays.
        for pending in &mut state.granting {
            pending.revoked = true;
        }
        let recorded = state.take_grant().map(|grant| grant.target);
        let target = match recorded {
            Some(id) => id,
            None => self.supervisor.identity(state.run.target).ok().flatten()?,
        };
        let deadline = Deadline::after(self.grant_deadline);
        let (id, claim) = state.new_job();
        self.grants.submit(
            id,
            GrantWork::Revoke { target },
            deadline.clone(),
            claim.clone(),
        );
        Some((id, deadline, claim))
    }

    /// Withdraws the grant on `target` with nobody waiting for the answer.
    fn submit_revoke(&mut self, state: &mut State, target: ProcessId) {
        let (id, claim) = state.new_job();
        self.grants.submit(
            id,
            GrantWork::Revoke { target },
            Deadline::after(self.grant_deadline),
            claim,
        );
    }

    /// A worker finished a piece of work the loop may still wait for.
    fn work_done(&mut self, state: &mut State, done: Done) {
        let id = match &done {
            Done::Grant { id, .. } | Done::Stack { id, .. } => *id,
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
                match (work, state.take_granting(id), result) {
                    (GrantWork::Grant { .. }, Some(pending), Ok(())) if pending.revoked => {
                        Reply::Error(
                            "Grant failed: a REVOKE that came during it withdrew it".into(),
                        )
                    }
                    (GrantWork::Grant { .. }, Some(pending), Ok(())) => {
                        self.granted(state, pending.record, pending.previous)
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
                    (GrantWork::Revoke { .. }, _, Ok(())) => {
                        info!("revoked access to target {}", state.run.target);
                        Reply::Ready
                    }
                    (GrantWork::Revoke { .. }, _, Err(err)) => {
                        Reply::Error(format!("Revoke failed: {err}"))
                    }
                }
            }
            Done::Stack { result, .. } => match result {
                Ok(text) => Reply::Stack(fit_reply(text)),
                Err(err) => Reply::Error(format!("Cannot read the target's stacks: {err}")),
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

    /// A grant is in force: record it, unless its target ended meanwhile.
    fn granted(
        &mut self,
        state: &mut State,
        record: GrantRecord,
        previous: Option<GrantRecord>,
    ) -> Reply {
        let target = state.run.target;
        if !(state.phase.is_live() && record.target.pid == target) {
            return Reply::Error(format!(
                "Grant failed: target PID {} exited during the grant",
                record.target.pid
            ));
        }
        match previous {
            Some(old) if old.holder != record.holder => info!(
                "granted PID {} access to target {target}, taking it over from PID {}",
                record.holder.pid, old.holder.pid
            ),
            _ => info!(
                "granted PID {} access to target {target}",
                record.holder.pid
            ),
        }
        state.set_grant(record);
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
            let why = self.why_no_answer(state.run.target);
            let reply = match waiting.what {
                Waiting::Grant => {
                    state.take_granting(waiting.id);
                    warn!("a grant got no answer in time: {why}");
                    Reply::Error(format!("Grant failed: {why}"))
                }
                Waiting::Revoke => Reply::Error(format!("Revoke failed: {why}")),
                Waiting::Stack => Reply::Error(format!("Cannot read the target's stacks: {why}")),
            };
            waiting.incoming.reply(reply);
        }
    }

    /// Why work on the target got no answer in time, as far as the
    /// supervisor can tell.
    fn why_no_answer(&self, target: Pid) -> String {
        let condition = match self.condition(target) {
            Some("frozen") => "the target is frozen (cgroup freezer)".to_owned(),
            Some(_) => "the target is in uninterruptible sleep (state D)".to_owned(),
            None => match self.supervisor.process(target) {
                Ok(Some(info)) => format!("the target is in state {}", info.state.code()),
                Ok(None) => "the target is gone".to_owned(),
                Err(err) => format!("the target's state cannot be read: {err}"),
            },
        };
        format!("no answer within its deadline: {condition}")
    }

    /// A connection closed: the grant it asked for, if still in force,
    /// goes with it.
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
                matches!(waiting.what, Waiting::Grant)
                    && waiting.incoming.peer().connection == peer.connection
            },
            || Reply::Error("Grant failed: its connection closed".into()),
        );
        let Some(grant) = state
            .grant
            .filter(|grant| grant.connection == peer.connection)
        else {
            return;
        };
        info!(
            "the connection of client PID {} closed: revoking its grant",
            grant.holder.pid
        );
        if let Some(grant) = state.take_grant() {
            self.submit_revoke(state, grant.target);
        }
    }

    fn status(&self, state: &State) -> Status {
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
        Status {
            pid: state.run.target,
            state: state_name.to_owned(),
            uptime_secs: state.run.started.elapsed().as_secs(),
            granter: self.granter_name.clone(),
            grants: Vec::new(),
            holder: self
                .holder(state)
                .filter(|_| state.phase.is_live())
                .map(|grant| grant.holder.pid),
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

/// What the loop knows between events.
#[derive(Debug)]
struct State {
    /// The current run of the target, or the last one while restarting.
    run: Run,
    phase: Phase,
    /// How the last target ended, once one did.
    last_exit: Option<ExitStatus>,
    /// The grant in force, as the controller made it.
    grant: Option<GrantRecord>,
    /// Its connection, as the listener sees it.
    holder: GrantHolder,
    /// Requests waiting for work off the loop, oldest first.
    waiting: Vec<WaitingRequest>,
    /// Grants in progress, oldest first.
    granting: Vec<Pending>,
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

/// A grant in progress.
#[derive(Debug)]
struct Pending {
    id: JobId,
    /// What to record when it succeeds.
    record: GrantRecord,
    /// Who held the grant (or was being granted it) before.
    previous: Option<GrantRecord>,
    /// A REVOKE came after it was asked for: that revoke, queued behind
    /// it, withdraws it, so it is not recorded.
    revoked: bool,
}

impl WaitingRequest {
    /// When the loop gives up on the work if the worker has not reported
    /// it: past its deadline, after the worker's grace.
    fn due(&self) -> Instant {
        self.deadline.instant() + WORKER_GRACE
    }
}

/// What a waiting request waits for.
#[derive(Clone, Copy, Debug)]
enum Waiting {
    Grant,
    Revoke,
    Stack,
}

impl State {
    fn new(target: Pid, holder: GrantHolder) -> State {
        State {
            run: Run::new(target),
            phase: Phase::Running,
            last_exit: None,
            grant: None,
            holder,
            waiting: Vec::new(),
            granting: Vec::new(),
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

    fn set_grant(&mut self, grant: GrantRecord) {
        self.holder.set([grant.connection]);
        self.grant = Some(grant);
    }

    fn take_grant(&mut self) -> Option<GrantRecord> {
        self.holder.set([]);
        self.grant.take()
    }

    fn new_job(&mut self) -> (JobId, Claim) {
        self.next_job += 1;
        (self.next_job, Claim::default())
    }

    fn wait_for(
        &mut self,
        id: JobId,
        incoming: Incoming,
        deadline: Deadline,
        claim: Claim,
        what: Waiting,
    ) {
        self.waiting.push(WaitingRequest {
            id,
            incoming,
            deadline,
            claim,
            what,
        });
    }

    fn take_waiting(&mut self, id: JobId) -> Option<WaitingRequest> {
        let at = self.waiting.iter().position(|waiting| waiting.id == id)?;
        Some(self.waiting.remove(at))
    }

    fn take_granting(&mut self, id: JobId) -> Option<Pending> {
        let at = self.granting.iter().position(|pending| pending.id == id)?;
        Some(self.granting.remove(at))
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
            if let Waiting::Grant = waiting.what {
                self.take_granting(waiting.id);
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
}

impl Run {
    fn new(target: Pid) -> Run {
        Run {
            target,
            started: Instant::now(),
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
