//! The controller: one event loop over requests, the target's exit and
//! signals.

use std::io;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{after, bounded, never, select, Receiver, Sender};
use log::{debug, info, warn};
use signal_hook::consts::signal::{
    SIGALRM, SIGCONT, SIGHUP, SIGINT, SIGPROF, SIGQUIT, SIGSTOP, SIGTERM, SIGTSTP, SIGURG, SIGUSR1,
    SIGUSR2, SIGVTALRM, SIGWINCH,
};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::{Cause, Origin};

use crate::granter::Granter;
use crate::protocol::{Reply, Request, Status, MAX_REPLY};
use crate::restart::RestartPolicy;
use crate::supervisor::{ExitStatus, Supervisor};
use crate::transport::{Event, Incoming, Listener, Peer, Stopper, Transport};

/// Signals that end the controller: they are passed to the target, which is
/// killed if it still runs after the grace period.
pub const STOP_SIGNALS: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

/// Signals only passed on to the target. Not SIGCHLD, not SIGTTIN and
/// SIGTTOU (which concern the controller's own use of the terminal), and not
/// the synchronous ones (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP,
/// SIGSYS), which concern the controller itself.
pub const PASS_SIGNALS: [i32; 8] = [
    SIGUSR1, SIGUSR2, SIGWINCH, SIGALRM, SIGCONT, SIGURG, SIGPROF, SIGVTALRM,
];

/// Signals that suspend the controller with its target, as under dumb-init:
/// the target gets the signal, then the controller stops itself (SIGSTOP),
/// so a shell sees its job stopped; SIGCONT (in [`PASS_SIGNALS`]) continues
/// both.
pub const SUSPEND_SIGNALS: [i32; 1] = [SIGTSTP];

/// Default time a target gets to end after SIGTERM before SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Supervises a target and answers clients: the heart of heli.
///
/// It composes a [`Transport`] (how clients reach it), a [`Granter`] (how a
/// client gets ptrace rights) and a [`Supervisor`] (how the target runs), all
/// chosen statically. [`run`](Controller::run) spawns the target and serves
/// until the target has ended, then returns its [`ExitStatus`].
///
/// The event loop is a single `select!` over the listener's requests, the
/// target's exit, forwarded signals, a shutdown handle and the kill timer.
/// Requests are answered in the order they arrive.
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
pub struct Controller<T, G, S> {
    transport: T,
    granter: G,
    supervisor: S,
    grace: Duration,
    handle_signals: bool,
    restart: RestartPolicy,
    status_fields: Vec<(String, String)>,
    shutdown: (Sender<()>, Receiver<()>),
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
    /// run the target with `supervisor`.
    pub fn new(transport: T, granter: G, supervisor: S) -> Self {
        Controller {
            transport,
            granter,
            supervisor,
            grace: DEFAULT_GRACE,
            handle_signals: false,
            restart: RestartPolicy::default(),
            status_fields: Vec::new(),
            shutdown: bounded(1),
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
    pub fn handle_signals(mut self, yes: bool) -> Self {
        self.handle_signals = yes;
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
        let signals = if self.handle_signals {
            Some(SignalThread::start()?)
        } else {
            None
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
            target,
            running: true,
            started: Instant::now(),
            kill_at: None,
            respawn_at: None,
            last_exit: None,
            grant: None,
        };
        let signal_rx = signals.as_ref().map(|s| s.rx.clone()).unwrap_or_else(never);
        let mut listening = true;
        let status = loop {
            if !state.running && state.respawn_at.is_none() {
                // Asked to stop while waiting to restart.
                break Ok(state.last_exit.unwrap_or(ExitStatus::Code(0)));
            }
            let timer = |at: Option<Instant>| match at {
                Some(at) => after(at.saturating_duration_since(Instant::now())),
                None => never(),
            };
            let kill_timer = timer(state.kill_at.filter(|_| state.running));
            let respawn_timer = timer(state.respawn_at);
            // Once the listener has stopped, its closed channel would be
            // ready on every turn: stop watching it.
            let requests = if listening { events.clone() } else { never() };
            select! {
                recv(exits) -> exit => {
                    let Ok(exit) = exit else {
                        warn!("supervisor lost its target; killing it");
                        let _ = self.supervisor.kill();
                        break Err(io::Error::other("supervisor lost its target"));
                    };
                    if exit.pid == state.target && state.running {
                        state.running = false;
                        state.last_exit = Some(exit.status);
                        state.grant = None;
                        // The granter may still remember a grant on this
                        // pid: a later process must not inherit it.
                        if self.granter.holder_pid(exit.pid).is_some() {
                            let _ = self.granter.revoke(exit.pid);
                        }
                        if state.kill_at.is_some() {
                            info!("target process {} ended ({})", exit.pid, exit.status);
                            break Ok(exit.status);
                        }
                        warn!("target process {} ended on its own ({})", exit.pid, exit.status);
                        match self.restart.next_delay(exit.status, state.started.elapsed()) {
                            Some(delay) => {
                                info!("restarting the target in {delay:?} (restart {})", self.restart.restarts());
                                state.respawn_at = Some(Instant::now() + delay);
                            }
                            None => break Ok(exit.status),
                        }
                    }
                }
                recv(respawn_timer) -> _ => {
                    state.respawn_at = None;
                    match self.supervisor.spawn() {
                        Ok(pid) => {
                            info!("target restarted with PID {pid}");
                            state.target = pid;
                            state.running = true;
                            state.started = Instant::now();
                        }
                        Err(err) => {
                            warn!("cannot restart the target: {err}");
                            match self.restart.next_delay(ExitStatus::Code(127), Duration::ZERO) {
                                Some(delay) => state.respawn_at = Some(Instant::now() + delay),
                                None => break Err(err),
                            }
                        }
                    }
                }
                recv(requests) -> event => match event {
                    Ok(Event::Request(incoming)) => self.answer(&mut state, incoming),
                    Ok(Event::Disconnected(peer)) => self.disconnected(&mut state, peer),
                    Err(_) => {
                        warn!("listener stopped; stopping the target");
                        listening = false;
                        self.begin_stop(&mut state, None);
                    }
                },
                recv(signal_rx) -> origin => {
                    if let Ok(origin) = origin {
                        self.on_signal(&mut state, &origin);
                    }
                }
                recv(self.shutdown.1) -> _ => self.begin_stop(&mut state, None),
                recv(kill_timer) -> _ => {
                    warn!("target still running {:?} after being asked to stop: killing it", self.grace);
                    if let Err(err) = self.supervisor.kill() {
                        warn!("cannot kill the target: {err}");
                    }
                    state.kill_at = Some(Instant::now() + Duration::from_secs(3600));
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
        drop(signals);
        status
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
            // Between a target's end and its restart there is nobody to
            // grant access to.
            _ if !state.running => match state.respawn_at {
                Some(at) => Reply::Error(format!(
                    "Target process not running (restarting in {} ms)",
                    at.saturating_duration_since(Instant::now()).as_millis()
                )),
                None => not_running(),
            },
            Request::GetTargetPid => Reply::TargetPid(state.target),
            Request::Stack => match self.supervisor.stack_dump() {
                Ok(text) => Reply::Stack(fit_reply(text)),
                Err(err) => Reply::Error(format!("Cannot read the target's stacks: {err}")),
            },
            Request::GrantAccess(client) | Request::TakeOver(client) => {
                let force = matches!(request, Request::TakeOver(_));
                self.grant(state, peer, client, force)
            }
            Request::Revoke(Some(client)) => match self.granter.holder_pid(state.target) {
                Some(holder) if holder != client => Reply::Error(format!(
                    "The grant is held by client PID {holder}, not PID {client}: nothing revoked"
                )),
                _ => self.revoke(state),
            },
            Request::Revoke(None) => self.revoke(state),
        };
        incoming.reply(reply);
    }

    /// Grants `client` access, unless another client holds the grant and
    /// `force` is not set (Yama keeps one ptracer per target).
    fn grant(&mut self, state: &mut State, peer: Peer, client: u32, force: bool) -> Reply {
        if state.kill_at.is_some() {
            return Reply::Error("The controller is shutting down".into());
        }
        let previous = self.granter.holder_pid(state.target);
        if let Some(holder) = previous.filter(|&holder| holder != client && !force) {
            return Reply::Error(format!(
                "target is being debugged by client PID {holder} (attach --force takes it over)"
            ));
        }
        match self.granter.grant(state.target, client) {
            Ok(()) => {
                match previous {
                    Some(old) if old != client => info!(
                        "granted PID {client} access to target {}, taking it over from PID {old}",
                        state.target
                    ),
                    _ => info!("granted PID {client} access to target {}", state.target),
                }
                state.grant = Some(GrantRecord {
                    client,
                    connection: peer.connection,
                });
                Reply::Ready
            }
            Err(err) => {
                warn!("grant for PID {client} failed: {err}");
                Reply::Error(format!("Grant failed: {err}"))
            }
        }
    }

    fn revoke(&mut self, state: &mut State) -> Reply {
        state.grant = None;
        match self.granter.revoke(state.target) {
            Ok(()) => {
                info!("revoked access to target {}", state.target);
                Reply::Ready
            }
            Err(err) => Reply::Error(format!("Revoke failed: {err}")),
        }
    }

    /// A connection closed: the grant it asked for, if still in force,
    /// goes with it.
    fn disconnected(&mut self, state: &mut State, peer: Peer) {
        debug!("client {peer:?} disconnected");
        let Some(record) = state.grant.filter(|r| r.connection == peer.connection) else {
            return;
        };
        // Connectionless transports (named pipes) tie no grant to a peer.
        if peer.connection == 0 {
            return;
        }
        match self.granter.holder_pid(state.target) {
            Some(holder) if holder != record.client => state.grant = None,
            _ => {
                info!(
                    "the connection of client PID {} closed: revoking its grant",
                    record.client
                );
                if let Reply::Error(message) = self.revoke(state) {
                    warn!("{message}");
                }
            }
        }
    }

    fn status(&self, state: &State) -> Status {
        let mut extra = vec![("restarts".to_owned(), self.restart.restarts().to_string())];
        if let Some(exit) = state.last_exit {
            extra.push(("last_exit".to_owned(), exit.shell_code().to_string()));
        }
        extra.extend(self.status_fields.iter().cloned());
        extra.extend(self.granter.status_fields());
        Status {
            pid: state.target,
            state: match (state.running, state.kill_at.is_some()) {
                (false, _) => "restarting",
                (true, true) => "stopping",
                (true, false) => "running",
            }
            .to_owned(),
            uptime_secs: state.started.elapsed().as_secs(),
            granter: self.granter.name().to_owned(),
            holder: self
                .granter
                .holder_pid(state.target)
                .filter(|_| state.running),
            extra,
            command: self.supervisor.describe(),
        }
    }

    /// Asks the target to end, with `signal` if given, else with the
    /// supervisor's polite stop, and arms the kill timer.
    fn begin_stop(&mut self, state: &mut State, signal: Option<i32>) {
        if !state.running {
            // Waiting to restart: there is nothing to stop; end now.
            state.respawn_at = None;
            state.kill_at = Some(Instant::now());
            return;
        }
        let result = match signal {
            Some(signal) => self.supervisor.signal(signal),
            None => self.supervisor.terminate(),
        };
        if let Err(err) = result {
            warn!("cannot signal the target: {err}");
        }
        if state.kill_at.is_none() {
            state.kill_at = Some(Instant::now() + self.grace);
        }
    }

    fn on_signal(&mut self, state: &mut State, origin: &Origin) {
        let signal = origin.signal;
        // The terminal sends Ctrl-C, Ctrl-\ and hang-ups to the whole
        // foreground process group, the target included: do not double them.
        let from_terminal = origin.cause == Cause::Kernel && self.supervisor.shares_terminal();
        if STOP_SIGNALS.contains(&signal) {
            info!("got signal {signal}; stopping the target");
            if from_terminal && state.running {
                if state.kill_at.is_none() {
                    state.kill_at = Some(Instant::now() + self.grace);
                }
            } else {
                self.begin_stop(state, Some(signal));
            }
            return;
        }
        if !from_terminal && state.running {
            debug!("passing signal {signal} to the target");
            if let Err(err) = self.supervisor.signal(signal) {
                warn!("cannot pass signal {signal} to the target: {err}");
            }
        }
        if SUSPEND_SIGNALS.contains(&signal) {
            info!("got signal {signal}; suspending (SIGCONT continues)");
            // A PID 1 cannot be stopped from inside its namespace: then the
            // target alone stops.
            if let Err(err) = signal_hook::low_level::raise(SIGSTOP) {
                warn!("cannot stop: {err}");
            }
        }
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

#[derive(Debug)]
struct State {
    /// The current target, or the last one while waiting to restart.
    target: u32,
    running: bool,
    started: Instant,
    /// When the target gets SIGKILL, once it was asked to stop.
    kill_at: Option<Instant>,
    /// When the ended target starts again.
    respawn_at: Option<Instant>,
    last_exit: Option<ExitStatus>,
    /// The last grant made, and on which connection.
    grant: Option<GrantRecord>,
}

#[derive(Clone, Copy, Debug)]
struct GrantRecord {
    client: u32,
    connection: u64,
}

/// Forwards caught signals into a channel from a thread of its own.
struct SignalThread {
    rx: Receiver<Origin>,
    handle: signal_hook::iterator::Handle,
    thread: Option<thread::JoinHandle<()>>,
}

impl SignalThread {
    fn start() -> io::Result<SignalThread> {
        let mut signals = SignalsInfo::<WithOrigin>::new(
            STOP_SIGNALS
                .iter()
                .chain(&PASS_SIGNALS)
                .chain(&SUSPEND_SIGNALS),
        )?;
        let handle = signals.handle();
        let (tx, rx) = bounded(16);
        let thread = thread::Builder::new()
            .name("heli-signals".into())
            .spawn(move || {
                for origin in signals.forever() {
                    if tx.send(origin).is_err() {
                        break;
                    }
                }
            })?;
        Ok(SignalThread {
            rx,
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Dialect, LineBuffer};

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
        let line = Reply::Stack(cut.clone()).encode(Dialect::Upper);
        let mut lines = LineBuffer::for_replies();
        lines.extend(line.as_bytes());
        let back = lines.next_line().unwrap().unwrap();
        assert_eq!(
            Reply::parse(std::str::from_utf8(&back).unwrap()).unwrap(),
            Reply::Stack(cut)
        );
    }
}
