//! The controller: one event loop over requests, the target's exit and
//! signals.

use std::io;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, never, unbounded, Receiver, Sender};
use log::{info, warn};

use crate::agent::{Agent, NoAgent};
use crate::audit::{Audit, NoAudit};
use crate::auditing::Auditing;
use crate::event_loop::{not_running, Inputs, Loop};
use crate::granter::Granter;
use crate::inspector::{Inspector, NoInspector};
use crate::limits::Graces;
use crate::notifier::{NoNotifier, Notifier, Notify};
use crate::process::Pid;
use crate::restart::RestartPolicy;
use crate::sampler::Profiler;
#[cfg(test)]
use crate::signals::Caught;
use crate::signals::{self, SignalThread};
use crate::supervisor::{ExitStatus, Supervisor};
use crate::transport::{Event, GrantHolder, Listener, Stopper, Transport};
use crate::worker::{AgentStacks, AgentWorker, GrantWorker, StackWorker};

/// How long a grant or revoke may take by default: the Yama granter's
/// longest way, a remote execution, waits this long for the target to run
/// its script.
pub const DEFAULT_GRANT_DEADLINE: Duration = Duration::from_secs(5);

/// How long a stack read may take by default: less than a client's default
/// wait ([`DEFAULT_TIMEOUT`](crate::DEFAULT_TIMEOUT)), so it hears why.
pub const DEFAULT_STACK_DEADLINE: Duration = Duration::from_millis(1500);

/// Supervises a target and answers clients: the heart of heli.
///
/// It composes a [`Transport`] (how clients reach it), a [`Granter`] (how a
/// client gets ptrace rights), a [`Supervisor`] (how the target runs) and,
/// optionally, an [`Inspector`] (how to read the target's stacks), an
/// [`Agent`] (code it set up inside the target, for a debugger where no
/// ptrace is allowed) and a [`Notifier`] (how a service manager such as
/// systemd hears how it is doing), all chosen statically. [`run`](Controller::run) spawns the target and serves
/// until the target has ended, then returns its [`ExitStatus`].
///
/// The event loop is a single `select!` over the listener's requests, the
/// target's exit, forwarded signals, a shutdown handle, the results of work
/// and its timers. It never waits on the target itself: the granter and
/// the inspector run on threads of their own, each grant, revoke and stack
/// read with a deadline ([`grant_deadline`](Controller::grant_deadline),
/// [`stack_deadline`](Controller::stack_deadline)); meanwhile every other
/// request is served. Work past its deadline is answered with why (the
/// target frozen, or in uninterruptible sleep); a grant that completes
/// after its client was told it failed is withdrawn at once. Stopping the
/// controller calls off work in progress.
///
/// # Authorization
///
/// The controller decides who may be granted what, by one policy for every
/// transport, from what the transport verified about each request's
/// [`Peer`](crate::Peer) and what the supervisor's
/// [`Processes`](crate::Processes) table says:
///
/// - `GRANT_ACCESS <pid>` from an authenticated peer (a Unix socket's)
///   names the peer itself or one of its descendants, checked with start
///   times so a reused pid does not pass; from a transport that cannot
///   authenticate (named pipes), any process. A thread stands for its
///   process.
/// - `GRANT_ACCESS <pid> TARGET <process>` lets the client into a process
///   of the target's tree instead: the target or one of its descendants at
///   the moment of the grant (checked with start times), a process (not a
///   thread), not exited, not this controller, of this controller's user
///   (real and effective). Anything else is refused, naming the rule, and
///   nothing is injected anywhere. `STACK <pid>` and `STACKS <pid>` read
///   only such a process too.
/// - Grants are per process (Yama keeps one ptracer per process), keyed by
///   the process's pid and start time: a client may hold grants on several
///   processes; another client's grant on the same process is refused
///   unless it asks to take it over (`FORCE`), naming the holder.
/// - A grant ends with the connection that asked for it (every grant of
///   that connection), with its process's exit (noticed at the next
///   `STATUS`, `PS`, grant or revoke; a recycled pid never inherits it),
///   or with the target's exit (every grant of the tree). Its holder's
///   exit makes it count for nothing.
/// - `REVOKE <pid> [TARGET <process>]` withdraws it only when `<pid>`
///   holds it, and only from its connection or its holder.
///
/// `PS` and every stack read run on the inspector's thread with the stack
/// deadline (reading a frozen process's command line can block): the loop
/// never waits on them.
///
/// # The agent
///
/// - `AGENT_ATTACH [<pid>]` has the [`Agent`] in the target (or in process
///   `<pid>` of its tree) run pdb, on the agent's thread with the grant
///   deadline; the reply, `AGENT <pid> <python>`, carries the client's ends
///   of pdb's sockets. It is allowed exactly when `GRANT_ACCESS <asker>
///   TARGET <pid>` would be for the process that asks (the same rules and
///   messages, the asker standing for the client), and refused on a
///   transport that cannot pass file descriptors
///   ([`Transport::passes_fds`]), or while the agent there does not serve
///   (saying why: [`AgentState`](crate::AgentState)). Nothing is recorded:
///   the session lasts as long as pdb's sockets, not the connection.
/// - A stack read the inspector may not make (`PermissionDenied`), or any
///   it fails while the controller [prefers the agent](Controller::prefer_agent),
///   is asked of the agent in that process when it serves, within the
///   stack deadline; the stacks say so
///   ([`ProcessStacks::via`](crate::stacks::ProcessStacks::via)).
/// - `STATUS` says `agent=<state>` for the target's agent
///   ([`AgentState::word`](crate::AgentState::word)) and how a client
///   attaches: `attach=ptrace` (a grant), `attach=agent`, or `attach=none`
///   (the controller prefers the agent and it does not serve).
///
/// # Examples
///
/// ```no_run
/// # fn demo<T: heli_core::Transport, G: heli_core::Granter + Send + 'static, S: heli_core::Supervisor>(
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
pub struct Controller<T, G, S, I = NoInspector, A = NoAgent, N = NoNotifier, U = NoAudit> {
    transport: T,
    granter: G,
    supervisor: S,
    inspector: I,
    agent: A,
    notifier: N,
    audit: U,
    prefer_agent: bool,
    grace: Duration,
    grant_deadline: Duration,
    stack_deadline: Duration,
    max_grant: Option<Duration>,
    graces: Graces,
    signals: Signals,
    restart: RestartPolicy,
    status_fields: Vec<(String, String)>,
    subreaper: bool,
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

impl<T, G, S> Controller<T, G, S>
where
    T: Transport,
    G: Granter + Send + 'static,
    S: Supervisor,
{
    /// A controller that will serve on `transport`, grant with `granter` and
    /// run the target with `supervisor`; it cannot read its target's stacks
    /// until given an [`inspector`](Controller::inspector).
    pub fn new(transport: T, granter: G, supervisor: S) -> Self {
        Controller {
            transport,
            granter,
            supervisor,
            inspector: NoInspector,
            agent: NoAgent,
            notifier: NoNotifier,
            audit: NoAudit,
            prefer_agent: false,
            grace: signals::DEFAULT_GRACE,
            grant_deadline: DEFAULT_GRANT_DEADLINE,
            stack_deadline: DEFAULT_STACK_DEADLINE,
            max_grant: None,
            graces: Graces::default(),
            signals: Signals::Ignored,
            restart: RestartPolicy::default(),
            status_fields: Vec::new(),
            subreaper: false,
            shutdown: bounded(1),
        }
    }
}

impl<T, G, S, I, A, N, U> Controller<T, G, S, I, A, N, U>
where
    T: Transport,
    G: Granter + Send + 'static,
    S: Supervisor,
    I: Inspector + Send + Sync + 'static,
    A: Agent + Send + Sync + 'static,
    N: Notifier,
    U: Audit + Send + 'static,
{
    /// Reads the target's stacks (`STACK`) with `inspector`.
    pub fn inspector<J>(self, inspector: J) -> Controller<T, G, S, J, A, N, U>
    where
        J: Inspector + Send + Sync + 'static,
    {
        Controller {
            transport: self.transport,
            granter: self.granter,
            supervisor: self.supervisor,
            inspector,
            agent: self.agent,
            notifier: self.notifier,
            audit: self.audit,
            prefer_agent: self.prefer_agent,
            grace: self.grace,
            grant_deadline: self.grant_deadline,
            stack_deadline: self.stack_deadline,
            max_grant: self.max_grant,
            graces: self.graces,
            signals: self.signals,
            restart: self.restart,
            status_fields: self.status_fields,
            subreaper: self.subreaper,
            shutdown: self.shutdown,
        }
    }

    /// Reaches code inside the processes of its tree through `agent`
    /// (`AGENT_ATTACH`, stacks the inspector may not read): see
    /// [the agent](Controller#the-agent). Its
    /// [`state`](Agent::state) is asked on the controller's loop and must
    /// answer at once; [`attach`](Agent::attach) and
    /// [`stacks`](Agent::stacks) run on worker threads, with a deadline.
    pub fn agent<B>(self, agent: B) -> Controller<T, G, S, I, B, N, U>
    where
        B: Agent + Send + Sync + 'static,
    {
        Controller {
            transport: self.transport,
            granter: self.granter,
            supervisor: self.supervisor,
            inspector: self.inspector,
            agent,
            notifier: self.notifier,
            audit: self.audit,
            prefer_agent: self.prefer_agent,
            grace: self.grace,
            grant_deadline: self.grant_deadline,
            stack_deadline: self.stack_deadline,
            max_grant: self.max_grant,
            graces: self.graces,
            signals: self.signals,
            restart: self.restart,
            status_fields: self.status_fields,
            subreaper: self.subreaper,
            shutdown: self.shutdown,
        }
    }

    /// Tells a service manager (systemd's `Type=notify`) how the
    /// controller is doing through `notifier`: that it is ready, its status
    /// line, that it stops, and the watchdog's pings from its event loop
    /// (see [`Notifier`]). Its calls are made on the controller's loop.
    pub fn notifier<M: Notifier>(self, notifier: M) -> Controller<T, G, S, I, A, M, U> {
        Controller {
            transport: self.transport,
            granter: self.granter,
            supervisor: self.supervisor,
            inspector: self.inspector,
            agent: self.agent,
            notifier,
            audit: self.audit,
            prefer_agent: self.prefer_agent,
            grace: self.grace,
            grant_deadline: self.grant_deadline,
            stack_deadline: self.stack_deadline,
            max_grant: self.max_grant,
            graces: self.graces,
            signals: self.signals,
            restart: self.restart,
            status_fields: self.status_fields,
            subreaper: self.subreaper,
            shutdown: self.shutdown,
        }
    }

    /// Records the audit trail with `audit` (see [`Audit`]): every grant,
    /// refusal, revoke, stack dump, profile, `STATUS`, `TERMINATE` and
    /// attach through the agent. Its calls are made on an audit thread of
    /// the controller's, never on its loop. Whatever the audit, the newest
    /// records are kept in memory and answer `AUDIT`.
    pub fn audit<V>(self, audit: V) -> Controller<T, G, S, I, A, N, V>
    where
        V: Audit + Send + 'static,
    {
        Controller {
            transport: self.transport,
            granter: self.granter,
            supervisor: self.supervisor,
            inspector: self.inspector,
            agent: self.agent,
            notifier: self.notifier,
            audit,
            prefer_agent: self.prefer_agent,
            grace: self.grace,
            grant_deadline: self.grant_deadline,
            stack_deadline: self.stack_deadline,
            max_grant: self.max_grant,
            graces: self.graces,
            signals: self.signals,
            restart: self.restart,
            status_fields: self.status_fields,
            subreaper: self.subreaper,
            shutdown: self.shutdown,
        }
    }

    /// How long the target may take to end after being asked before it is
    /// killed (default 2 s).
    ///
    /// A killed target is waited for until it has ended, unless a cgroup
    /// freezer holds it: under cgroup v1 a frozen process dies only once
    /// thawed, so the controller ends without it ([`run`](Controller::run)
    /// returns [`ExitStatus::Signal`]`(9)`) and it ends when thawed.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long a grant or revoke may take before the client is told it
    /// failed, and why (default [`DEFAULT_GRANT_DEADLINE`]).
    pub fn grant_deadline(mut self, deadline: Duration) -> Self {
        self.grant_deadline = deadline;
        self
    }

    /// How long a stack read may take before the client is told it failed,
    /// and why (default [`DEFAULT_STACK_DEADLINE`]).
    pub fn stack_deadline(mut self, deadline: Duration) -> Self {
        self.stack_deadline = deadline;
        self
    }

    /// The longest a grant may last (default: no limit). A grant asked
    /// for without a time limit gets this one, one asked for longer is
    /// refused. Once a grant's time is up the controller withdraws it, and
    /// a client the transport verified has [`CLIENT_GRACE`] to end its
    /// debugger before the controller ends it (SIGTERM to the client's
    /// descendants, SIGKILL 2 s later) and closes its connection.
    /// `STATUS` shows the limit (`max_grant=<secs>`) and each grant's time
    /// left (`time_left=<process>:<secs>,...`). A limit longer than a
    /// client may ask for ([`MAX_GRANT`], a week) is a week.
    ///
    /// [`CLIENT_GRACE`]: crate::CLIENT_GRACE
    /// [`MAX_GRANT`]: crate::protocol::MAX_GRANT
    pub fn max_grant(mut self, most: Duration) -> Self {
        self.max_grant = Some(most.min(crate::protocol::MAX_GRANT));
        self
    }

    /// Shorter graces for a client whose time is up, for tests that wait
    /// for them.
    #[cfg(test)]
    pub(crate) fn limit_graces(mut self, client: Duration, kill: Duration) -> Self {
        self.graces = Graces { client, kill };
        self
    }

    /// Whether to catch [`STOP_SIGNALS`](crate::STOP_SIGNALS),
    /// [`PASS_SIGNALS`] and [`SUSPEND_SIGNALS`](crate::SUSPEND_SIGNALS)
    /// and pass them to the target (default: no; a
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

    /// Whether clients attach through the [agent](Controller::agent) rather
    /// than with a ptrace grant (default no): set it where ptrace cannot
    /// work (Yama's `ptrace_scope` 2 or 3). `STATUS` then says
    /// `attach=agent` while the target's agent serves (`attach=none` while
    /// it does not), and a stack read that fails for any reason is asked
    /// of the agent too.
    pub fn prefer_agent(mut self, yes: bool) -> Self {
        self.prefer_agent = yes;
        self
    }

    /// Tells the controller whether it is a child subreaper
    /// (`PR_SET_CHILD_SUBREAPER`, or PID 1 of its namespace), default no.
    /// If it is, the processes it adopts (a process of the tree that
    /// daemonises, or whose parent died) stay in the tree: `PS` lists them
    /// after the target's subtree, and they may be granted and read like
    /// the target's descendants. If it is not, such a process is
    /// re-parented out of the tree and no longer listed, and `PS` says so
    /// (a client notes it). This crate cannot tell by itself; the program
    /// that made the process a subreaper can.
    pub fn subreaper(mut self, yes: bool) -> Self {
        self.subreaper = yes;
        self
    }

    /// A handle to stop the controller from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.0.clone())
    }

    /// Listens, spawns the target, serves until the target has ended, cleans
    /// up, and returns how the target ended (or, for a killed target a
    /// cgroup freezer holds, that it was killed: see
    /// [`grace`](Controller::grace)).
    ///
    /// # Parent-death signal
    ///
    /// Call it from a thread that outlives the target (it does, as `run`
    /// returns only after the target ended or was killed): a supervisor that asks the
    /// kernel to kill the target when its parent dies ties that to the thread
    /// that spawned it.
    ///
    /// # Threads
    ///
    /// The granter, the inspector and the agent's attaches run on threads
    /// of their own. `run` does not wait for them when it returns: a piece of work stuck on a
    /// target that never answers (frozen for good) keeps its thread, which
    /// ends with the work.
    ///
    /// # Errors
    ///
    /// When listening, spawning, or catching signals fails; the target is
    /// not left running.
    pub fn run(self) -> io::Result<ExitStatus> {
        let Controller {
            transport,
            granter,
            mut supervisor,
            inspector,
            agent,
            notifier,
            audit,
            prefer_agent,
            grace,
            grant_deadline,
            stack_deadline,
            max_grant,
            graces,
            signals,
            restart,
            status_fields,
            subreaper,
            shutdown,
        } = self;
        let mut listener = transport.listen()?;
        info!("listening on {}", transport.describe());
        let (caught, signal_rx, suspended) = match signals {
            Signals::Caught => {
                let thread = SignalThread::start()?;
                let rx = thread.rx.clone();
                (Some(thread), rx, None)
            }
            Signals::Ignored => (None, never(), None),
            #[cfg(test)]
            Signals::Fake(rx, suspended) => (None, rx, Some(suspended)),
        };
        let granter_name = granter.name().to_owned();
        // This run of the controller, in every record: its pid and start
        // time (a controller that reused the pid has another).
        let session = match supervisor.identity(Pid::this()) {
            Ok(Some(me)) => format!("{}@{}", me.pid, me.start_time),
            _ => format!("{}@unknown", Pid::this()),
        };
        let audit = Auditing::start(audit, session, granter_name.clone())?;
        let (done_tx, done) = unbounded();
        let grants = GrantWorker::start(granter, done_tx.clone())?;
        let agent = Arc::new(agent);
        let agent_stacks = AgentStacks {
            agent: agent.clone(),
            prefer: prefer_agent,
        };
        let inspector = Arc::new(inspector);
        let profiler = Profiler::new(inspector.clone());
        let stacks = StackWorker::start(inspector, agent_stacks, done_tx.clone())?;
        let agents = AgentWorker::start(agent.clone(), done_tx)?;
        let exits = supervisor.exits();
        let target = supervisor.spawn()?;
        info!("target started with PID {target}; granter: {granter_name}");

        let holder = GrantHolder::default();
        listener.watch_grant(holder.clone());
        let stopper = listener.stopper();
        let (events_tx, events) = bounded(64);
        let serving = thread::Builder::new()
            .name("heli-listener".into())
            .spawn(move || {
                let result = listener.serve(&events_tx);
                (listener, result)
            })?;

        let mut event_loop = Loop {
            supervisor,
            notify: Notify::new(notifier),
            audit,
            grants,
            stacks,
            profiler,
            agent,
            agents,
            prefer_agent,
            done,
            granter_name,
            grace,
            grant_deadline,
            stack_deadline,
            max_grant,
            graces,
            restart,
            status_fields,
            authenticates: transport.authenticates(),
            passes_fds: transport.passes_fds(),
            subreaper,
            suspended,
        };
        let inputs = Inputs {
            exits,
            events,
            signals: signal_rx,
            shutdown: shutdown.1,
        };
        let status = event_loop.run(target, holder, &inputs);

        stopper.stop();
        // Answer whatever is queued, and whatever the listener sends until it
        // has stopped, so no client waits on a reply that never comes.
        for event in inputs.events.iter() {
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
}

#[cfg(test)]
mod tests {
    use crate::event_loop::fit_reply;
    use crate::protocol::{Dialect, LineBuffer, Reply, MAX_REPLY};

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
        // after. The cut keeps the bytes before the character, whole, and
        // finds where at once (on a thread, so the test fails rather than
        // hangs should it search forever).
        let text = format!("{}\u{1F980}{}", "a".repeat(ROOM - 1), "b".repeat(10));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(fit_reply(text)));
        let cut = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("no cut within 10 s");
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
