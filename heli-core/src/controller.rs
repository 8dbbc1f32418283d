//! The controller: one event loop over requests, the target's exit and
//! signals.

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, bounded, never, select, Receiver, Sender};
use log::{debug, info, warn};

use crate::authorize::{self, GrantRecord};
use crate::granter::Granter;
use crate::inspector::{Inspector, NoInspector};
use crate::process::Pid;
use crate::protocol::{Reply, Request, Status, MAX_REPLY};
use crate::restart::RestartPolicy;
use crate::signals::{self, Caught, SignalThread, STOP_SIGNALS, SUSPEND_SIGNALS};
use crate::supervisor::{Exit, ExitStatus, Supervisor};
use crate::transport::{Event, Incoming, Listener, Peer, Stopper, Transport};

/// Supervises a target and answers clients: the heart of heli.
///
/// It composes a [`Transport`] (how clients reach it), a [`Granter`] (how a
/// client gets ptrace rights), a [`Supervisor`] (how the target runs) and,
/// optionally, an [`Inspector`] (how to read the target's stacks), all
/// chosen statically. [`run`](Controller::run) spawns the target and serves
/// until the target has ended, then returns its [`ExitStatus`].
///
/// The event loop is a single `select!` over the listener's requests, the
/// target's exit, forwarded signals, a shutdown handle and the timers of
/// its [phase](Phase). Requests are answered in the order they arrive.
///
/// # Authorization
///
/// The controller decides who may be granted what, by one policy for every
/// transport, from what the transport verified about each request's
/// [`Peer`] and what the supervisor's [`Processes`] table says:
///
/// - `GRANT_ACCESS <pid>` from an authenticated peer (a Unix socket's)
///   names the peer itself or one of its descendants, checked with start
///   times so a reused pid does not pass; from a transport that cannot
///   authenticate (named pipes), any process. A thread stands for its
///   process.
/// - One client holds the grant at a time (Yama keeps one ptracer per
///   target): another is refused unless it asks to take it over (`FORCE`).
/// - The grant ends with the connection that asked for it, with its
///   holder's exit, or with the target's.
/// - `REVOKE <pid>` withdraws it only when `<pid>` holds it.
///
/// # Examples
///
/// ```no_run
/// # fn demo<T: heli_core::Transport, G: heli_core::Granter, S: heli_core::Supervisor>(
/// #     transport: T, granter: G, supervisor: S) -> std::io::Result<()> {
/// use heli_core::Controller;
/// use std::time::Duration;
///
/// let status = Controller::new(transport, granter, supervisor)
///     .grace(Duration::from_secs(5))
///     .handle_signals(true)
///     .run()?;
/// std::process::exit(status.shell_code());
/// # }
/// ```
#[derive(Debug)]
pub struct Controller<T, G, S, I = NoInspector> {
    transport: T,
    granter: G,
    supervisor: S,
    inspector: I,
    grace: Duration,
    signals: Signals,
    restart: RestartPolicy,
    status_fields: Vec<(String, String)>,
    shutdown: (Sender<()>, Receiver<()>),
}

/// Where the controller's signals come from.
#[derive(Debug)]
enum Signals {
    /// It catches none.
    Ignored,
    /// It catches them itself (see [`Controller::handle_signals`]).
    Caught,
    /// A test hands them over, and records the controller's suspensions.
    #[cfg(test)]
    Fake(Receiver<Caught>, Sender<()>),
}

/// Asks a running [`Controller`] to stop its target and return.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Sender<()>);

impl ShutdownHandle {
    /// Stops the controller as `TERMINATE` would. Returns at once.
    pub fn shutdown(&self) {
        let _ = self.0.try_send(());
    }
}

impl<T: Transport, G: Granter, S: Supervisor> Controller<T, G, S> {
    /// A controller that will serve on `transport`, grant with `granter` and
    /// run the target with `supervisor`; it cannot read its target's stacks
    /// until given an [`inspector`](Controller::inspector).
    pub fn new(transport: T, granter: G, supervisor: S) -> Self {
        Controller {
            transport,
            granter,
            supervisor,
            inspector: NoInspector,
            grace: signals::DEFAULT_GRACE,
            signals: Signals::Ignored,
            restart: RestartPolicy::default(),
            status_fields: Vec::new(),
            shutdown: bounded(1),
        }
    }
}

impl<T: Transport, G: Granter, S: Supervisor, I: Inspector> Controller<T, G, S, I> {
    /// Reads the target's stacks (`STACK`) with `inspector`.
    pub fn inspector<J: Inspector>(self, inspector: J) -> Controller<T, G, S, J> {
        Controller {
            transport: self.transport,
            granter: self.granter,
            supervisor: self.supervisor,
            inspector,
            grace: self.grace,
            signals: self.signals,
            restart: self.restart,
            status_fields: self.status_fields,
            shutdown: self.shutdown,
        }
    }

    /// How long the target may take to end after being asked before it is
    /// killed (default 2 s).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Whether to catch [`STOP_SIGNALS`], [`PASS_SIGNALS`] and
    /// [`SUSPEND_SIGNALS`] and pass them to the target (default: no; a
    /// program's `main` wants yes).
    ///
    /// A stop signal also stops the controller: the target is killed if it
    /// still runs after the grace period. A signal the terminal sent to the
    /// whole foreground process group (Ctrl-C, Ctrl-\, hang-up) reached the
    /// target already and is not sent twice.
    ///
    /// [`PASS_SIGNALS`]: crate::PASS_SIGNALS
    pub fn handle_signals(mut self, yes: bool) -> Self {
        self.signals = if yes {
            Signals::Caught
        } else {
            Signals::Ignored
        };
        self
    }

    /// Hands the controller its signals through `signals` instead of
    /// catching them, and reports every suspension on `suspended` instead
    /// of stopping the process.
    #[cfg(test)]
    pub(crate) fn fake_signals(mut self, signals: Receiver<Caught>, suspended: Sender<()>) -> Self {
        self.signals = Signals::Fake(signals, suspended);
        self
    }

    /// When to start the target again after it ended on its own (default:
    /// never). A new target is a new process: no grant carries over.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// Adds a `key=value` fact to every `STATUS` reply (for instance the
    /// kernel's `ptrace_scope`, which this crate cannot read itself).
    pub fn status_field(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.status_fields.push((key.into(), value.into()));
        self
    }

    /// A handle to stop the controller from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.0.clone())
    }

    /// Listens, spawns the target, serves until the target has ended, cleans
    /// up, and returns how the target ended.
    ///
    /// # Parent-death signal
    ///
    /// Call it from a thread that outlives the target (it does, as `run`
    /// returns only after the target ended): a supervisor that asks the
    /// kernel to kill the target when its parent dies ties that to the thread
    /// that spawned it.
    ///
    /// # Errors
    ///
    /// When listening, spawning, or catching signals fails; the target is
    /// not left running.
    pub fn run(mut self) -> io::Result<ExitStatus> {
        let mut listener = self.transport.listen()?;
        info!("listening on {}", self.transport.describe());
        let caught = match self.signals {
            Signals::Caught => Some(SignalThread::start()?),
            _ => None,
        };
        let signal_rx = match (&caught, &self.signals) {
            (Some(thread), _) => thread.rx.clone(),
            #[cfg(test)]
            (None, Signals::Fake(rx, _)) => rx.clone(),
            _ => never(),
        };
        let exits = self.supervisor.exits();
        let target = self.supervisor.spawn()?;
        info!(
            "target started with PID {target}; granter: {}",
            self.granter.name()
        );

        let stopper = listener.stopper();
        let (events_tx, events) = bounded(64);
        let serving = thread::Builder::new()
            .name("heli-listener".into())
            .spawn(move || {
                let result = listener.serve(&events_tx);
                (listener, result)
            })?;

        let mut state = State {
            run: Run::new(target),
            phase: Phase::Running,
            last_exit: None,
            grant: None,
        };
        let mut listening = true;
        let status = loop {
            if let Phase::Ended(result) = &mut state.phase {
                break std::mem::replace(result, Ok(ExitStatus::Code(0)));
            }
            let timer = |at: Option<Instant>| match at {
                Some(at) => after(at.saturating_duration_since(Instant::now())),
                None => never(),
            };
            let kill_timer = timer(state.phase.kill_at());
            let respawn_timer = timer(state.phase.respawn_at());
            // Once the listener has stopped, its closed channel would be
            // ready on every turn: stop watching it.
            let requests = if listening { events.clone() } else { never() };
            select! {
                recv(exits) -> exit => match exit {
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
                recv(signal_rx) -> caught => {
                    if let Ok(caught) = caught {
                        self.on_signal(&mut state, caught);
                    }
                }
                recv(self.shutdown.1) -> _ => self.begin_stop(&mut state, None),
                recv(kill_timer) -> _ => {
                    warn!("target still running {:?} after being asked to stop: killing it", self.grace);
                    if let Err(err) = self.supervisor.kill() {
                        warn!("cannot kill the target: {err}");
                    }
                    if let Phase::Stopping { kill_at } = &mut state.phase {
                        *kill_at = None;
                    }
                }
            }
        };

        stopper.stop();
        // Answer whatever is queued, and whatever the listener sends until it
        // has stopped, so no client waits on a reply that never comes.
        for event in events.iter() {
            if let Event::Request(incoming) = event {
                incoming.reply(not_running());
            }
        }
        match serving.join() {
            Ok((listener, result)) => {
                drop(listener);
                if let Err(err) = result {
                    warn!("listener failed: {err}");
                }
            }
            Err(_) => warn!("listener thread panicked"),
        }
        drop(caught);
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
        if let Some(grant) = state.grant.take() {
            if let Err(err) = self.granter.revoke(grant.target) {
                debug!("withdrawing the grant on the ended target: {err}");
            }
        }
        if let Phase::Stopping { .. } = state.phase {
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
                warn!("bad request from {peer:?}: {err}");
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
                Phase::Running | Phase::Stopping { .. } => {
                    let target = state.run.target;
                    match request {
                        Request::GetTargetPid => Reply::TargetPid(target),
                        Request::Stack => match self.inspector.stack_dump(target) {
                            Ok(text) => Reply::Stack(fit_reply(text)),
                            Err(err) => {
                                Reply::Error(format!("Cannot read the target's stacks: {err}"))
                            }
                        },
                        Request::GrantAccess(client) | Request::TakeOver(client) => {
                            let force = matches!(request, Request::TakeOver(_));
                            self.grant(state, peer, client, force)
                        }
                        Request::Revoke(named) => {
                            let holder = self.holder(state);
                            match authorize::may_revoke(holder.as_ref(), named) {
                                Ok(()) => self.revoke(state),
                                Err(refusal) => Reply::Error(refusal),
                            }
                        }
                        _ => not_running(),
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

    /// Grants the process `requested` names access, unless the policy
    /// refuses it, or another client holds the grant and `force` is not set
    /// (Yama keeps one ptracer per target).
    fn grant(&mut self, state: &mut State, peer: Peer, requested: Pid, force: bool) -> Reply {
        if !matches!(state.phase, Phase::Running) {
            return Reply::Error("The controller is shutting down".into());
        }
        let target = state.run.target;
        let client = match authorize::grantee(&peer, requested, &self.supervisor) {
            Ok(client) => client,
            Err(refusal) => {
                warn!("refused GRANT_ACCESS {requested} from {peer:?}: {refusal}");
                return Reply::Error(refusal);
            }
        };
        // Another client's grant, if one is in force.
        let other = self.holder(state).filter(|grant| grant.holder != client);
        if let Some(holder) = other.filter(|_| !force) {
            return Reply::Error(format!(
                "target is being debugged by client PID {} (attach --force takes it over)",
                holder.holder.pid
            ));
        }
        let target_id = match self.supervisor.identity(target) {
            Ok(Some(id)) => id,
            Ok(None) => {
                return Reply::Error(format!("Grant failed: target PID {target} is not running"))
            }
            Err(err) => return Reply::Error(format!("Grant failed: {err}")),
        };
        match self.granter.grant(target_id, client) {
            Ok(()) => {
                match other {
                    Some(old) => info!(
                        "granted PID {} access to target {target}, taking it over from PID {}",
                        client.pid, old.holder.pid
                    ),
                    None => info!("granted PID {} access to target {target}", client.pid),
                }
                state.grant = Some(GrantRecord {
                    holder: client,
                    target: target_id,
                    connection: peer.connection,
                });
                Reply::Ready
            }
            Err(err) => {
                warn!("grant for PID {} failed: {err}", client.pid);
                Reply::Error(format!("Grant failed: {err}"))
            }
        }
    }

    fn revoke(&mut self, state: &mut State) -> Reply {
        let target = state.run.target;
        let recorded = state.grant.take().map(|grant| grant.target);
        let target_id = match recorded {
            Some(id) => Some(id),
            None => self.supervisor.identity(target).ok().flatten(),
        };
        let Some(target_id) = target_id else {
            // Nothing runs there any more: nothing to withdraw.
            return Reply::Ready;
        };
        match self.granter.revoke(target_id) {
            Ok(()) => {
                info!("revoked access to target {target}");
                Reply::Ready
            }
            Err(err) => Reply::Error(format!("Revoke failed: {err}")),
        }
    }

    /// A connection closed: the grant it asked for, if still in force,
    /// goes with it.
    fn disconnected(&mut self, state: &mut State, peer: Peer) {
        debug!("client {peer:?} disconnected");
        // Connectionless transports (named pipes) tie no grant to a peer.
        let Some(grant) = state
            .grant
            .filter(|grant| grant.connection == peer.connection && peer.connection != 0)
        else {
            return;
        };
        info!(
            "the connection of client PID {} closed: revoking its grant",
            grant.holder.pid
        );
        if let Reply::Error(message) = self.revoke(state) {
            warn!("{message}");
        }
    }

    fn status(&self, state: &State) -> Status {
        let clients = if self.transport.authenticates() {
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
        extra.extend(self.status_fields.iter().cloned());
        extra.extend(self.granter.status_fields());
        let state_name = match state.phase {
            Phase::Running => "running",
            Phase::Stopping { .. } => "stopping",
            Phase::Restarting { .. } => "restarting",
            Phase::Ended(_) => "ended",
        };
        Status {
            pid: state.run.target,
            state: state_name.to_owned(),
            uptime_secs: state.run.started.elapsed().as_secs(),
            granter: self.granter.name().to_owned(),
            holder: self
                .holder(state)
                .filter(|_| state.phase.is_live())
                .map(|grant| grant.holder.pid),
            extra,
            command: self.supervisor.describe(),
        }
    }

    /// Asks the target to end, with `signal` if given, else with the
    /// supervisor's polite stop, and arms the kill timer.
    fn begin_stop(&mut self, state: &mut State, signal: Option<i32>) {
        match state.phase {
            Phase::Running | Phase::Stopping { .. } => {}
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
            state.phase = Phase::Stopping {
                kill_at: Some(Instant::now() + self.grace),
            };
        }
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
        #[cfg(test)]
        if let Signals::Fake(_, suspended) = &self.signals {
            let _ = suspended.send(());
            return Ok(());
        }
        signals::stop_self()
    }
}

/// Cuts a stack dump that would not fit in a reply line ([`MAX_REPLY`];
/// escaping at most doubles its size), saying so at its end.
fn fit_reply(mut text: String) -> String {
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

fn not_running() -> Reply {
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
    /// The target was asked to end; it is killed at `kill_at`, or was
    /// killed already (`None`) and its exit is awaited.
    Stopping { kill_at: Option<Instant> },
    /// The last target ended on its own; a new one starts `at`.
    Restarting { at: Instant },
    /// The controller is done: `run` returns this.
    Ended(io::Result<ExitStatus>),
}

impl Phase {
    /// Whether a target runs (it may be stopping).
    fn is_live(&self) -> bool {
        matches!(self, Phase::Running | Phase::Stopping { .. })
    }

    fn kill_at(&self) -> Option<Instant> {
        match self {
            Phase::Stopping { kill_at } => *kill_at,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Dialect, LineBuffer};

    fn round_trip(text: &str) -> String {
        let line = Reply::Stack(text.to_owned()).encode(Dialect::Upper);
        let mut lines = LineBuffer::for_replies();
        lines.extend(line.as_bytes());
        let back = lines.next_line().unwrap().unwrap();
        match Reply::parse(std::str::from_utf8(&back).unwrap()).unwrap() {
            Reply::Stack(text) => text,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_stack_dump_too_long_for_a_reply_is_cut_and_says_so() {
        let short = "Thread 1\n  File \"a.py\", line 1\n".to_owned();
        assert_eq!(fit_reply(short.clone()), short);
        // Backslashes and newlines double in size when escaped: the worst.
        let huge = "\\\n\u{e9}".repeat(MAX_REPLY / 2);
        let cut = fit_reply(huge);
        assert!(
            cut.ends_with("a reply holds 2097052)"),
            "{}",
            &cut[cut.len() - 80..]
        );
        assert_eq!(round_trip(&cut), cut);
    }

    #[test]
    fn a_cut_steps_back_to_a_character_boundary() {
        const ROOM: usize = MAX_REPLY / 2 - 100;
        // A 4-byte character straddles the cut: one byte before it, three
        // after. The cut keeps the bytes before the character, whole.
        let text = format!("{}\u{1F980}{}", "a".repeat(ROOM - 1), "b".repeat(10));
        let cut = fit_reply(text);
        let (kept, note) = cut.split_once('\n').unwrap();
        assert_eq!(kept, "a".repeat(ROOM - 1));
        assert_eq!(
            note,
            format!(
                "... (cut: the whole dump is {} bytes, a reply holds {ROOM})",
                ROOM + 13
            )
        );
        // Exactly at the limit, nothing is cut.
        let full = "é".repeat(ROOM / 2);
        assert_eq!(fit_reply(full.clone()), full);
    }
}
