//! The controller's event loop: one `select!` over requests, the target's
//! exit, signals, the results of work run off the loop, and timers. It never
//! waits on the target itself: grants, revokes, stack reads and tree
//! listings run on worker threads, each with a deadline, and the loop serves
//! every other request meanwhile.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crossbeam_channel::{after, never, select, Receiver, Sender};
use log::{debug, info, warn};

use crate::agent::{Agent, AgentSession, AgentState};
use crate::audit::{AuditEvent, AuditProcess, AuditResult, RevokeCause};
use crate::auditing::Auditing;
use crate::authorize::{self, GrantRecord, Refusal, Use};
use crate::deadline::Deadline;
use crate::grants::{self, GrantBook, Pending, RevokePhase};
use crate::limits::{Due, Graces, Limit, Limits};
use crate::log_limit::LogLimit;
use crate::notifier::{Notifier, Notify};
use crate::process::{Pid, ProcessId, ProcessState};
use crate::profile::{ProfileRequest, Samples};
use crate::protocol::{
    whole_seconds, GrantRequest, Reply, Request, RevokeRequest, Scope, Status, TreeGrant, MAX_REPLY,
};
use crate::restart::RestartPolicy;
use crate::sampler::{Plan, Profiler, Sampled, Sampling};
use crate::signals::{self, Caught, STOP_SIGNALS, SUSPEND_SIGNALS};
use crate::stacks::{threads_text, ProcessStacks};
use crate::supervisor::{Exit, ExitStatus, Supervisor};
use crate::tasks::AsyncTasks;
use crate::transport::{Event, GrantHolder, Incoming, Peer};
use crate::tree::{Role, Tree};
use crate::worker::{
    AgentWorker, Claim, Done, GrantWork, GrantWorker, Inspected, Inspection, JobId, StackWorker,
    TreeRoot,
};

/// How long after a piece of work's deadline the loop still waits for the
/// worker's own report (which says best what happened) before it answers
/// for it.
const WORKER_GRACE: Duration = Duration::from_millis(250);

/// How often the loop looks whether a killed target that has not ended is
/// frozen by a cgroup freezer (v1 lets such a process die only once thawed).
const KILLED_CHECK: Duration = Duration::from_millis(500);

/// How long the agent has to end a session whose time is up (it answers
/// at once unless its process is stopped).
const HANG_UP_DEADLINE: Duration = Duration::from_secs(2);

/// How many reads of the inspector's (`PS`, `STACK`, `STACKS`) may wait
/// at once, all connections together; each connection may have one.
const MAX_INSPECTIONS: usize = 8;

/// How many profiles may run at once, all connections together.
const MAX_PROFILES: usize = 4;

/// How long a controller whose target ended for good waits for the
/// clients of running profiles to collect their last samples.
const PROFILE_LINGER: Duration = Duration::from_secs(1);

/// The refusal of `PROFILE` on a transport without connections.
pub(crate) const NO_CONNECTION: &str = "PROFILE needs a connection that stays open, which the FIFO transport has not (it cannot tell when its client goes away): use the Unix socket transport";

/// The signal the kernel reports for a killed process.
const SIGKILL: i32 = signal_hook::consts::signal::SIGKILL;

/// The signal that asks a process to end.
const SIGTERM: i32 = signal_hook::consts::signal::SIGTERM;

/// The refusal of `AGENT_ATTACH` on a transport that cannot pass file
/// descriptors.
pub(crate) const NO_FDS: &str =
    "the FIFO transport cannot pass the agent's sockets: use the Unix socket transport";

/// What the loop needs besides its state: the supervisor, the agent, the
/// workers, and the controller's settings.
/// Why [`Loop::requested_process`] gave no process: the policy refused it
/// (logged as a refusal), or the target is not running.
enum NotGiven {
    Refused(Refusal),
    Failed(String),
}

pub(crate) struct Loop<S, A, N> {
    pub(crate) supervisor: S,
    /// The service manager's line: told on the loop, so that a wedged loop
    /// stops the watchdog's pings.
    pub(crate) notify: Notify<N>,
    /// The audit trail: records are handed to its thread, never waited
    /// for.
    pub(crate) audit: Auditing,
    pub(crate) grants: GrantWorker,
    pub(crate) stacks: StackWorker,
    /// Starts the samplers of `PROFILE`.
    pub(crate) profiler: Profiler,
    /// Asked on the loop for its state only (at once); its attaches run on
    /// `agents`.
    pub(crate) agent: Arc<A>,
    pub(crate) agents: AgentWorker,
    /// Clients attach through the agent, not with a grant.
    pub(crate) prefer_agent: bool,
    pub(crate) done: Receiver<Done>,
    pub(crate) granter_name: String,
    pub(crate) grace: Duration,
    pub(crate) grant_deadline: Duration,
    pub(crate) stack_deadline: Duration,
    /// The longest a grant may last (`None`: as long as its client likes).
    pub(crate) max_grant: Option<Duration>,
    /// What a client whose time is up is given.
    pub(crate) graces: Graces,
    pub(crate) restart: RestartPolicy,
    pub(crate) status_fields: Vec<(String, String)>,
    pub(crate) authenticates: bool,
    /// Whether the transport can send file descriptors with a reply.
    pub(crate) passes_fds: bool,
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

impl<S: Supervisor, A: Agent, N: Notifier> Loop<S, A, N> {
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
        // The listener listens and the target runs: clients are served.
        self.notify.ready();
        let status = loop {
            self.tell(&state);
            if !state.lingers() {
                if let Phase::Ended(result) = &mut state.phase {
                    break std::mem::replace(result, Ok(ExitStatus::Code(0)));
                }
            }
            let timer = |at: Option<Instant>| match at {
                Some(at) => after(at.saturating_duration_since(Instant::now())),
                None => never(),
            };
            let stop_timer = timer(state.phase.stop_at());
            let respawn_timer = timer(state.phase.respawn_at());
            let work_timer = timer(state.next_give_up());
            let retry_timer = timer(state.grants.next_retry());
            let limit_timer = timer(
                [state.grants.next_expiry(), state.limits.next_due()]
                    .into_iter()
                    .flatten()
                    .min(),
            );
            let linger_timer = timer(state.linger);
            // `never` without a watchdog: the loop does not wake for it.
            let ping_timer = timer(self.notify.ping_at());
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
                recv(retry_timer) -> _ => self.retry_revokes(&mut state),
                recv(limit_timer) -> _ => self.time_up(&mut state),
                recv(inputs.signals) -> caught => {
                    if let Ok(caught) = caught {
                        self.on_signal(&mut state, caught);
                    }
                }
                recv(inputs.shutdown) -> _ => self.begin_stop(&mut state, None),
                recv(stop_timer) -> _ => self.stop_step(&mut state),
                recv(linger_timer) -> _ => {}
                recv(ping_timer) -> _ => self.notify.ping(),
            }
        };
        state.call_off_work(not_running);
        status
    }

    /// Tells the service manager what changed since the last turn: that
    /// the controller shuts down, and its status line.
    fn tell(&mut self, state: &State) {
        if matches!(state.phase, Phase::Stopping(_) | Phase::Ended(_)) {
            self.notify.stopping();
        }
        self.notify
            .status(service_status(state, self.restart.restarts()));
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
            self.audit_grant_ended(&grant, RevokeCause::ProcessExit);
            self.withdraw(state, grant);
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
        let mut refused = false;
        let reply = match (request, &state.phase) {
            (Request::Status, _) => Reply::Status(self.status(state)),
            (Request::Audit(since), _) => {
                Reply::Audit(self.audit.recent(since.map(Duration::from_secs)))
            }
            // A profile's last batch is collected whatever became of its
            // target.
            (Request::Samples(stop), _) => match collect(state, peer, stop) {
                Ok(samples) => Reply::Samples(samples),
                Err(refusal) => Reply::Error(refusal),
            },
            (Request::Terminate, _) => {
                info!("TERMINATE requested by {peer:?}");
                self.audit_reply(state, &peer, request, &Reply::Ready, false);
                incoming.reply(Reply::Ready);
                self.begin_stop(state, None);
                return;
            }
            // Between a target's end and its restart there is nobody to
            // grant access to.
            (_, Phase::Restarting { at }) => Reply::Error(format!(
                "Target process not running (restarting in {} ms)",
                at.saturating_duration_since(Instant::now()).as_millis()
            )),
            (_, Phase::Ended(_)) => not_running(),
            (request, Phase::Running | Phase::Stopping(_)) => {
                match self.serve(state, peer, request) {
                    Ok(Served::Now(reply)) => reply,
                    Ok(Served::Later(work)) => {
                        state.wait_for(work, incoming);
                        return;
                    }
                    Err(refusal) => {
                        refused = true;
                        Reply::Error(refusal)
                    }
                }
            }
        };
        self.audit_reply(state, &peer, request, &reply, refused);
        incoming.reply(reply);
    }

    /// Records in the audit trail what `request` from `peer` came to,
    /// answered with `reply`: refused (by the policy, or busy: `refused`),
    /// failed (an `ERROR` otherwise), or done. `GET_TARGET_PID` and `AUDIT`
    /// are not recorded; a `REVOKE` that withdrew a grant was recorded as
    /// the grant's end.
    fn audit_reply(
        &mut self,
        state: &State,
        peer: &Peer,
        request: Request,
        reply: &Reply,
        refused: bool,
    ) {
        let event = match request {
            Request::GrantAccess(_) => AuditEvent::Grant,
            Request::Revoke(_) => AuditEvent::Revoke,
            Request::Ps | Request::Stack(_) | Request::Stacks(_) | Request::Tasks(_) => {
                AuditEvent::StackDump
            }
            Request::AgentAttach(_) => AuditEvent::AgentAttach,
            Request::Profile(_) => AuditEvent::ProfileStart,
            Request::Samples(_) => match reply {
                Reply::Samples(samples) if samples.ended.is_some() => AuditEvent::ProfileEnd,
                _ => return,
            },
            Request::Status => AuditEvent::Status,
            Request::Terminate => AuditEvent::Terminate,
            _ => return,
        };
        let error = match reply {
            Reply::Error(message) => Some(message.clone()),
            _ => None,
        };
        if event == AuditEvent::Revoke && error.is_none() {
            return;
        }
        let mut record = self
            .audit
            .draft(if refused { AuditEvent::Refusal } else { event }, peer);
        record.request = Some(request.to_string());
        record.result = match (&error, refused) {
            (None, _) => AuditResult::Ok,
            (Some(_), true) => AuditResult::Refused,
            (Some(_), false) => AuditResult::Failed,
        };
        record.reason = error;
        let target = state.run.target;
        let asked = match request {
            Request::Stack(Scope::Process(pid))
            | Request::Stacks(Scope::Process(pid))
            | Request::Tasks(Some(pid))
            | Request::AgentAttach(Some(pid)) => Some(pid),
            Request::Profile(profile) => match profile.scope {
                Scope::Process(pid) => Some(pid),
                _ => Some(target),
            },
            Request::GrantAccess(grant) => Some(grant.process.unwrap_or(target)),
            Request::Revoke(revoke) => Some(revoke.process.unwrap_or(target)),
            Request::Ps | Request::Stack(_) | Request::Stacks(_) | Request::Tasks(None) => {
                Some(target)
            }
            Request::AgentAttach(None) => Some(target),
            _ => None,
        };
        record.process = asked.map(|pid| match self.supervisor.identity(pid) {
            Ok(Some(id)) => AuditProcess::of(id),
            _ => AuditProcess {
                pid: pid.get(),
                ..AuditProcess::default()
            },
        });
        match (request, reply) {
            (Request::GrantAccess(grant), _) => {
                record.method = Some(self.audit.method().to_owned());
                if peer.credentials.is_none() {
                    // What the FIFO's request claimed: never verified.
                    record.peer.claimed_pid = Some(grant.client);
                }
                let held = state
                    .grants
                    .in_force()
                    .find(|held| held.holder.pid == grant.client && record.reason.is_none());
                record.grantee = Some(match held {
                    Some(held) => {
                        record.process = Some(AuditProcess::of(held.process));
                        AuditProcess::of(held.holder)
                    }
                    None => AuditProcess {
                        pid: grant.client.get(),
                        ..AuditProcess::default()
                    },
                });
            }
            (Request::AgentAttach(_), Reply::Agent { pid, .. }) => {
                record.method = Some("agent".to_owned());
                if let Ok(Some(id)) = self.supervisor.identity(*pid) {
                    record.process = Some(AuditProcess::of(id));
                }
            }
            (Request::AgentAttach(_), _) => record.method = Some("agent".to_owned()),
            (Request::Profile(_), Reply::Ready) => self.audit.profile_started(peer.connection),
            (Request::Samples(_), _) => {
                record.duration_ms = self.audit.profile_ended(peer.connection);
            }
            _ => {}
        }
        self.audit.send(record);
    }

    /// Records in the audit trail that `grant` ended for `cause` (its
    /// revoke is on its way): the hook of every way a grant ends.
    pub(crate) fn audit_grant_ended(&mut self, grant: &GrantRecord, cause: RevokeCause) {
        self.audit.grant_ended(grant, cause);
    }

    /// Serves `request` (any but `STATUS` and `TERMINATE`) while a target
    /// runs: a reply at once, or work to wait for; or the refusal.
    fn serve(
        &mut self,
        state: &mut State,
        peer: Peer,
        request: Request,
    ) -> Result<Served, Refusal> {
        Ok(match request {
            Request::GetTargetPid => Served::Now(Reply::TargetPid(state.run.target)),
            Request::GrantAccess(grant) => Served::Later(self.grant(state, peer, grant)?),
            Request::Revoke(revoke) => match self.revoke(state, peer, revoke)? {
                Some(work) => Served::Later(work),
                None => Served::Now(Reply::Ready),
            },
            Request::Ps => Served::Later(self.inspect(state, &peer, Answer::Ps, Scope::All)?),
            // Today's `STACK`: the target's threads, as text.
            Request::Stack(Scope::Target) => {
                Served::Later(self.inspect(state, &peer, Answer::Threads, Scope::Target)?)
            }
            Request::Stack(scope) => {
                Served::Later(self.inspect(state, &peer, Answer::Text, scope)?)
            }
            Request::Stacks(scope) => {
                Served::Later(self.inspect(state, &peer, Answer::Json, scope)?)
            }
            Request::Tasks(process) => {
                let scope = process.map_or(Scope::Target, Scope::Process);
                Served::Later(self.inspect(state, &peer, Answer::Tasks, scope)?)
            }
            Request::AgentAttach(process) => {
                Served::Later(self.agent_attach(state, peer, process)?)
            }
            Request::Profile(profile) => Served::Now(self.profile(state, peer, profile)?),
            Request::Status | Request::Terminate | Request::Samples(_) | Request::Audit(_) => {
                return Err(format!("{request} is answered in every phase"))
            }
        })
    }

    /// Whether process `id` still runs (an error of the table counts as
    /// no).
    fn runs(&self) -> impl Fn(ProcessId) -> bool + '_ {
        |id| self.supervisor.is_running(id)
    }

    /// Drops the grants on processes that exited (or whose pid now names
    /// another process); the granter forgets them through a revoke. Tries
    /// again the revokes that failed and are due.
    fn prune(&mut self, state: &mut State) {
        let gone = state
            .grants
            .take(|grant| !self.supervisor.is_running(grant.process));
        for grant in gone {
            info!(
                "PID {} exited: the grant of client PID {} on it is dropped",
                grant.process.pid, grant.holder.pid
            );
            self.audit_grant_ended(&grant, RevokeCause::ProcessExit);
            self.send_revoke(state, grant.process);
        }
        state
            .grants
            .forget_gone(|process| !self.supervisor.is_running(process));
        state
            .limits
            .forget_gone(|holder| !self.supervisor.is_running(holder));
        self.retry_revokes(state);
    }

    /// Time is up for grants and clients: grants whose time limit passed are
    /// withdrawn; the debuggers of clients that outlived their time, and
    /// their connections, are ended (see [`limits`]).
    fn time_up(&mut self, state: &mut State) {
        let now = Instant::now();
        let expired = state
            .grants
            .take(|grant| grant.expires.is_some_and(|expires| expires <= now));
        for grant in expired {
            info!(
                "the time of client PID {} on {} is up: withdrawing its grant",
                grant.holder.pid,
                self.named(state, grant.process.pid)
            );
            self.audit_grant_ended(&grant, RevokeCause::Expired);
            self.withdraw(state, grant);
        }
        for ended in state.limits.sessions_due(now) {
            info!(
                "the time of session {} through the agent in {} is up: ending it",
                ended.session,
                self.named(state, ended.process.pid)
            );
            self.agents.hang_up(
                ended.process,
                ended.session,
                Deadline::after(HANG_UP_DEADLINE),
            );
        }
        let grants = &state.grants;
        let kill_grace = self.graces.kill;
        for due in state
            .limits
            .due(now, kill_grace, |holder| grants.holds_unlimited(holder))
        {
            let (limit, signal) = match due {
                Due::End(limit) => (limit, SIGTERM),
                Due::Kill(limit) => (limit, SIGKILL),
            };
            let ended = self.supervisor.signal_descendants(limit.holder, signal);
            if !matches!(ended, Ok(0)) {
                self.audit
                    .debuggers_ended(limit.holder, limit.connection, signal, &ended);
            }
            match ended {
                Ok(0) => {}
                Ok(ended) => warn!(
                    "client PID {} still debugs {} s after its time was up: {} of its processes sent signal {signal}",
                    limit.holder.pid,
                    now.saturating_duration_since(limit.expires).as_secs(),
                    ended
                ),
                Err(err) => warn!(
                    "cannot end the debuggers of client PID {}, whose time is up: {err}",
                    limit.holder.pid
                ),
            }
            if matches!(due, Due::End(_)) {
                let why = format!(
                    "The time limit of your grant was up {} s ago: the controller ended your debugger",
                    self.graces.client.as_secs()
                );
                state.grants.hang_up(limit.connection, &why);
            }
        }
    }

    /// Tries again the revokes that failed and are due; one on a process
    /// that is frozen or in state D waits (it would hold the granter up
    /// until its deadline for nothing).
    fn retry_revokes(&mut self, state: &mut State) {
        let now = Instant::now();
        for grant in state.grants.retries_due(now) {
            if self.condition(grant.process.pid).is_some() {
                state
                    .grants
                    .postpone(grant.process, now + grants::FIRST_RETRY);
                continue;
            }
            debug!(
                "trying again to revoke the grant of client PID {} on PID {}",
                grant.holder.pid, grant.process.pid
            );
            self.withdraw(state, grant);
        }
    }

    /// The role of `process` in the tree, as far as the table tells.
    fn role_of(&self, state: &State, process: Pid) -> Option<Role> {
        if process == state.run.target {
            return Some(Role::Target);
        }
        match self.supervisor.process(process) {
            Ok(Some(info)) => info.parent.map(Role::ChildOf),
            _ => None,
        }
    }

    /// How messages name `process` of the tree: `target 4242`, or
    /// `PID 5001 (child of 4242)`.
    fn named(&self, state: &State, process: Pid) -> String {
        named(process, self.role_of(state, process))
    }

    /// The process of the tree a request names (`None`: the target),
    /// pinned by its start time: the one home of that choice for grants
    /// and agent attaches. `failed` begins the message when the target is
    /// not running.
    fn requested_process(
        &self,
        requested: Option<Pid>,
        target: Pid,
        failed: &str,
    ) -> Result<ProcessId, NotGiven> {
        let target_id = match self.supervisor.identity(target) {
            Ok(Some(id)) => id,
            Ok(None) => {
                return Err(NotGiven::Failed(format!(
                    "{failed} failed: target PID {target} is not running"
                )))
            }
            Err(err) => return Err(NotGiven::Failed(format!("{failed} failed: {err}"))),
        };
        match requested.filter(|&process| process != target) {
            None => Ok(target_id),
            Some(pid) => {
                let adopter = self.adopter();
                authorize::tree_member(pid, target_id, adopter, &self.supervisor, Use::Grant)
                    .map_err(NotGiven::Refused)
            }
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
        let refused = |state: &mut State, refusal: String| state.refused(&peer, asked, refusal);
        let client = match authorize::grantee(&peer, request.client, target, &self.supervisor) {
            Ok(client) => client,
            Err(refusal) => return Err(refused(state, refusal)),
        };
        let process = match self.requested_process(request.process, target, "Grant") {
            Ok(process) => process,
            Err(NotGiven::Refused(refusal)) => return Err(refused(state, refusal)),
            Err(NotGiven::Failed(why)) => return Err(why),
        };
        let lasts = match (request.duration, self.max_grant) {
            (Some(asked), Some(most)) if asked > most => {
                return Err(refused(
                    state,
                    format!(
                        "GRANT_ACCESS {} refused: asked for {} s; this controller grants {} s at most (--max-grant)",
                        request.client,
                        asked.as_secs(),
                        most.as_secs()
                    ),
                ))
            }
            (asked, most) => asked.or(most),
        };
        // The granter does one piece of work at a time: a grant that would
        // wait on a process that cannot answer, or a second one on the same
        // process, would hold up every other client's. (A process in state
        // D is not refused: that is mostly brief, a disk read or a page
        // fault, e.g. while Python imports at start; a long one is let go
        // at the grant's deadline.)
        match self.condition(process.pid) {
            Some(Condition::Frozen) => {
                return Err(refused(
                    state,
                    format!(
                        "PID {} is frozen (cgroup freezer): it cannot be granted until thawed",
                        process.pid
                    ),
                ))
            }
            Some(Condition::DiskSleep) | None => {}
        }
        if state.grants.is_pending(process) {
            return Err(refused(
                state,
                format!("a grant on PID {} is already in progress", process.pid),
            ));
        }
        let previous = state.grants.to_be(process, self.runs());
        if let Some(holder) = previous.filter(|grant| grant.holder != client && !request.force) {
            // The target as ever; another process with its place.
            let who = match self.role_of(state, process.pid) {
                Some(Role::Target) => "target".to_owned(),
                role => named(process.pid, role),
            };
            return Err(format!(
                "{who} is being debugged by client PID {} (attach --force takes it over)",
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
                expires: None,
            },
            previous,
            revoked: false,
            closed: false,
            run: state.run.number,
            target,
            lasts,
            verified: peer.process().is_some(),
        });
        Ok(Work {
            id,
            deadline,
            claim,
            what: Waiting::Grant { on: process.pid },
        })
    }

    /// Starts an attach through the agent in the target or in process
    /// `requested` of its tree, for `peer`, if the policy lets it have
    /// what a grant on that process would give it, the transport can pass
    /// pdb's sockets, and the agent there serves: the work, or the refusal.
    fn agent_attach(
        &mut self,
        state: &mut State,
        peer: Peer,
        requested: Option<Pid>,
    ) -> Result<Work, Refusal> {
        if !matches!(state.phase, Phase::Running) {
            return Err("The controller is shutting down".into());
        }
        if !self.passes_fds {
            return Err(NO_FDS.into());
        }
        let target = state.run.target;
        let asked = Request::AgentAttach(requested);
        let refused = |state: &mut State, refusal: String| state.refused(&peer, asked, refusal);
        if let Err(refusal) = authorize::agent_client(&peer, target, &self.supervisor) {
            return Err(refused(state, refusal));
        }
        let process = match self.requested_process(requested, target, "Attach") {
            Ok(process) => process,
            Err(NotGiven::Refused(refusal)) => return Err(refused(state, refusal)),
            Err(NotGiven::Failed(why)) => return Err(why),
        };
        let named = self.named(state, process.pid);
        if self.condition(process.pid) == Some(Condition::Frozen) {
            return Err(format!(
                "{named} is frozen (cgroup freezer): its agent cannot answer until thawed"
            ));
        }
        let pending = state
            .waiting
            .iter()
            .any(|waiting| matches!(waiting.what, Waiting::Agent { on } if on == process.pid));
        if pending {
            return Err(format!(
                "an attach through the agent in {named} is already in progress"
            ));
        }
        // A starting agent is asked all the same: the process may be about
        // to load it, and the agent waits for it until the deadline.
        let agent = self.agent.state(process);
        if !agent.is_ready() && agent != AgentState::Starting {
            return Err(format!(
                "Cannot attach through the agent in {named}: {agent}"
            ));
        }
        let deadline = Deadline::after(self.grant_deadline);
        let (id, claim) = state.new_job();
        self.agents
            .submit(id, process, deadline.clone(), claim.clone());
        Ok(Work {
            id,
            deadline,
            claim,
            what: Waiting::Agent { on: process.pid },
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
        // that process stays. The grant stays in force (and listed) until
        // the revoke succeeded.
        state.grants.withdraw_pending(process);
        let held = state.grants.take(|grant| grant.process == process);
        let being_revoked = state
            .grants
            .revoking()
            .iter()
            .map(|revoking| revoking.record)
            .find(|grant| grant.process == process);
        for grant in &held {
            self.audit_grant_ended(grant, RevokeCause::Request);
        }
        let (id, deadline, claim) = match held.first().copied().or(being_revoked) {
            Some(grant) => self.withdraw(state, grant),
            None => self.send_revoke(state, process),
        };
        Ok(Some(Work {
            id,
            deadline,
            claim,
            what: Waiting::Revoke { on: process.pid },
        }))
    }

    /// Has the granter withdraw any grant on `process`, the book keeping
    /// no record of it (a process that is gone, or one no grant was
    /// recorded on): the work.
    fn send_revoke(&mut self, state: &mut State, process: ProcessId) -> (JobId, Deadline, Claim) {
        let (id, claim) = state.new_job();
        // The deadline counts from when the worker starts the revoke; this
        // one is for the loop's waiting, and calls it off.
        let deadline = Deadline::after(self.grant_deadline);
        let work = GrantWork::Revoke {
            target: process,
            within: self.grant_deadline,
        };
        self.grants
            .submit(id, work, deadline.clone(), claim.clone());
        (id, deadline, claim)
    }

    /// Withdraws `grant`: it stays in force (and listed) until the revoke
    /// succeeded or its process is gone; a revoke that fails is tried
    /// again. The work.
    fn withdraw(&mut self, state: &mut State, grant: GrantRecord) -> (JobId, Deadline, Claim) {
        let work = self.send_revoke(state, grant.process);
        state.grants.revoke(grant, work.0);
        work
    }

    /// Starts a read of the inspector's, on its thread with the stack
    /// deadline, for `scope` of the tree (`PS`: all of it), to be answered
    /// as `answer`: the work, or the refusal.
    fn inspect(
        &mut self,
        state: &mut State,
        peer: &Peer,
        answer: Answer,
        scope: Scope,
    ) -> Result<Work, Refusal> {
        let target = state.run.target;
        // One read at a time per connection, and a few in all: a flood of
        // reads queued behind one that hangs would time out anyway.
        let reads = || {
            state
                .waiting
                .iter()
                .filter(|waiting| matches!(waiting.what, Waiting::Inspect { .. }))
        };
        if peer.connection != 0
            && reads().any(|waiting| waiting.incoming.peer().connection == peer.connection)
        {
            return Err("busy: this connection already waits for a PS, STACK or STACKS".into());
        }
        if reads().count() >= MAX_INSPECTIONS {
            return Err(format!(
                "busy: {MAX_INSPECTIONS} PS, STACK or STACKS requests already wait; try again later"
            ));
        }
        self.prune(state);
        let root = match self.supervisor.identity(target) {
            Ok(Some(root)) => root,
            Ok(None) => return Err("Target process not running".into()),
            Err(err) => return Err(format!("Cannot look up the target, PID {target}: {err}")),
        };
        let tree = TreeRoot {
            target: root,
            adopter: self.adopter(),
        };
        let one = |process| Inspection::Stacks {
            tree,
            only: Some(process),
            me: None,
        };
        // The process read, when it is one.
        let (inspection, on) = match (answer, scope) {
            (Answer::Ps, _) => (Inspection::Tree(tree), None),
            (Answer::Tasks, Scope::Process(pid)) => {
                let process =
                    authorize::tree_member(pid, root, tree.adopter, &self.supervisor, Use::Stacks)?;
                (Inspection::Tasks(process), Some(process))
            }
            (Answer::Tasks, _) => (Inspection::Tasks(root), Some(root)),
            (_, Scope::All) => (
                Inspection::Stacks {
                    tree,
                    only: None,
                    me: self.controller_user(),
                },
                None,
            ),
            (_, Scope::Target) => (one(root), Some(root)),
            (_, Scope::Process(pid)) => {
                let process =
                    authorize::tree_member(pid, root, tree.adopter, &self.supervisor, Use::Stacks)?;
                (one(process), Some(process))
            }
        };
        let failed = match on {
            Some(process) if answer == Answer::Tasks => {
                format!("Cannot read the asyncio tasks of PID {}", process.pid)
            }
            None => "Cannot list the target's tree".to_owned(),
            Some(process) if process == root => "Cannot read the target's stacks".to_owned(),
            Some(process) => format!("Cannot read the stacks of PID {}", process.pid),
        };
        let deadline = Deadline::after(self.stack_deadline);
        let (id, claim) = state.new_job();
        self.stacks
            .submit(id, inspection, deadline.clone(), claim.clone());
        Ok(Work {
            id,
            deadline,
            claim,
            what: Waiting::Inspect {
                answer,
                failed,
                on: on.map_or(target, |process| process.pid),
            },
        })
    }

    /// Starts a profile for `peer`'s connection, unless the policy
    /// refuses it: `READY`, or the refusal.
    fn profile(
        &mut self,
        state: &mut State,
        peer: Peer,
        profile: ProfileRequest,
    ) -> Result<Reply, Refusal> {
        let asked = Request::Profile(profile);
        if peer.connection == 0 {
            return Err(state.refused(&peer, asked, NO_CONNECTION.into()));
        }
        if state.profiles.contains_key(&peer.connection) {
            return Err("a profile already runs on this connection (SAMPLES STOP ends it)".into());
        }
        if state.profiles.len() >= MAX_PROFILES {
            return Err(state.refused(
                &peer,
                asked,
                format!("busy: {MAX_PROFILES} profiles already run; try again later"),
            ));
        }
        let target = state.run.target;
        let root = match self.supervisor.identity(target) {
            Ok(Some(root)) => root,
            Ok(None) => return Err("Target process not running".into()),
            Err(err) => return Err(format!("Cannot look up the target, PID {target}: {err}")),
        };
        let (sampled, name) = match profile.scope {
            Scope::Target => (Sampled::One(root), format!("target PID {target}")),
            Scope::All => (Sampled::Tree(root), format!("target PID {target}")),
            Scope::Process(pid) => {
                let adopter = self.adopter();
                let process =
                    authorize::tree_member(pid, root, adopter, &self.supervisor, Use::Stacks)
                        .map_err(|refusal| state.refused(&peer, asked, refusal))?;
                (Sampled::One(process), self.named(state, pid))
            }
        };
        let plan = Plan {
            sampled,
            rate: profile.rate,
            duration: (profile.duration_ms != 0)
                .then(|| Duration::from_millis(profile.duration_ms)),
            name,
            me: self.controller_user(),
        };
        let sampling = self
            .profiler
            .start(plan)
            .map_err(|err| format!("Cannot start sampling: {err}"))?;
        info!("{asked} from {peer:?}: sampling");
        state.profiles.insert(peer.connection, sampling);
        Ok(Reply::Ready)
    }

    /// The controller, when it is a subreaper: the processes of the
    /// target's tree it adopted are of the tree too.
    fn adopter(&self) -> Option<ProcessId> {
        if !self.subreaper {
            return None;
        }
        self.supervisor.identity(Pid::this()).unwrap_or_else(|err| {
            warn!("cannot tell who this controller is: {err}");
            None
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
            Done::Grant { id, .. } | Done::Inspect { id, .. } | Done::Agent { id, .. } => *id,
        };
        // The request that waits for it, if the loop has not given up.
        let waiting = state.take_waiting(id);
        let mut fds = Vec::new();
        let reply = match done {
            Done::Grant {
                work,
                result,
                undo_failed,
                status_fields,
                ..
            } => {
                state.granter_fields = status_fields;
                if let (true, GrantWork::Grant { target, client }) = (undo_failed, work) {
                    self.late_grant_stays(state, target, client);
                }
                match (work, state.grants.take_pending(id), result) {
                    (GrantWork::Grant { .. }, Some(pending), Ok(())) if pending.closed => {
                        self.closed_during(state, pending)
                    }
                    (GrantWork::Grant { .. }, Some(pending), Ok(())) if pending.revoked => {
                        Reply::Error(
                            "Grant failed: a REVOKE that came during it withdrew it".into(),
                        )
                    }
                    (GrantWork::Grant { .. }, Some(pending), Ok(())) => {
                        let peer = waiting
                            .as_ref()
                            .map_or_else(Peer::default, |waiting| waiting.incoming.peer());
                        self.granted(state, pending, peer)
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
                    (GrantWork::Revoke { target, .. }, _, result) => {
                        self.revoke_ended(state, id, target, result)
                    }
                }
            }
            Done::Inspect { result, .. } => match waiting.as_ref().map(|waiting| &waiting.what) {
                Some(Waiting::Inspect { answer, failed, .. }) => match result {
                    Ok(inspected) => {
                        // Whether the target ever forked: what a controller
                        // that is not a subreaper may miss is then worth a
                        // note.
                        state.forked |= match &inspected {
                            Inspected::Tree(processes) => processes.len() > 1,
                            Inspected::Stacks(stacks) => stacks.len() > 1,
                            Inspected::Tasks(_) => false,
                        };
                        self.inspected(state, *answer, inspected)
                    }
                    Err(err) => Reply::Error(format!("{failed}: {err}")),
                },
                _ => Reply::Error("a read nobody waits for".into()),
            },
            Done::Agent {
                process, result, ..
            } => {
                let peer = waiting.as_ref().map(|waiting| waiting.incoming.peer());
                if let (Some(peer), Ok(session)) = (peer, &result) {
                    self.limit_agent_session(state, peer, process, session);
                }
                let (reply, session_fds) = self.attached(state, process, result);
                fds = session_fds;
                reply
            }
        };
        match waiting {
            Some(waiting) => {
                if let Ok(request) = waiting.incoming.request() {
                    self.audit_reply(state, &waiting.incoming.peer(), request, &reply, false);
                }
                waiting.incoming.reply_with_fds(reply, fds)
            }
            None => {
                if let Reply::Error(message) = reply {
                    debug!("work {id} that nobody waits for: {message}");
                }
            }
        }
    }

    /// A grant that completed after its client was told it failed could
    /// not be withdrawn: it is in force, and listed, until a revoke of it
    /// succeeds, unless a grant made on that process since replaced it.
    fn late_grant_stays(&mut self, state: &mut State, process: ProcessId, client: ProcessId) {
        let replaced = state.grants.is_pending(process)
            || state
                .grants
                .in_force()
                .any(|grant| grant.process == process);
        if replaced {
            return;
        }
        self.withdraw(
            state,
            GrantRecord {
                holder: client,
                process,
                // No connection holds it: its client was told it failed.
                connection: 0,
                expires: None,
            },
        );
    }

    /// A revoke ended: the grant it withdrew is no longer in force; one it
    /// failed to withdraw stays, and is tried again.
    fn revoke_ended(
        &mut self,
        state: &mut State,
        id: JobId,
        target: ProcessId,
        result: io::Result<()>,
    ) -> Reply {
        let ended = state.grants.revoke_ended(
            id,
            result.is_ok(),
            |process| !self.supervisor.is_running(process),
            Instant::now(),
        );
        match result {
            Ok(()) => {
                info!("revoked access to {}", self.named(state, target.pid));
                Reply::Ready
            }
            Err(err) => match ended {
                Some(revoking) if revoking.phase != RevokePhase::Running(id) => {
                    warn!(
                        "cannot revoke the grant of client PID {} on {}: {err}; trying again in {:?}",
                        revoking.record.holder.pid,
                        self.named(state, target.pid),
                        grants::retry_delay(revoking.failures)
                    );
                    Reply::Error(format!(
                        "Revoke failed: {err} (the grant stays in force; the controller tries again)"
                    ))
                }
                _ => Reply::Error(format!("Revoke failed: {err}")),
            },
        }
    }

    /// The reply to an attach through the agent in `process` that ended
    /// with `result`, and the file descriptors that go with it.
    fn attached(
        &self,
        state: &State,
        process: ProcessId,
        result: io::Result<AgentSession>,
    ) -> (Reply, Vec<OwnedFd>) {
        let named = self.named(state, process.pid);
        match result {
            Ok(session) => {
                info!("pdb scheduled in {named} through its agent");
                let reply = Reply::Agent {
                    pid: process.pid,
                    python: session.python,
                };
                (reply, session.fds)
            }
            Err(err) => {
                warn!("an attach through the agent in {named} failed: {err}");
                let reply = Reply::Error(format!("Attach through the agent failed: {err}"));
                (reply, Vec::new())
            }
        }
    }

    /// A session of pdb through the agent is over once the controller's
    /// longest grant is: its verified client's debuggers are then ended as
    /// those of a grant that ran out, and the agent in `process` ends the
    /// session from inside (whoever holds its sockets then).
    fn limit_agent_session(
        &self,
        state: &mut State,
        peer: Peer,
        process: ProcessId,
        session: &AgentSession,
    ) {
        let Some(most) = self.max_grant else { return };
        let expires = Instant::now() + most;
        info!(
            "session {} through the agent in PID {} lasts {} s",
            session.id,
            process.pid,
            most.as_secs()
        );
        state.limits.add_session(
            process,
            session.id,
            expires + self.graces.client,
            &session.earlier_on,
        );
        if let Some(client) = peer.process() {
            state.limits.add(Limit::new(
                client,
                peer.connection,
                expires,
                self.graces.client,
            ));
        }
    }

    /// The reply for what the inspector read: what only the controller
    /// knows added (the target, who holds a grant where).
    fn inspected(&self, state: &State, answer: Answer, inspected: Inspected) -> Reply {
        match (answer, inspected) {
            (Answer::Threads, Inspected::Stacks(stacks)) => {
                let threads = stacks.first().map_or(&[][..], |process| &process.threads);
                let mut text = threads_text(threads);
                if let Some(note) = stacks.first().and_then(ProcessStacks::via_note) {
                    text = format!("{note}\n{text}");
                }
                Reply::Stack(fit_reply(text))
            }
            (Answer::Ps, Inspected::Tree(mut processes)) => {
                let live = state.phase.is_live();
                for process in &mut processes {
                    process.target = live && process.pid == state.run.target;
                    // The holder of a grant on that very process (not on
                    // one whose pid it took).
                    process.holder = state
                        .grants
                        .in_force()
                        .filter(|grant| live && grant.process == process.id())
                        .find(|grant| self.supervisor.is_running(grant.holder))
                        .map(|grant| grant.holder.pid);
                }
                let mut tree = Tree::new(processes, self.subreaper);
                tree.forked = state.forked;
                Reply::Ps(fit_tree(tree))
            }
            (Answer::Text, Inspected::Stacks(stacks)) => {
                let text: Vec<String> = stacks.iter().map(ToString::to_string).collect();
                Reply::Stack(fit_reply(text.join("\n")))
            }
            (Answer::Json, Inspected::Stacks(stacks)) => Reply::Stacks(fit_stacks(stacks)),
            (Answer::Tasks, Inspected::Tasks(tasks)) => Reply::Tasks(fit_tasks(tasks)),
            (answer, inspected) => Reply::Error(format!(
                "the inspector's thread read {inspected:?} for {answer:?}"
            )),
        }
    }

    /// A grant is in force: record it, unless its target ended meanwhile.
    fn granted(&mut self, state: &mut State, pending: Pending, peer: Peer) -> Reply {
        let Pending {
            mut record,
            previous,
            lasts,
            verified,
            ..
        } = pending;
        if !(state.phase.is_live() && pending.run == state.run.number) {
            // Whatever was granted on a process of a former target's tree
            // does not stay.
            self.withdraw(state, record);
            return Reply::Error(format!(
                "Grant failed: target PID {} exited during the grant",
                pending.target
            ));
        }
        let on = self.named(state, record.process.pid);
        match previous {
            Some(old) if old.holder != record.holder => info!(
                "granted PID {} access to {on}, taking it over from PID {}",
                record.holder.pid, old.holder.pid
            ),
            _ => info!("granted PID {} access to {on}", record.holder.pid),
        }
        // Its time counts from now: its client, which counts from its
        // request, is up first.
        if let Some(lasts) = lasts {
            let expires = Instant::now() + lasts;
            record.expires = Some(expires);
            info!(
                "the grant of PID {} on {on} lasts {} s",
                record.holder.pid,
                lasts.as_secs()
            );
            if verified {
                state.limits.add(Limit::new(
                    record.holder,
                    record.connection,
                    expires,
                    self.graces.client,
                ));
            }
        }
        // The grant it replaces (taken over, or the same holder's again).
        let replaced: Vec<GrantRecord> = state
            .grants
            .in_force()
            .filter(|grant| grant.process == record.process)
            .copied()
            .collect();
        for old in replaced {
            if old.holder != record.holder {
                self.audit_grant_ended(&old, RevokeCause::TakenOver);
            }
        }
        self.audit.grant_started(&record, peer);
        state.grants.record(record);
        Reply::Ready
    }

    /// A grant made for a connection that closed meanwhile: it is not
    /// recorded, and is withdrawn, unless a grant being made on the same
    /// process after it replaces it (or a REVOKE queued after it withdraws
    /// it): the granter works in order.
    fn closed_during(&mut self, state: &mut State, pending: Pending) -> Reply {
        let process = pending.record.process;
        info!(
            "the connection of client PID {} closed during its grant on {}: withdrawing it",
            pending.record.holder.pid,
            self.named(state, process.pid)
        );
        // The grant it took over is no more either.
        for old in state.grants.take(|grant| grant.process == process) {
            self.audit_grant_ended(&old, RevokeCause::TakenOver);
        }
        if !state.grants.is_pending(process) {
            self.withdraw(state, pending.record);
        }
        Reply::Error("Grant failed: its connection closed".into())
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
            let granter = self.grants.busy();
            let inspector = self.stacks.busy();
            let agent = self.agents.busy();
            let id = waiting.id;
            let reply = match &waiting.what {
                Waiting::Grant { on } => {
                    let why = self.why_no_answer(state, id, *on, granter, "granter");
                    state.grants.take_pending(waiting.id);
                    warn!("a grant got no answer in time: {why}");
                    Reply::Error(format!("Grant failed: {why}"))
                }
                Waiting::Revoke { on } => {
                    let why = self.why_no_answer(state, id, *on, granter, "granter");
                    Reply::Error(format!(
                        "Revoke failed: {why} (the grant stays in force until a revoke succeeds; \
                         the controller goes on trying)"
                    ))
                }
                Waiting::Inspect { failed, on, .. } => {
                    let why = self.why_no_answer(state, id, *on, inspector, "inspector");
                    Reply::Error(format!("{failed}: {why}"))
                }
                Waiting::Agent { on } => {
                    let why = self.why_no_answer(state, id, *on, agent, "agent's thread");
                    Reply::Error(format!("Attach through the agent failed: {why}"))
                }
            };
            if let Ok(request) = waiting.incoming.request() {
                self.audit_reply(state, &waiting.incoming.peer(), request, &reply, false);
            }
            waiting.incoming.reply(reply);
        }
    }

    /// Why work `id` on `process` (the target, or a process of its tree)
    /// got no answer in time, as far as the supervisor can tell: the
    /// process the worker (`worker`, busy with `busy`) actually waited on
    /// is the one named.
    fn why_no_answer(
        &self,
        state: &State,
        id: JobId,
        process: Pid,
        busy: Option<(JobId, ProcessId)>,
        worker: &str,
    ) -> String {
        let name = |process| match self.role_of(state, process) {
            Some(Role::Target) => "the target".to_owned(),
            _ => format!("PID {process}"),
        };
        let condition = |process| {
            let name = name(process);
            match self.condition(process) {
                Some(Condition::Frozen) => format!("{name} is frozen (cgroup freezer)"),
                Some(Condition::DiskSleep) => {
                    format!("{name} is in uninterruptible sleep (state D)")
                }
                None => match self.supervisor.process(process) {
                    Ok(Some(info)) => format!("{name} is in state {}", info.state.code()),
                    Ok(None) => format!("{name} is gone"),
                    Err(err) => format!("{name}'s state cannot be read: {err}"),
                },
            }
        };
        match busy {
            Some((job, other)) if job != id => format!(
                "not started within its deadline: the {worker} is still busy with earlier \
                 work on {}: {}",
                name(other.pid),
                condition(other.pid)
            ),
            Some((_, on)) => format!("no answer within its deadline: {}", condition(on.pid)),
            None => format!("no answer within its deadline: {}", condition(process)),
        }
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
        // it was made meanwhile). One the worker has just made, whose
        // report is on its way, is marked: it is withdrawn when it comes.
        state.call_off(
            |waiting| {
                matches!(waiting.what, Waiting::Grant { .. })
                    && waiting.incoming.peer().connection == peer.connection
            },
            || Reply::Error("Grant failed: its connection closed".into()),
        );
        // Its profile stops at once.
        if state.profiles.remove(&peer.connection).is_some() {
            let mut record = self.audit.draft(AuditEvent::ProfileEnd, &peer);
            record.reason = Some("its connection closed".into());
            record.duration_ms = self.audit.profile_ended(peer.connection);
            self.audit.send(record);
        }
        state.grants.close(peer.connection);
        let closed = state
            .grants
            .take(|grant| grant.connection == peer.connection);
        for grant in closed {
            info!(
                "the connection of client PID {} closed: revoking its grant on {}",
                grant.holder.pid,
                self.named(state, grant.process.pid)
            );
            self.audit_grant_ended(&grant, RevokeCause::Disconnect);
            self.withdraw(state, grant);
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
        let agent = match self.supervisor.identity(state.run.target) {
            Ok(Some(target)) if state.phase.is_live() => self.agent.state(target),
            _ => AgentState::Absent("the target is not running".into()),
        };
        let attach = match (self.prefer_agent, agent.is_ready()) {
            (false, _) => "ptrace",
            (true, true) => "agent",
            (true, false) => "none",
        };
        extra.push(("agent".to_owned(), agent.word().to_owned()));
        extra.push(("attach".to_owned(), attach.to_owned()));
        if let Some(exit) = state.last_exit {
            extra.push(("last_exit".to_owned(), exit.shell_code().to_string()));
        }
        if state.phase.is_live() {
            if let Some(condition) = self.condition(state.run.target) {
                extra.push(("target_state".to_owned(), condition.name().to_owned()));
            }
        }
        if let Some(most) = self.max_grant {
            extra.push(("max_grant".to_owned(), most.as_secs().to_string()));
        }
        let now = Instant::now();
        let time_left: Vec<String> = state
            .grants
            .in_force()
            .filter(|grant| state.phase.is_live() && self.supervisor.is_running(grant.holder))
            .filter_map(|grant| {
                let left = grant.expires?.saturating_duration_since(now);
                Some(format!("{}:{}", grant.process.pid, whole_seconds(left)))
            })
            .collect();
        if !time_left.is_empty() {
            extra.push(("time_left".to_owned(), time_left.join(",")));
        }
        extra.extend(self.status_fields.iter().cloned());
        extra.extend(state.granter_fields.iter().cloned());
        extra.extend(self.audit.status_fields());
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
            .in_force()
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

    /// How `process` (the target, or any other) is doing when that holds
    /// up work on it: frozen, or in uninterruptible sleep.
    fn condition(&self, process: Pid) -> Option<Condition> {
        if self.supervisor.is_frozen(process).unwrap_or(false) {
            return Some(Condition::Frozen);
        }
        match self.supervisor.process(process) {
            Ok(Some(info)) if info.state == ProcessState::DiskSleep => Some(Condition::DiskSleep),
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

/// What holds up work on a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    /// A cgroup freezer holds it.
    Frozen,
    /// It is in uninterruptible sleep (state D).
    DiskSleep,
}

impl Condition {
    /// Its name in `STATUS` (`target_state=`).
    fn name(self) -> &'static str {
        match self {
            Condition::Frozen => "frozen",
            Condition::DiskSleep => "uninterruptible-sleep",
        }
    }
}

/// How messages name `process` of the tree, whose role is `role`:
/// `target 4242`, `PID 5001 (child of 4242)`, or `PID 5001` when its role
/// is not known.
/// What the profile of `peer`'s connection counted since the last
/// collection (stopped first if `stop`); the profile is forgotten once
/// its last batch is collected.
fn collect(state: &mut State, peer: Peer, stop: bool) -> Result<Samples, Refusal> {
    let Some(sampling) = state.profiles.get_mut(&peer.connection) else {
        return Err("no profile runs on this connection (PROFILE starts one)".into());
    };
    if stop {
        sampling.stop("stopped by the client");
    }
    let samples = sampling.collect();
    if samples.ended.is_some() {
        state.profiles.remove(&peer.connection);
    }
    Ok(samples)
}

fn named(process: Pid, role: Option<Role>) -> String {
    match role {
        Some(Role::Target) => format!("target {process}"),
        Some(role) => format!("PID {process} ({role})"),
        None => format!("PID {process}"),
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

/// The controller's status line for the service manager: the target's
/// pid and state, the restarts, and who holds which grant (the target's
/// first), from what the loop knows, without asking the system.
fn service_status(state: &State, restarts: u32) -> String {
    let target = state.run.target;
    let ended = |status: Option<ExitStatus>| match status {
        Some(status) => format!("ended ({status})"),
        None => "ended".to_owned(),
    };
    let phase = match state.phase {
        Phase::Running => "running".to_owned(),
        Phase::Stopping(_) => "stopping".to_owned(),
        Phase::Restarting { .. } => format!("{}, restarting", ended(state.last_exit)),
        Phase::Ended(_) => ended(state.last_exit),
    };
    let mut grants: Vec<&GrantRecord> = state.grants.in_force().collect();
    grants.sort_by_key(|grant| (grant.process.pid != target, grant.process.pid));
    let grants = if grants.is_empty() {
        "none".to_owned()
    } else {
        grants
            .iter()
            .map(|grant| format!("client {} on PID {}", grant.holder.pid, grant.process.pid))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("target PID {target} {phase}; restarts: {restarts}; grants: {grants}")
}

pub(crate) fn not_running() -> Reply {
    Reply::Error("Target process not running".into())
}

/// How long a command line may stay in a reply that would not fit whole.
const COMMAND_ROOM: usize = 4096;

/// Cuts `command` to [`COMMAND_ROOM`] bytes, saying so at its end.
fn cut_command(command: &mut String) {
    if command.len() <= COMMAND_ROOM {
        return;
    }
    let total = command.len();
    let mut end = COMMAND_ROOM;
    while !command.is_char_boundary(end) {
        end -= 1;
    }
    command.truncate(end);
    command.push_str(&format!("... (cut: the command line is {total} bytes)"));
}

/// The room a `PS` or `STACKS` reply's JSON has in a reply line
/// ([`MAX_REPLY`]), its word and newline counted (JSON strings escape every
/// newline: nothing doubles).
const JSON_ROOM: usize = MAX_REPLY - 100;

/// Cuts a `PS` reply that would not fit in a reply line ([`MAX_REPLY`]):
/// first long command lines, each saying so; then the last processes are
/// left out, [`Tree::cut`] saying how many.
pub(crate) fn fit_tree(mut tree: Tree) -> Tree {
    const ROOM: usize = JSON_ROOM;
    let size = |tree: &Tree| serde_json::to_string(tree).map_or(usize::MAX, |json| json.len());
    let mut total = size(&tree);
    if total <= ROOM {
        return tree;
    }
    for process in &mut tree.processes {
        cut_command(&mut process.command);
    }
    total = size(&tree);
    if total <= ROOM {
        return tree;
    }
    let listed = tree.processes.len();
    // Room for the note, then the processes that fit.
    tree.cut = Some(format!(
        "{listed} processes left out to fit a reply of {MAX_REPLY} bytes"
    ));
    total = size(&tree);
    while total > ROOM {
        let Some(last) = tree.processes.pop() else {
            break;
        };
        // Its JSON and the comma before it.
        total -= serde_json::to_string(&last).map_or(0, |json| json.len()) + 1;
    }
    let left_out = listed - tree.processes.len();
    tree.cut = Some(format!(
        "{left_out} processes left out to fit a reply of {MAX_REPLY} bytes"
    ));
    tree
}

/// Cuts a `STACKS` reply that would not fit in a reply line
/// ([`MAX_REPLY`]): first long command lines, each saying so; then the
/// oldest frames of every thread go (the newest
/// stay, as many in each thread as fit), each thread saying so; if even
/// one frame per thread does not fit, the last processes' threads are left
/// out, each process saying so, until it fits.
pub(crate) fn fit_stacks(stacks: Vec<ProcessStacks>) -> Vec<ProcessStacks> {
    const ROOM: usize = JSON_ROOM;
    let size = |stacks: &[ProcessStacks]| {
        serde_json::to_string(stacks).map_or(usize::MAX, |json| json.len())
    };
    if size(&stacks) <= ROOM {
        return stacks;
    }
    let mut stacks = stacks;
    for process in &mut stacks {
        cut_command(&mut process.command);
    }
    if size(&stacks) <= ROOM {
        return stacks;
    }
    let deepest = stacks
        .iter()
        .flat_map(|process| &process.threads)
        .map(|thread| thread.frames.len())
        .max()
        .unwrap_or(0);
    // The most frames per thread that fit: keeping `deepest` does not.
    let (mut fits, mut too_many) = (1, deepest.max(1));
    let mut kept = newest_frames(&stacks, fits);
    if size(&kept) <= ROOM {
        while too_many - fits > 1 {
            let middle = fits + (too_many - fits) / 2;
            let candidate = newest_frames(&stacks, middle);
            if size(&candidate) <= ROOM {
                (fits, kept) = (middle, candidate);
            } else {
                too_many = middle;
            }
        }
        return kept;
    }
    let mut total = size(&kept);
    for process in kept.iter_mut().rev() {
        if total <= ROOM {
            break;
        }
        if process.threads.is_empty() {
            continue;
        }
        let before = size(std::slice::from_ref(process));
        process.threads.clear();
        process.skipped = Some(format!(
            "cut: the stacks of every process would not fit in a reply of {MAX_REPLY} bytes"
        ));
        total = total - before + size(std::slice::from_ref(process));
    }
    kept
}

/// Cuts a `TASKS` reply that would not fit in a reply line
/// ([`MAX_REPLY`]): the last tasks are left out until it fits, its
/// [`note`](AsyncTasks::note) saying how many.
pub(crate) fn fit_tasks(mut tasks: AsyncTasks) -> AsyncTasks {
    const ROOM: usize = JSON_ROOM - 200;
    let size =
        |value: &AsyncTasks| serde_json::to_string(value).map_or(usize::MAX, |json| json.len());
    let mut total = size(&tasks);
    if total <= ROOM {
        return tasks;
    }
    let listed = tasks.tasks.len();
    while total > ROOM {
        let Some(last) = tasks.tasks.pop() else {
            break;
        };
        // Its JSON and the comma before it.
        total -= serde_json::to_string(&last).map_or(0, |json| json.len()) + 1;
    }
    let cut = format!(
        "cut: {} of {listed} tasks left out to fit a reply of {MAX_REPLY} bytes",
        listed - tasks.tasks.len()
    );
    tasks.note = Some(match tasks.note.take() {
        Some(note) => format!("{note}; {cut}"),
        None => cut,
    });
    tasks
}

/// `stacks` with at most the `keep` newest frames of each thread, each
/// thread cut saying how many of its oldest frames were left out.
fn newest_frames(stacks: &[ProcessStacks], keep: usize) -> Vec<ProcessStacks> {
    let mut stacks = stacks.to_vec();
    for thread in stacks.iter_mut().flat_map(|process| &mut process.threads) {
        let cut = thread.frames.len().saturating_sub(keep);
        if cut == 0 {
            continue;
        }
        thread.frames.drain(..cut);
        let note = format!("its {cut} oldest frames left out to fit a reply of {MAX_REPLY} bytes");
        thread.incomplete = Some(match thread.incomplete.take() {
            Some(why) => format!("{why}; {note}"),
            None => note,
        });
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
    /// Whether a read of the tree ever saw more than the target (`PS`
    /// says so: a controller that is not a subreaper may miss processes
    /// of it).
    forked: bool,
    /// The profiles running (or ended and not collected yet), by
    /// connection.
    profiles: HashMap<u64, Sampling>,
    /// Until when the loop waits for the profiles' last collection once
    /// the controller is done.
    linger: Option<Instant>,
    /// The time limits of verified clients' sessions.
    limits: Limits,
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
    /// An attach through the agent in process `on`.
    Agent { on: Pid },
}

/// How the loop serves a request.
enum Served {
    /// With this reply, at once.
    Now(Reply),
    /// Once this work is done.
    Later(Work),
}

/// The reply a read of the inspector's becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `STACK`: the target's threads as text, as ever.
    Threads,
    /// `STACK <pid>|ALL`: each process under its header, as text.
    Text,
    /// `STACKS`.
    Json,
    /// `PS`.
    Ps,
    /// `TASKS`.
    Tasks,
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
            forked: false,
            profiles: HashMap::new(),
            linger: None,
            limits: Limits::default(),
        }
    }

    /// Whether the loop, its target ended for good, still waits for
    /// clients to collect the last batch of their profiles (stopped then),
    /// for [`PROFILE_LINGER`] at most.
    fn lingers(&mut self) -> bool {
        if !matches!(self.phase, Phase::Ended(_)) || self.profiles.is_empty() {
            return false;
        }
        let now = Instant::now();
        match self.linger {
            Some(until) => now < until,
            None => {
                let why = match self.last_exit {
                    Some(status) => format!(
                        "target PID {} ended ({status}): the controller stops",
                        self.run.target
                    ),
                    None => "the controller stops".to_owned(),
                };
                for sampling in self.profiles.values_mut() {
                    sampling.stop(&why);
                }
                self.linger = Some(now + PROFILE_LINGER);
                true
            }
        }
    }

    /// Logs (within the log's limit) that `asked` from `peer` was
    /// refused, and gives the refusal back.
    fn refused(&mut self, peer: &Peer, asked: Request, refusal: String) -> String {
        self.warn_about(
            peer,
            format_args!("refused {asked} from {peer:?}: {refusal}"),
        );
        refusal
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
