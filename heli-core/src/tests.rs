//! Unit tests of the [`Controller`] and the [`Client`] with in-memory fakes.
//!
//! The fakes are deliberately tiny and live here, not in the sibling crates:
//!
//! - [`Fake`], a [`Transport`] whose requests travel over channels, one
//!   thread per request on the listener side (so several requests can wait
//!   for the controller at once), with switches to make `listen`, `connect`
//!   or `serve` fail and a gate that holds [`Stopper::stop`]; its listener
//!   keeps the note of which connection holds the grant;
//! - [`Recorder`], a [`Granter`] that remembers grants and revokes and can be
//!   told to fail, to wait on a target that does not answer, or to hold
//!   back the report of work it has done;
//! - [`Pretend`], a [`Supervisor`] whose "target" ends when the test says so,
//!   and can be told to ignore `terminate()` or to fail to spawn.
//!
//! Whatever could hang is bounded by [`HANG`]: the controller runs on a
//! thread whose result is awaited with a deadline, and every round trip has
//! one. What the controller's loop logs is kept ([`Running::logged`], from
//! [`test_log`](crate::test_log)).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, unbounded, Receiver, RecvTimeoutError, Sender};

use crate::process::table::{pid, Table};
use crate::protocol::{GrantRequest, Reply, RevokeRequest, Scope, MAX_LINE};
use crate::stacks::{Frame, ThreadStack};
use crate::tree::{Role, Tree, TreeProcess};
use crate::{
    exchange, Client, Connection, Controller, Credentials, Deadline, ErrorKind, Event, Exit,
    ExitStatus, GrantHolder, Granter, Incoming, Listener, Peer, Pid, ProcessId, ProcessInfo,
    Processes, Restart, RestartPolicy, Session, Stopper, Supervisor, Transport,
};

/// The pretend target's process id.
const PID: Pid = Pid::new(4242).unwrap();
/// Pretend clients: processes that exist in the pretend supervisor's table.
const CLIENTS: [u32; 8] = [5, 7, 9, 42, 77, 78, 88, 99];
/// Generous bound on anything that should be quick: past it, a test fails
/// instead of hanging.
const HANG: Duration = Duration::from_secs(10);
/// A short grace period for tests where the kill timer must fire.
const SHORT_GRACE: Duration = Duration::from_millis(100);
/// A grace period no test waits for.
const LONG_GRACE: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------
// The fake transport.

/// Who sent it, and a request line with where its reply goes (`None`: the
/// connection closed).
type Wire = (Peer, Option<(Vec<u8>, Sender<Delivered>)>);

/// A reply line as the client gets it, with the file descriptors that came
/// with it.
type Delivered = (Vec<u8>, Vec<OwnedFd>);

#[derive(Default)]
struct FakeConfig {
    listen_error: Option<io::ErrorKind>,
    connect_error: Option<io::ErrorKind>,
    /// `serve` fails at once.
    serve_error: bool,
    /// `serve` handles one request at a time, with [`exchange`], as a
    /// transport over named pipes does.
    serial: bool,
    /// `serve` takes this long to return once stopped.
    linger: Duration,
    /// `stop()` reports on the first channel, then waits for the second.
    stop_gate: Option<(Sender<()>, Receiver<()>)>,
    /// Replies carry file descriptors (as a Unix socket's do).
    passes_fds: bool,
}

struct Wires {
    config: FakeConfig,
    to_server: Sender<Wire>,
    from_clients: Receiver<Wire>,
    /// One message per request handed to the controller.
    queued: (Sender<()>, Receiver<()>),
    /// Every reply line the listener got from the controller.
    delivered: (Sender<String>, Receiver<String>),
    listens: AtomicUsize,
    serving: AtomicBool,
    served: AtomicBool,
    stops: AtomicUsize,
    dropped: AtomicUsize,
    /// The last connection id handed out.
    connections: AtomicU64,
    /// What new connections say the transport verified about them.
    credentials: Mutex<Option<Credentials>>,
    /// The controller's note of which connection holds the grant, as
    /// [`Listener::watch_grant`] hands it over.
    grant_holder: Mutex<Option<GrantHolder>>,
    /// The connections the controller had the listener close, and why.
    closed: Mutex<Vec<(u64, String)>>,
}

/// An in-memory [`Transport`]; clones share the same "address".
#[derive(Clone)]
struct Fake(Arc<Wires>);

impl Fake {
    fn new() -> Fake {
        Fake::with(FakeConfig::default())
    }

    fn with(config: FakeConfig) -> Fake {
        let (to_server, from_clients) = unbounded();
        Fake(Arc::new(Wires {
            config,
            to_server,
            from_clients,
            queued: unbounded(),
            delivered: unbounded(),
            listens: AtomicUsize::new(0),
            serving: AtomicBool::new(false),
            served: AtomicBool::new(false),
            stops: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            connections: AtomicU64::new(0),
            credentials: Mutex::new(None),
            grant_holder: Mutex::new(None),
            closed: Mutex::new(Vec::new()),
        }))
    }

    /// New connections come from `process` of uid 1000, as a transport
    /// that authenticates its peers (a Unix socket) reports them.
    fn authenticate(&self, process: Option<ProcessId>) {
        *self.0.credentials.lock().unwrap() = Some(Credentials { uid: 1000, process });
    }

    /// Sends `line` as it is and returns the reply.
    fn raw(&self, line: &[u8]) -> String {
        let mut connection = self.connect(HANG).unwrap();
        let reply = connection
            .round_trip(line, Instant::now() + HANG)
            .unwrap_or_else(|err| panic!("no reply to {:?}: {err}", lossy(line)));
        String::from_utf8(reply).unwrap()
    }

    /// Sends `line` from a thread of its own; the reply arrives later.
    fn raw_async(&self, line: &[u8]) -> Receiver<io::Result<Vec<u8>>> {
        let (tx, rx) = bounded(1);
        let mut connection = self.connect(HANG).unwrap();
        let line = line.to_vec();
        thread::spawn(move || {
            let _ = tx.send(connection.round_trip(&line, Instant::now() + HANG));
        });
        rx
    }

    /// A client that will not give up before [`HANG`].
    fn client(&self) -> Client<Fake> {
        Client::new(self.clone()).timeout(HANG)
    }

    /// A session of a client of its own that holds the grant to process
    /// `client` (as long as the session lasts).
    fn granted(&self, client: u32) -> Session<FakeConnection> {
        let mut session = self.client().session().unwrap();
        session.grant_access(pid(client)).unwrap();
        session
    }

    /// The connections that hold grants, as the listener is told.
    fn grant_holders(&self) -> Vec<u64> {
        let holder = self.0.grant_holder.lock().unwrap();
        let holder = holder.as_ref().expect("watch_grant not called");
        (0..=self.last_connection() + 1)
            .filter(|&connection| holder.holds(connection))
            .collect()
    }

    /// The last connection handed out.
    fn last_connection(&self) -> u64 {
        self.0.connections.load(SeqCst)
    }
}

impl Transport for Fake {
    type Listener = FakeListener;
    type Connection = FakeConnection;

    fn listen(&self) -> io::Result<FakeListener> {
        self.0.listens.fetch_add(1, SeqCst);
        if let Some(kind) = self.0.config.listen_error {
            return Err(io::Error::new(kind, "fake listen failure"));
        }
        Ok(FakeListener {
            wires: self.0.clone(),
            stop: bounded(1),
        })
    }

    fn connect(&self, _timeout: Duration) -> io::Result<FakeConnection> {
        if let Some(kind) = self.0.config.connect_error {
            return Err(io::Error::new(kind, "fake connect failure"));
        }
        let peer = Peer {
            connection: self.0.connections.fetch_add(1, SeqCst) + 1,
            credentials: *self.0.credentials.lock().unwrap(),
        };
        Ok(FakeConnection(peer, self.0.to_server.clone()))
    }

    fn describe(&self) -> String {
        "the fake address".into()
    }

    /// As one that authenticates once it is told who connects.
    fn authenticates(&self) -> bool {
        self.0.credentials.lock().unwrap().is_some()
    }

    fn passes_fds(&self) -> bool {
        self.0.config.passes_fds
    }
}

struct FakeListener {
    wires: Arc<Wires>,
    stop: (Sender<()>, Receiver<()>),
}

impl FakeListener {
    fn serve_until_stopped(&mut self, events: &Sender<Event>) -> io::Result<()> {
        if self.wires.config.serve_error {
            return Err(io::Error::other("fake listener broke"));
        }
        loop {
            select! {
                recv(self.stop.1) -> _ => return Ok(()),
                recv(self.wires.from_clients) -> wire => {
                    let (peer, request) = wire.expect("Wires holds a sender");
                    let Some((line, reply_to)) = request else {
                        let _ = events.send(Event::Disconnected(peer));
                        continue;
                    };
                    if self.wires.config.serial {
                        let Some(reply) = exchange(events, peer, Ok(line)) else {
                            return Ok(());
                        };
                        let _ = reply_to.send((reply.line.into_bytes(), reply.fds));
                        continue;
                    }
                    let events = events.clone();
                    let wires = self.wires.clone();
                    thread::spawn(move || forward(&wires, events, peer, &line, reply_to));
                }
            }
        }
    }
}

/// What a transport does with one request line: hand it to the controller,
/// pass its reply back.
fn forward(
    wires: &Wires,
    events: Sender<Event>,
    peer: Peer,
    line: &[u8],
    reply_to: Sender<Delivered>,
) {
    let (incoming, reply) = Incoming::new(peer, line);
    if events.send(Event::Request(incoming)).is_err() {
        return; // The controller is gone: dropping `reply_to` tells the client.
    }
    let _ = wires.queued.0.send(());
    if let Ok(reply) = reply.recv() {
        let _ = wires.delivered.0.send(reply.line.clone());
        let _ = reply_to.send((reply.line.into_bytes(), reply.fds));
    }
}

impl Listener for FakeListener {
    type Stopper = FakeStopper;

    fn stopper(&self) -> FakeStopper {
        FakeStopper {
            wires: self.wires.clone(),
            stop: self.stop.0.clone(),
        }
    }

    fn watch_grant(&mut self, holder: GrantHolder) {
        let wires = Arc::downgrade(&self.wires);
        holder.on_close(move |connection, why| {
            if let Some(wires) = wires.upgrade() {
                wires
                    .closed
                    .lock()
                    .unwrap()
                    .push((connection, why.to_owned()));
            }
        });
        *self.wires.grant_holder.lock().unwrap() = Some(holder);
    }

    fn serve(&mut self, events: &Sender<Event>) -> io::Result<()> {
        self.wires.serving.store(true, SeqCst);
        let result = self.serve_until_stopped(events);
        thread::sleep(self.wires.config.linger);
        self.wires.served.store(true, SeqCst);
        result
    }
}

impl Drop for FakeListener {
    fn drop(&mut self) {
        self.wires.dropped.fetch_add(1, SeqCst);
    }
}

struct FakeStopper {
    wires: Arc<Wires>,
    stop: Sender<()>,
}

impl Stopper for FakeStopper {
    fn stop(&self) {
        self.wires.stops.fetch_add(1, SeqCst);
        if let Some((entered, go)) = &self.wires.config.stop_gate {
            let _ = entered.send(());
            let _ = go.recv_timeout(HANG);
        }
        let _ = self.stop.try_send(());
    }
}

struct FakeConnection(Peer, Sender<Wire>);

impl Drop for FakeConnection {
    fn drop(&mut self) {
        let _ = self.1.send((self.0, None));
    }
}

impl Connection for FakeConnection {
    fn round_trip(&mut self, line: &[u8], deadline: Instant) -> io::Result<Vec<u8>> {
        Ok(self.round_trip_with_fds(line, deadline, 0)?.0)
    }

    fn round_trip_with_fds(
        &mut self,
        line: &[u8],
        deadline: Instant,
        max_fds: usize,
    ) -> io::Result<Delivered> {
        let (tx, rx) = bounded(1);
        self.1
            .send((self.0, Some((line.to_vec(), tx))))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        let (reply, mut fds) = rx.recv_deadline(deadline).map_err(|err| match err {
            RecvTimeoutError::Timeout => io::Error::from(io::ErrorKind::TimedOut),
            RecvTimeoutError::Disconnected => io::ErrorKind::UnexpectedEof.into(),
        })?;
        fds.truncate(max_fds);
        Ok((reply, fds))
    }
}

/// A fake transport whose controller's part is played by hand: a thread
/// answers each request with the next of `replies` (`None`: hang up without
/// answering), and returns the request lines it got.
fn scripted(replies: &[Option<&'static [u8]>]) -> (Fake, thread::JoinHandle<Vec<String>>) {
    let fake = Fake::new();
    let wires = fake.0.clone();
    let replies = replies.to_vec();
    let server = thread::spawn(move || {
        let mut seen = vec![];
        for reply in replies {
            // Skip the notes of closed connections.
            let (line, reply_to) = loop {
                let (_, request) = wires
                    .from_clients
                    .recv_timeout(HANG)
                    .expect("the client sent no request");
                if let Some(request) = request {
                    break request;
                }
            };
            seen.push(lossy(&line));
            if let Some(reply) = reply {
                reply_to.send((reply.to_vec(), Vec::new())).unwrap();
            }
        }
        seen
    });
    (fake, server)
}

fn lossy(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

// ---------------------------------------------------------------------------
// The recording granter.

#[derive(Default)]
struct Grants {
    /// Successful grants, as (target, client).
    granted: Vec<(Pid, u32)>,
    /// Every call to `grant`, failed or not.
    attempts: usize,
    /// Successful revokes, by target.
    revoked: Vec<Pid>,
    /// When set, `grant` and `revoke` fail with this message.
    fail: Option<String>,
    /// How many of the next revokes fail.
    revokes_to_fail: usize,
    /// Every call to `revoke`, failed or not.
    revoke_attempts: usize,
    /// When set, the next grants wait on a target that does not answer.
    stuck: Option<Stuck>,
    /// Told when a grant starts (when set).
    started: Option<Sender<()>>,
    /// Deadlines the grants were given, in order.
    deadlines: Vec<Deadline>,
    /// When set, the next report of finished work (its status fields)
    /// tells the first channel, then waits for the second.
    report_gate: Option<(Sender<()>, Receiver<()>)>,
}

/// How a grant waits on a target that does not answer.
#[derive(Clone, Copy)]
enum Stuck {
    /// Until its deadline (or its calling off), as a granter must: then it
    /// gives up, as after a frozen target.
    UntilDeadline,
    /// This long whatever the deadline, then succeeds: as a grant whose
    /// call was already under way when the target froze.
    Late(Duration),
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Grants>>);

impl Recorder {
    fn fail(&self, message: Option<&str>) {
        self.0.lock().unwrap().fail = message.map(str::to_owned);
    }
    fn granted(&self) -> Vec<(Pid, u32)> {
        self.0.lock().unwrap().granted.clone()
    }
    fn attempts(&self) -> usize {
        self.0.lock().unwrap().attempts
    }
    fn revoked(&self) -> Vec<Pid> {
        self.0.lock().unwrap().revoked.clone()
    }
    /// The next `count` revokes fail.
    fn fail_revokes(&self, count: usize) {
        self.0.lock().unwrap().revokes_to_fail = count;
    }
    fn revoke_attempts(&self) -> usize {
        self.0.lock().unwrap().revoke_attempts
    }
    /// Grants wait on a target that does not answer (or no longer do);
    /// each start is told on the returned channel.
    fn stick(&self, stuck: Option<Stuck>) -> Receiver<()> {
        let (tx, rx) = unbounded();
        let mut grants = self.0.lock().unwrap();
        grants.stuck = stuck;
        grants.started = Some(tx);
        rx
    }
    fn deadlines(&self) -> Vec<Deadline> {
        self.0.lock().unwrap().deadlines.clone()
    }
    /// The next piece of work, once done, is reported only when the test
    /// says so: (done and waiting, go on).
    fn hold_next_report(&self) -> (Receiver<()>, Sender<()>) {
        let (entered_tx, entered) = unbounded();
        let (go, go_rx) = unbounded();
        self.0.lock().unwrap().report_gate = Some((entered_tx, go_rx));
        (entered, go)
    }
}

impl Granter for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    fn grant(&mut self, target: ProcessId, client: ProcessId, due: &Deadline) -> io::Result<()> {
        let (stuck, started) = {
            let mut grants = self.0.lock().unwrap();
            grants.attempts += 1;
            grants.deadlines.push(due.clone());
            (grants.stuck, grants.started.clone())
        };
        if let Some(started) = started {
            let _ = started.send(());
        }
        match stuck {
            Some(Stuck::UntilDeadline) => {
                while !due.expired() {
                    thread::sleep(Duration::from_millis(2));
                }
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the pretend target did not stop in time",
                ));
            }
            Some(Stuck::Late(delay)) => thread::sleep(delay),
            None => {}
        }
        let mut grants = self.0.lock().unwrap();
        if let Some(message) = &grants.fail {
            return Err(io::Error::other(message.clone()));
        }
        grants.granted.push((target.pid, client.pid.get()));
        Ok(())
    }

    fn revoke(&mut self, target: ProcessId, _deadline: &Deadline) -> io::Result<()> {
        let mut grants = self.0.lock().unwrap();
        grants.revoke_attempts += 1;
        if grants.revokes_to_fail > 0 {
            grants.revokes_to_fail -= 1;
            return Err(io::Error::other("the pretend revoke failed"));
        }
        if let Some(message) = &grants.fail {
            return Err(io::Error::other(message.clone()));
        }
        grants.revoked.push(target.pid);
        Ok(())
    }

    fn status_fields(&self) -> Vec<(String, String)> {
        let gate = self.0.lock().unwrap().report_gate.take();
        if let Some((entered, go)) = gate {
            let _ = entered.send(());
            let _ = go.recv_timeout(HANG);
        }
        Vec::new()
    }
}

// ---------------------------------------------------------------------------
// The pretend supervisor.

struct Target {
    exit_tx: Mutex<Option<Sender<Exit>>>,
    exit_rx: Receiver<Exit>,
    running: AtomicBool,
    /// When set, `spawn()` fails with this.
    spawn_error: Mutex<Option<io::ErrorKind>>,
    ignore_terminate: bool,
    /// When set, `terminate()` first waits for a reply to be delivered and
    /// records it in `seen_before_terminate`.
    reply_before_terminate: Option<Receiver<String>>,
    seen_before_terminate: Mutex<Vec<Option<String>>>,
    spawns: AtomicUsize,
    terminates: AtomicUsize,
    kills: AtomicUsize,
    signals: Mutex<Vec<i32>>,
    shares_terminal: bool,
    /// The processes of its pretend world: init, the target, the clients.
    table: Table,
    /// Whether the target is frozen (cgroup freezer, v1): it dies only
    /// once thawed.
    frozen: AtomicBool,
    /// How often the controller looked whether it is frozen.
    frozen_looks: AtomicUsize,
    /// Other processes of its world that are frozen.
    frozen_others: Mutex<Vec<u32>>,
    /// `kill()` does not end it (a thread stuck in the kernel).
    ignore_kill: bool,
    /// The signals sent to the descendants of processes, in order.
    descendants_signalled: Mutex<Vec<(ProcessId, i32)>>,
}

/// A [`Supervisor`] whose target is pretend: it "runs" from `spawn` until
/// the test, `terminate` or `kill` ends it.
#[derive(Clone)]
struct Pretend(Arc<Target>);

#[derive(Default)]
struct PretendConfig {
    spawn_error: Option<io::ErrorKind>,
    ignore_terminate: bool,
    ignore_kill: bool,
    reply_before_terminate: Option<Receiver<String>>,
    /// In a process group of its own, without the terminal.
    own_group: bool,
}

impl Pretend {
    fn new() -> Pretend {
        Pretend::with(PretendConfig::default())
    }

    fn stubborn() -> Pretend {
        Pretend::with(PretendConfig {
            ignore_terminate: true,
            ..PretendConfig::default()
        })
    }

    fn with(config: PretendConfig) -> Pretend {
        let (exit_tx, exit_rx) = bounded(16);
        let table = Table::default();
        table.add(1, 0, 1);
        // The controller itself: the test process.
        table.add(Pid::this().get(), 1, 2);
        for client in CLIENTS {
            table.add(client, 1, u64::from(client));
        }
        Pretend(Arc::new(Target {
            exit_tx: Mutex::new(Some(exit_tx)),
            exit_rx,
            running: AtomicBool::new(false),
            spawn_error: Mutex::new(config.spawn_error),
            ignore_terminate: config.ignore_terminate,
            reply_before_terminate: config.reply_before_terminate,
            seen_before_terminate: Mutex::new(vec![]),
            spawns: AtomicUsize::new(0),
            terminates: AtomicUsize::new(0),
            kills: AtomicUsize::new(0),
            signals: Mutex::new(vec![]),
            shares_terminal: !config.own_group,
            table,
            frozen: AtomicBool::new(false),
            frozen_looks: AtomicUsize::new(0),
            frozen_others: Mutex::new(vec![]),
            ignore_kill: config.ignore_kill,
            descendants_signalled: Mutex::new(vec![]),
        }))
    }

    /// Reports that process `pid` ended with `status`.
    fn report(&self, pid: Pid, status: ExitStatus) {
        if pid == PID {
            self.0.running.store(false, SeqCst);
            self.0.table.remove(PID.get());
        }
        if let Some(tx) = &*self.0.exit_tx.lock().unwrap() {
            tx.try_send(Exit { pid, status }).unwrap();
        }
    }

    /// The target ends on its own.
    fn exit(&self, status: ExitStatus) {
        self.report(PID, status);
    }

    /// Every later `spawn()` fails with `kind`.
    fn fail_spawns(&self, kind: io::ErrorKind) {
        *self.0.spawn_error.lock().unwrap() = Some(kind);
    }

    /// The supervisor loses track of its target: the exit channel closes.
    fn lose_target(&self) {
        self.0.exit_tx.lock().unwrap().take();
    }

    fn spawns(&self) -> usize {
        self.0.spawns.load(SeqCst)
    }
    fn terminates(&self) -> usize {
        self.0.terminates.load(SeqCst)
    }
    fn kills(&self) -> usize {
        self.0.kills.load(SeqCst)
    }
    fn signals(&self) -> Vec<i32> {
        self.0.signals.lock().unwrap().clone()
    }
    /// The processes of its pretend world.
    fn table(&self) -> &Table {
        &self.0.table
    }
    /// Who process `raw` of its pretend world is (it must be there).
    fn id_of(&self, raw: u32) -> ProcessId {
        self.0.table.identity(pid(raw)).unwrap().unwrap()
    }
    /// Who the target is now.
    fn identity(&self) -> ProcessId {
        self.0.table.identity(PID).unwrap().unwrap()
    }
}

impl Processes for Pretend {
    fn process(&self, pid: Pid) -> io::Result<Option<ProcessInfo>> {
        self.0.table.process(pid)
    }

    fn is_frozen(&self, pid: Pid) -> io::Result<bool> {
        self.0.frozen_looks.fetch_add(1, SeqCst);
        let other = self.0.frozen_others.lock().unwrap().contains(&pid.get());
        Ok(other || (pid == PID && self.0.frozen.load(SeqCst)))
    }
}

impl Supervisor for Pretend {
    fn describe(&self) -> String {
        "pretend-target --flag".into()
    }

    fn spawn(&mut self) -> io::Result<Pid> {
        let spawns = self.0.spawns.fetch_add(1, SeqCst) + 1;
        if let Some(kind) = *self.0.spawn_error.lock().unwrap() {
            return Err(io::Error::new(kind, "fake spawn failure"));
        }
        // Each run is another process, which happens to get the same pid:
        // a child of the controller.
        self.0
            .table
            .add(PID.get(), Pid::this().get(), 1000 + spawns as u64);
        self.0.running.store(true, SeqCst);
        Ok(PID)
    }

    fn shares_terminal(&self) -> bool {
        self.0.shares_terminal
    }

    fn exits(&self) -> Receiver<Exit> {
        self.0.exit_rx.clone()
    }

    fn pid(&self) -> Option<Pid> {
        self.0.running.load(SeqCst).then_some(PID)
    }

    fn signal(&mut self, signal: i32) -> io::Result<()> {
        self.0.signals.lock().unwrap().push(signal);
        Ok(())
    }

    fn terminate(&mut self) -> io::Result<()> {
        self.0.terminates.fetch_add(1, SeqCst);
        if let Some(replies) = &self.0.reply_before_terminate {
            let seen = replies.recv_timeout(HANG).ok();
            self.0.seen_before_terminate.lock().unwrap().push(seen);
        }
        if !self.0.ignore_terminate && self.0.running.load(SeqCst) && !self.0.frozen.load(SeqCst) {
            self.report(PID, ExitStatus::Signal(15));
        }
        Ok(())
    }

    fn signal_descendants(&mut self, ancestor: ProcessId, signal: i32) -> io::Result<usize> {
        let mut signalled = self.0.descendants_signalled.lock().unwrap();
        signalled.push((ancestor, signal));
        Ok(1)
    }

    fn kill(&mut self) -> io::Result<()> {
        self.0.kills.fetch_add(1, SeqCst);
        if self.0.running.load(SeqCst) && !self.0.frozen.load(SeqCst) && !self.0.ignore_kill {
            self.report(PID, ExitStatus::Signal(9));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Running a controller with a deadline.

/// A controller running on a thread of its own: what `run` returns, and
/// that thread, whose event loop logs as [`Running::logged`] shows.
struct Running(Receiver<io::Result<ExitStatus>>, thread::ThreadId);

fn start<G, I, A, N, U>(controller: Controller<Fake, G, Pretend, I, A, N, U>) -> Running
where
    U: crate::Audit + Send + 'static,
    G: Granter + Send + 'static,
    I: crate::Inspector + Send + Sync + 'static,
    A: crate::Agent + Send + Sync + 'static,
    N: crate::Notifier + Send + 'static,
{
    assert!(crate::test_log::capture(log::LevelFilter::Info));
    let (tx, rx) = bounded(1);
    let thread = thread::spawn(move || {
        let _ = tx.send(controller.run());
    });
    Running(rx, thread.thread().id())
}

impl Running {
    /// What `run` returned; fails the test if it did not return within
    /// [`HANG`] (or panicked).
    fn join(self) -> io::Result<ExitStatus> {
        match self.0.recv_timeout(HANG) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                panic!("Controller::run did not return within {HANG:?}")
            }
            Err(RecvTimeoutError::Disconnected) => panic!("Controller::run panicked"),
        }
    }

    /// The lines the controller's event loop has logged so far, with their
    /// levels.
    fn logged(&self) -> Vec<(log::Level, String)> {
        crate::test_log::lines()
            .into_iter()
            .filter(|line| line.thread == self.1)
            .map(|line| (line.level, line.text))
            .collect()
    }

    /// Asks the controller to terminate, as a client of `fake` does, and
    /// returns what `run` returned; fails the test if either fails.
    fn terminate(self, fake: &Fake) -> ExitStatus {
        fake.client().terminate().unwrap();
        self.join().unwrap()
    }

    /// Asserts `run` has not returned (yet).
    fn assert_running(&self) {
        assert!(
            self.0.is_empty(),
            "Controller::run returned early: {:?}",
            self.0.try_recv()
        );
    }
}

/// The usual set-up: a fresh fake transport, recorder and pretend target.
fn controller() -> (Fake, Recorder, Pretend) {
    (Fake::new(), Recorder::default(), Pretend::new())
}

/// The usual set-up, started: a controller over a fresh fake transport,
/// recorder and pretend target, with its default settings.
fn started() -> (Fake, Recorder, Pretend, Running) {
    started_with(|controller| controller)
}

/// The usual set-up, started with the settings `configure` gives the
/// controller.
fn started_with<I: crate::Inspector + Send + Sync + 'static>(
    configure: impl FnOnce(
        Controller<Fake, Recorder, Pretend>,
    ) -> Controller<Fake, Recorder, Pretend, I>,
) -> (Fake, Recorder, Pretend, Running) {
    let (fake, granter, target) = controller();
    let running = start(configure(controller_over(&fake, &granter, &target)));
    (fake, granter, target, running)
}

/// A controller over (clones of) `fake`, `granter` and `target`.
fn controller_over(
    fake: &Fake,
    granter: &Recorder,
    target: &Pretend,
) -> Controller<Fake, Recorder, Pretend> {
    Controller::new(fake.clone(), granter.clone(), target.clone())
}

/// Asserts that a grant to process `client` is refused with `message`,
/// asked for both as a request line and by a [`Client`].
fn assert_grant_refused(fake: &Fake, client: u32, message: &str) {
    let line = format!("GRANT_ACCESS {client}\n");
    assert_eq!(fake.raw(line.as_bytes()), format!("ERROR: {message}\n"));
    let err = fake.client().grant_access(pid(client)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(err.message(), message);
}

/// Asserts that `run` stopped, joined and dropped the listener.
fn assert_listener_cleaned_up(fake: &Fake) {
    let wires = &fake.0;
    assert!(wires.stops.load(SeqCst) >= 1, "stopper not called");
    assert!(wires.served.load(SeqCst), "serve() had not returned");
    assert_eq!(wires.dropped.load(SeqCst), 1, "listener not dropped");
}

// ---------------------------------------------------------------------------
// Requests.

#[test]
fn get_target_pid_names_the_spawned_target() {
    let (fake, _, target, running) = started();

    assert_eq!(fake.client().target_pid().unwrap(), PID);
    assert_eq!(fake.raw(b"GET_TARGET_PID\n"), "TARGET_PID 4242\n");
    assert_eq!(fake.raw(b"Get_Target_Pid"), "TARGET_PID 4242\n");
    assert_eq!(target.spawns(), 1);
    assert_eq!(target.terminates(), 0);
    running.assert_running();

    assert_eq!(running.terminate(&fake), ExitStatus::Signal(15));
}

#[test]
fn grant_access_grants_the_client_on_the_target() {
    let (fake, granter, _, running) = started();

    // The grant lasts as long as the connection that asked for it.
    let mut holder = fake.granted(77);
    assert_eq!(granter.granted(), [(PID, 77)]);
    // The holder may ask again.
    holder.grant_access(pid(77)).unwrap();
    // Another client may not, unless it takes the grant over.
    assert_eq!(
        fake.raw(b"GRANT_ACCESS 78\n"),
        "ERROR: target is being debugged by client PID 77 (attach --force takes it over)\n"
    );
    assert_eq!(granter.attempts(), 2);
    let mut other = fake.connect(HANG).unwrap();
    let reply = other
        .round_trip(b"grant_access 78 force\n", Instant::now() + HANG)
        .unwrap();
    assert_eq!(reply, b"ready\n");
    assert_eq!(granter.granted(), [(PID, 77), (PID, 77), (PID, 78)]);
    let status = fake.client().status().unwrap();
    assert_eq!((status.pid, status.holder), (PID, Some(pid(78))));

    running.terminate(&fake);
}

#[test]
fn failed_grant_is_an_error_reply() {
    let (fake, granter, target) = controller();
    granter.fail(Some("no ptrace for you"));
    let running = start(controller_over(&fake, &granter, &target));

    assert_grant_refused(&fake, 77, "Grant failed: no ptrace for you");
    assert_eq!(granter.attempts(), 2);
    assert!(granter.granted().is_empty());

    // The controller carries on, and a later grant can succeed.
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    granter.fail(None);
    fake.client().grant_access(pid(77)).unwrap();
    assert_eq!(granter.granted(), [(PID, 77)]);
    assert_eq!(granter.attempts(), 3);

    running.terminate(&fake);
}

#[test]
fn revoke_withdraws_the_grant() {
    let (fake, granter, _, running) = started();

    let mut session = fake.granted(77);
    session.revoke(pid(77)).unwrap();
    assert_eq!(granter.revoked(), [PID]);
    assert_eq!(fake.raw(b"REVOKE\n"), "READY\n");
    assert_eq!(granter.revoked(), [PID, PID]);

    granter.fail(Some("prctl failed"));
    assert_eq!(
        fake.raw(b"REVOKE\n"),
        "ERROR: Revoke failed: prctl failed\n"
    );
    let err = session.revoke(pid(77)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(err.message(), "Revoke failed: prctl failed");
    assert_eq!(granter.revoked(), [PID, PID]);

    running.terminate(&fake);
}

#[test]
fn a_client_cannot_revoke_a_grant_another_client_took_over() {
    let (fake, granter, _, running) = started();

    let mut first = fake.granted(77);
    // A second client takes the grant over (Yama keeps one ptracer).
    let mut second = fake.client().session().unwrap();
    second.take_over(pid(88)).unwrap();
    assert_eq!(granter.granted(), [(PID, 77), (PID, 88)]);
    // The log says who took it over from whom; asking again for the grant
    // one holds takes nothing over.
    second.grant_access(pid(88)).unwrap();
    let grants: Vec<String> = running
        .logged()
        .into_iter()
        .filter(|(level, line)| *level == log::Level::Info && line.starts_with("granted"))
        .map(|(_, line)| line)
        .collect();
    assert_eq!(
        grants,
        [
            "granted PID 77 access to target 4242",
            "granted PID 88 access to target 4242, taking it over from PID 77",
            "granted PID 88 access to target 4242",
        ]
    );
    // The first one detaches and revokes: the second keeps its grant.
    let err = first.revoke(pid(77)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(
        err.message(),
        "The grant is held by client PID 88, not PID 77: nothing revoked"
    );
    assert!(granter.revoked().is_empty());
    assert_eq!(
        fake.raw(b"revoke 77\n"),
        "error : The grant is held by client PID 88, not PID 77: nothing revoked\n"
    );
    // The holder itself may revoke.
    second.revoke(pid(88)).unwrap();
    assert_eq!(granter.revoked(), [PID]);

    running.terminate(&fake);
}

#[test]
fn bad_requests_get_an_error_and_serving_goes_on() {
    let (fake, granter, target, running) = started();

    let mut long = b"GET_TARGET_PID ".to_vec();
    long.resize(MAX_LINE + 1000, b'A');
    long.push(b'\n');
    let cases: &[(&[u8], &str)] = &[
        (b"FOO\n", "ERROR: Unknown command: FOO\n"),
        (b"ATTACH 12\n", "ERROR: Unknown command: ATTACH\n"),
        (b"GRANT_ACCESS abc\n", "ERROR: Invalid PID\n"),
        (b"GRANT_ACCESS 0\n", "ERROR: Invalid PID\n"),
        (b"GRANT_ACCESS -3\n", "ERROR: Invalid PID\n"),
        (b"GRANT_ACCESS\n", "ERROR: Invalid PID\n"),
        (b"GRANT_ACCESS 1 2\n", "ERROR: Invalid PID\n"),
        (b"TERMINATE now\n", "ERROR: TERMINATE takes no argument\n"),
        (&long, "ERROR: Request longer than 4096 bytes\n"),
    ];
    for (line, reply) in cases {
        assert_eq!(fake.raw(line), *reply, "{:?}", lossy(line));
        // Still serving, and nothing was done on the bad request's behalf.
        assert_eq!(fake.raw(b"GET_TARGET_PID\n"), "TARGET_PID 4242\n");
    }
    // Lines without a command word are answered in the documented
    // (uppercase) form.
    let wordless: &[(&[u8], &str)] = &[
        (b"\n", "ERROR: Empty request\n"),
        (b"  \n", "ERROR: Empty request\n"),
        (b"\xff\xfe\n", "ERROR: Request is not valid UTF-8\n"),
    ];
    for (line, reply) in wordless {
        assert_eq!(fake.raw(line), *reply, "{:?}", lossy(line));
        assert_eq!(fake.raw(b"GET_TARGET_PID\n"), "TARGET_PID 4242\n");
    }
    assert_eq!(granter.attempts(), 0);
    assert_eq!(target.terminates(), 0);
    running.assert_running();

    running.terminate(&fake);
}

#[test]
fn lowercase_dialect_round_trip() {
    // Through a one-request-at-a-time listener built on `exchange`.
    let fake = Fake::with(FakeConfig {
        serial: true,
        ..FakeConfig::default()
    });
    let (granter, target) = (Recorder::default(), Pretend::new());
    let running = start(controller_over(&fake, &granter, &target));

    assert_eq!(fake.raw(b"get_target_pid\n"), "target_pid 4242\n");
    assert_eq!(fake.raw(b"grant_access 42\n"), "ready\n");
    assert_eq!(granter.granted(), [(PID, 42)]);
    assert_eq!(fake.raw(b"revoke\n"), "ready\n");
    assert_eq!(fake.raw(b"bogus\n"), "error : Unknown command: bogus\n");
    assert_eq!(fake.raw(b"grant_access x\n"), "error : Invalid PID\n");
    granter.fail(Some("nope"));
    assert_eq!(
        fake.raw(b"grant_access 42\n"),
        "error : Grant failed: nope\n"
    );
    assert_eq!(fake.raw(b"terminate\n"), "ready\n");
    assert_eq!(running.join().unwrap(), ExitStatus::Signal(15));
    assert_eq!(target.terminates(), 1);
}

// ---------------------------------------------------------------------------
// Stopping.

#[test]
fn terminate_replies_ready_then_stops_the_target() {
    let fake = Fake::new();
    let target = Pretend::with(PretendConfig {
        reply_before_terminate: Some(fake.0.delivered.1.clone()),
        ..PretendConfig::default()
    });
    let running = start(controller_over(&fake, &Recorder::default(), &target));

    assert_eq!(running.terminate(&fake), ExitStatus::Signal(15));
    assert_eq!(target.terminates(), 1);
    assert_eq!(target.kills(), 0, "killed although it obeyed terminate()");
    // terminate() came after the READY had been sent, not before.
    assert_eq!(
        *target.0.seen_before_terminate.lock().unwrap(),
        [Some("READY\n".to_owned())]
    );
    assert_listener_cleaned_up(&fake);
}

#[test]
fn target_ignoring_terminate_is_killed_after_the_grace_period() {
    let fake = Fake::new();
    let target = Pretend::stubborn();
    let running = start(controller_over(&fake, &Recorder::default(), &target).grace(SHORT_GRACE));

    assert_eq!(running.terminate(&fake), ExitStatus::Signal(9));
    assert_eq!(target.terminates(), 1);
    assert_eq!(target.kills(), 1);
    assert_listener_cleaned_up(&fake);
}

/// A target frozen by a cgroup v1 freezer dies only once thawed: the
/// controller kills it and ends without it, the grant that waited on it
/// answered.
#[test]
fn a_killed_target_that_stays_frozen_is_not_waited_for() {
    let (fake, granter, target) = controller();
    let started = granter.stick(Some(Stuck::UntilDeadline));
    let running = start(
        controller_over(&fake, &granter, &target)
            .grace(SHORT_GRACE)
            .grant_deadline(HANG),
    );
    let reply = fake.raw_async(b"GRANT_ACCESS 77\n");
    started.recv_timeout(HANG).expect("the grant did not start");
    // Frozen during the grant (one asked of a frozen target is refused).
    target.0.frozen.store(true, SeqCst);
    let asked = Instant::now();
    assert_eq!(running.terminate(&fake), ExitStatus::Signal(9));
    let took = asked.elapsed();
    assert!(took < SHORT_GRACE + Duration::from_secs(2), "took {took:?}");
    assert_eq!(target.terminates(), 1);
    assert_eq!(target.kills(), 1);
    assert_eq!(
        String::from_utf8(reply.recv_timeout(HANG).unwrap().unwrap()).unwrap(),
        "ERROR: The controller is shutting down\n"
    );
    assert_listener_cleaned_up(&fake);
}

/// A killed target that is not frozen is waited for, however long it
/// takes to end.
#[test]
fn a_killed_target_that_is_not_frozen_is_waited_for() {
    let fake = Fake::new();
    let target = Pretend::with(PretendConfig {
        ignore_terminate: true,
        ignore_kill: true,
        ..PretendConfig::default()
    });
    let running = start(controller_over(&fake, &Recorder::default(), &target).grace(SHORT_GRACE));
    fake.client().terminate().unwrap();
    // Past the grace period and a few looks at the freezer.
    thread::sleep(SHORT_GRACE + Duration::from_millis(1600));
    assert_eq!(target.kills(), 1);
    running.assert_running();
    // One look every 500 ms, not a busy loop.
    let looks = target.0.frozen_looks.load(SeqCst);
    assert!((1..=10).contains(&looks), "{looks} looks at the freezer");
    target.exit(ExitStatus::Signal(9));
    assert_eq!(running.join().unwrap(), ExitStatus::Signal(9));
}

#[test]
fn no_grant_while_shutting_down() {
    let (fake, granter, _) = controller();
    let target = Pretend::stubborn();
    let running = start(controller_over(&fake, &granter, &target).grace(LONG_GRACE));

    fake.client().terminate().unwrap();
    assert_grant_refused(&fake, 77, "The controller is shutting down");
    assert_eq!(granter.attempts(), 0);
    // Other requests are still answered while the target is ending.
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    running.assert_running();

    target.exit(ExitStatus::Code(0));
    assert_eq!(running.join().unwrap(), ExitStatus::Code(0));
    assert_eq!(target.kills(), 0);
}

#[test]
fn shutdown_handle_stops_the_controller() {
    let (fake, granter, target) = controller();
    let controller = controller_over(&fake, &granter, &target);
    let handle = controller.shutdown_handle();
    let running = start(controller);

    assert_eq!(fake.client().target_pid().unwrap(), PID);
    running.assert_running();
    handle.shutdown();
    assert_eq!(running.join().unwrap(), ExitStatus::Signal(15));
    assert_eq!(target.terminates(), 1);
    assert_eq!(target.kills(), 0);
    assert_listener_cleaned_up(&fake);
    handle.shutdown(); // harmless once the controller is gone
}

#[test]
fn shutdown_handle_kills_a_stubborn_target() {
    let fake = Fake::new();
    let target = Pretend::stubborn();
    let controller = controller_over(&fake, &Recorder::default(), &target).grace(SHORT_GRACE);
    let handle = controller.shutdown_handle();
    // Asked before it even runs: it starts the target, then stops it.
    handle.shutdown();
    let running = start(controller);

    assert_eq!(running.join().unwrap(), ExitStatus::Signal(9));
    assert_eq!(target.spawns(), 1);
    assert_eq!(target.terminates(), 1);
    assert_eq!(target.kills(), 1);
}

// ---------------------------------------------------------------------------
// The target ending on its own.

#[test]
fn run_returns_the_status_of_a_target_that_ended_on_its_own() {
    for status in [
        ExitStatus::Code(0),
        ExitStatus::Code(3),
        ExitStatus::Signal(11),
    ] {
        let (fake, _, target, running) = started();
        assert_eq!(fake.client().target_pid().unwrap(), PID);

        // Another process's exit is not the target's.
        target.report(pid(999), ExitStatus::Code(1));
        assert_eq!(fake.client().target_pid().unwrap(), PID);
        running.assert_running();

        target.exit(status);
        assert_eq!(running.join().unwrap(), status);
        assert_eq!(target.terminates(), 0, "{status}");
        assert_eq!(target.kills(), 0, "{status}");
        assert_listener_cleaned_up(&fake);
    }
}

#[test]
fn requests_pending_when_the_target_ends_are_answered() {
    let (entered_tx, entered) = bounded(1);
    let (go, go_rx) = bounded(1);
    let fake = Fake::with(FakeConfig {
        stop_gate: Some((entered_tx, go_rx)),
        ..FakeConfig::default()
    });
    let (granter, target) = (Recorder::default(), Pretend::new());
    let running = start(controller_over(&fake, &granter, &target));
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    fake.0.queued.1.recv_timeout(HANG).unwrap(); // that request's

    // The target ends; the controller, on its way out, stops the listener
    // (held at the gate) while requests are still coming in.
    target.exit(ExitStatus::Code(0));
    entered
        .recv_timeout(HANG)
        .expect("the controller did not stop the listener");
    let lines: [&[u8]; 3] = [
        b"GET_TARGET_PID\n",
        b"GRANT_ACCESS 5\n",
        b"get_target_pid\n",
    ];
    let replies: Vec<_> = lines.iter().map(|line| fake.raw_async(line)).collect();
    for _ in lines {
        fake.0
            .queued
            .1
            .recv_timeout(HANG)
            .expect("request not handed to the controller");
    }
    go.send(()).unwrap();

    assert_eq!(running.join().unwrap(), ExitStatus::Code(0));
    let replies: Vec<_> = replies
        .into_iter()
        .map(|reply| {
            let reply = reply.recv_timeout(HANG).expect("a client hangs");
            lossy(&reply.expect("no reply"))
        })
        .collect();
    assert_eq!(
        replies,
        [
            "ERROR: Target process not running\n",
            "ERROR: Target process not running\n",
            "error : Target process not running\n",
        ]
    );
    assert_eq!(granter.attempts(), 0);
    assert_listener_cleaned_up(&fake);
}

#[test]
fn losing_the_target_is_an_error_and_cleans_up() {
    let (fake, _, target, running) = started();
    assert_eq!(fake.client().target_pid().unwrap(), PID);

    target.lose_target();
    let err = running.join().unwrap_err();
    assert!(err.to_string().contains("lost its target"), "{err}");
    // Documented: on error, the target is not left running.
    assert_eq!(target.kills(), 1);
    assert_listener_cleaned_up(&fake);
}

// ---------------------------------------------------------------------------
// Start-up failures and clean-up.

#[test]
fn listen_failure_is_returned_and_nothing_is_spawned() {
    let fake = Fake::with(FakeConfig {
        listen_error: Some(io::ErrorKind::AddrInUse),
        ..FakeConfig::default()
    });
    let target = Pretend::new();
    let err = start(controller_over(&fake, &Recorder::default(), &target))
        .join()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    assert_eq!(fake.0.listens.load(SeqCst), 1);
    assert_eq!(target.spawns(), 0);
}

#[test]
fn spawn_failure_is_returned_and_the_listener_dropped() {
    let fake = Fake::new();
    let target = Pretend::with(PretendConfig {
        spawn_error: Some(io::ErrorKind::NotFound),
        ..PretendConfig::default()
    });
    let err = start(controller_over(&fake, &Recorder::default(), &target))
        .join()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert_eq!(target.spawns(), 1);
    assert_eq!(fake.0.listens.load(SeqCst), 1);
    assert_eq!(fake.0.dropped.load(SeqCst), 1, "listener not cleaned up");
    assert!(!fake.0.serving.load(SeqCst), "served without a target");
}

#[test]
fn run_joins_the_listener_before_returning() {
    // A listener slow to wind down: `run` must wait for it, then drop it.
    let fake = Fake::with(FakeConfig {
        linger: Duration::from_millis(200),
        ..FakeConfig::default()
    });
    let target = Pretend::new();
    let running = start(controller_over(&fake, &Recorder::default(), &target));
    assert_eq!(fake.client().target_pid().unwrap(), PID);

    target.exit(ExitStatus::Code(0));
    running.join().unwrap();
    assert_eq!(fake.0.stops.load(SeqCst), 1);
    assert_listener_cleaned_up(&fake);
}

#[test]
fn listener_failure_stops_the_target_once() {
    let fake = Fake::with(FakeConfig {
        serve_error: true,
        ..FakeConfig::default()
    });
    let target = Pretend::stubborn();
    let running = start(controller_over(&fake, &Recorder::default(), &target).grace(SHORT_GRACE));

    assert_eq!(running.join().unwrap(), ExitStatus::Signal(9));
    assert_eq!(
        target.terminates(),
        1,
        "asked the target to stop more than once"
    );
    assert_eq!(target.kills(), 1);
    assert_listener_cleaned_up(&fake);
}

// ---------------------------------------------------------------------------
// The client.

/// Runs `f` on a thread and returns its result, failing after [`HANG`].
fn within<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = bounded(1);
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG).expect("hung, or panicked")
}

#[test]
fn client_without_a_controller_is_not_running() {
    for kind in [io::ErrorKind::NotFound, io::ErrorKind::ConnectionRefused] {
        let fake = Fake::with(FakeConfig {
            connect_error: Some(kind),
            ..FakeConfig::default()
        });
        let err = fake.client().target_pid().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotRunning, "{kind:?}");
        assert_eq!(
            err.message(),
            "Controller not running (nothing listens at the fake address)"
        );
    }

    let fake = Fake::with(FakeConfig {
        connect_error: Some(io::ErrorKind::PermissionDenied),
        ..FakeConfig::default()
    });
    let err = fake.client().target_pid().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(
        err.message()
            .starts_with("Cannot reach the controller at the fake address"),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn client_times_out_naming_the_request() {
    // Nobody serves: requests wait on the wire forever.
    let fake = Fake::new();
    let client = Client::new(fake.clone()).timeout(Duration::from_millis(100));
    let quick = Client::new(fake)
        .timeout(Duration::from_millis(100))
        .grant_timeout(Duration::from_millis(300));
    let asked = Instant::now();
    let (pid, grant) = within(move || (client.target_pid(), quick.grant_access(pid(7))));
    // A grant is waited for longer: the controller may take long to answer.
    assert!(
        asked.elapsed() >= Duration::from_millis(400),
        "{:?}",
        asked.elapsed()
    );

    let err = pid.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(
        err.message()
            .starts_with("Timeout waiting for response to GET_TARGET_PID"),
        "{err}"
    );
    let err = grant.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.message().contains("GRANT_ACCESS 7"), "{err}");
}

#[test]
fn client_turns_error_replies_into_refused() {
    let (fake, server) = scripted(&[
        Some(b"ERROR: Grant failed: nope\n"),
        Some(b"error : Target process not running\n"),
    ]);
    let client = fake.client();
    let (first, second) = within(move || (client.grant_access(pid(9)), client.target_pid()));

    let err = first.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(err.message(), "Grant failed: nope");
    let err = second.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(err.message(), "Target process not running");
    assert_eq!(
        server.join().unwrap(),
        ["GRANT_ACCESS 9\n", "GET_TARGET_PID\n"]
    );
}

#[test]
fn client_rejects_replies_of_the_wrong_type() {
    let (fake, server) = scripted(&[
        Some(b"READY\n"),
        Some(b"TARGET_PID 5\n"),
        Some(b"hello\n"),
        Some(b"TARGET_PID \xff\n"),
        Some(b"TARGET_PID 5\n"),
    ]);
    let client = fake.client();
    let results = within(move || {
        [
            client.target_pid().map(drop),
            client.grant_access(pid(9)),
            client.terminate(),
            client.target_pid().map(drop),
            client.revoke(pid(9)),
        ]
    });
    for result in results {
        assert_eq!(result.unwrap_err().kind(), ErrorKind::MalformedReply);
    }
    // The client speaks the documented (uppercase) dialect.
    assert_eq!(
        server.join().unwrap(),
        [
            "GET_TARGET_PID\n",
            "GRANT_ACCESS 9\n",
            "TERMINATE\n",
            "GET_TARGET_PID\n",
            "REVOKE 9\n"
        ]
    );
}

#[test]
fn client_reports_a_controller_that_went_away() {
    let (fake, server) = scripted(&[None]);
    let client = fake.client();
    let err = within(move || client.target_pid()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(err.message().contains("went away"), "{err}");
    server.join().unwrap();
}

// ---------------------------------------------------------------------------
// Exit status.

#[test]
fn exit_status_shell_code() {
    assert_eq!(ExitStatus::Code(0).shell_code(), 0);
    assert_eq!(ExitStatus::Code(3).shell_code(), 3);
    assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    assert_eq!(ExitStatus::Signal(15).shell_code(), 143);
    assert!(ExitStatus::Code(0).success());
    assert!(!ExitStatus::Code(1).success());
    assert!(!ExitStatus::Signal(15).success());
    assert_eq!(ExitStatus::Code(3).to_string(), "exit code 3");
    assert_eq!(ExitStatus::Signal(9).to_string(), "signal 9");
}

#[test]
fn a_grant_ends_with_the_connection_that_asked_for_it() {
    let (fake, granter, _, running) = started();

    let client = fake.client();
    let session = fake.granted(77);
    // The listener knows which connection that is (it must never close it
    // as idle).
    let asked_on = fake.last_connection();
    assert_eq!(fake.grant_holders(), [asked_on]);
    // Other connections come and go: the grant stays.
    assert_eq!(client.status().unwrap().holder, Some(pid(77)));
    assert!(granter.revoked().is_empty());
    assert_eq!(fake.grant_holders(), [asked_on]);
    // The connection that asked closes: the grant is revoked.
    drop(session);
    let deadline = Instant::now() + HANG;
    while granter.revoked().is_empty() {
        assert!(Instant::now() < deadline, "grant not revoked on disconnect");
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(granter.revoked(), [PID]);
    assert_eq!(client.status().unwrap().holder, None);
    assert!(fake.grant_holders().is_empty());

    // A grant taken over by another connection is not revoked when the
    // first connection closes.
    let first = fake.granted(77);
    let mut second = client.session().unwrap();
    second.take_over(pid(88)).unwrap();
    assert_eq!(fake.grant_holders(), [fake.last_connection()]);
    drop(first);
    assert_eq!(client.status().unwrap().holder, Some(pid(88)));
    assert_eq!(granter.revoked(), [PID]);
    drop(second);
    let deadline = Instant::now() + HANG;
    while granter.revoked().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "taken-over grant not revoked on disconnect"
        );
        thread::sleep(Duration::from_millis(5));
    }

    running.terminate(&fake);
}

#[test]
fn status_reports_target_grant_and_extra_fields() {
    let (fake, _, _, running) = started_with(|c| {
        c.status_field("ptrace_scope", "1")
            .status_field("name", "demo")
    });
    let client = fake.client();
    let status = client.status().unwrap();
    assert_eq!(status.pid, PID);
    assert_eq!(status.state, "running");
    assert_eq!(status.granter, "recorder");
    assert_eq!(status.holder, None);
    assert_eq!(status.command, "pretend-target --flag");
    assert_eq!(status.get("ptrace_scope"), Some("1"));
    assert_eq!(status.get("name"), Some("demo"));
    // The fake transport cannot tell who asks, and says so; the recorder
    // adds no field of its own.
    let field = |key: &str, value: &str| (key.to_owned(), value.to_owned());
    assert_eq!(
        status.extra,
        [
            field("restarts", "0"),
            field("clients", "unauthenticated"),
            field("agent", "off"),
            field("attach", "ptrace"),
            field("ptrace_scope", "1"),
            field("name", "demo"),
            field("audit", "ok"),
        ]
    );
    let _session = fake.granted(5);
    assert_eq!(client.status().unwrap().holder, Some(pid(5)));
    assert!(fake
        .raw(b"status\n")
        .starts_with("status pid=4242 state=running uptime="));

    running.terminate(&fake);
}

/// Restarts `when` it should, 1 ms after the target ended.
fn restart_at_once(when: Restart) -> RestartPolicy {
    RestartPolicy::new(when).delays(Duration::from_millis(1), Duration::from_millis(1))
}

/// Restarts always, after a delay no test waits for: once the target ends,
/// a restart stays pending.
fn pending_restart() -> RestartPolicy {
    RestartPolicy::new(Restart::Always).delays(Duration::from_secs(600), Duration::from_secs(600))
}

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_failed_target_is_restarted_up_to_the_limit() {
    let policy = RestartPolicy::new(Restart::OnFailure)
        .delays(Duration::from_millis(20), Duration::from_millis(40))
        .max_restarts(2);
    let (fake, _, target, running) = started_with(|c| c.restart(policy));
    let client = fake.client();

    // A grant never carries over to the next process.
    let session = fake.granted(77);
    for restart in 1..=2 {
        wait_until("the target running", || target.spawns() == restart);
        target.exit(ExitStatus::Signal(11));
        wait_until("the restart", || target.spawns() == restart + 1);
        let status = client.status().unwrap();
        assert_eq!(status.get("restarts"), Some(restart.to_string().as_str()));
        assert_eq!(status.get("last_exit"), Some("139"));
        assert_eq!(status.holder, None);
    }
    // Past the limit the controller exits with the target's status.
    target.exit(ExitStatus::Code(4));
    assert_eq!(running.join().unwrap(), ExitStatus::Code(4));
    assert_eq!(target.spawns(), 3);
    drop(session);
}

#[test]
fn requests_while_restarting_say_so_and_terminate_ends_at_once() {
    // The controller is waiting to restart while we ask.
    let (fake, granter, target, running) = started_with(|c| c.restart(pending_restart()));
    let client = fake.client();
    wait_until("the target running", || target.spawns() == 1);
    target.exit(ExitStatus::Code(0));
    wait_until("the restart to be pending", || {
        client.status().is_ok_and(|s| s.state == "restarting")
    });
    let err = client.target_pid().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(
        err.message()
            .starts_with("Target process not running (restarting in"),
        "{err}"
    );
    assert!(client.grant_access(pid(5)).is_err());
    assert_eq!(granter.attempts(), 0);
    // Nothing to stop: the controller ends at once with the last status.
    assert_eq!(running.terminate(&fake), ExitStatus::Code(0));
    assert_eq!(target.spawns(), 1);
    assert_eq!(target.terminates(), 0);
}

#[test]
fn a_target_that_succeeds_is_not_restarted_on_failure_only() {
    let (_, _, target, running) = started_with(|c| c.restart(restart_at_once(Restart::OnFailure)));
    wait_until("the target running", || target.spawns() == 1);
    target.exit(ExitStatus::Code(0));
    assert_eq!(running.join().unwrap(), ExitStatus::Code(0));
    assert_eq!(target.spawns(), 1);
}

#[test]
fn a_restart_that_fails_is_tried_again_later_then_given_up() {
    // Two restarts: 500 ms after the end, then 1 s after the first failed.
    let policy = RestartPolicy::new(Restart::Always)
        .max_restarts(2)
        .delays(Duration::from_millis(500), Duration::from_secs(600));
    let (fake, _, target, running) = started_with(|c| c.restart(policy));
    let client = fake.client();
    wait_until("the target running", || target.spawns() == 1);
    target.fail_spawns(io::ErrorKind::NotFound);
    let ended = Instant::now();
    target.exit(ExitStatus::Code(1));
    wait_until("the first restart to fail", || target.spawns() >= 2);

    let err = client.target_pid().unwrap_err();
    let asked = Instant::now();
    let wait: u64 = err
        .message()
        .strip_prefix("Target process not running (restarting in ")
        .and_then(|rest| rest.strip_suffix(" ms)"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(wait <= 1000, "{err}");
    // The second restart is due 1 s after the first one failed, which was
    // 500 ms after the target ended at the earliest: unless this test was
    // held up that long, it is still to come.
    let due = ended + Duration::from_millis(1500);
    if let Some(left) = due.checked_duration_since(asked) {
        assert!(
            u128::from(wait) >= left.as_millis(),
            "{err}, asked {:?} after the end",
            asked - ended
        );
    }

    let err = running.join().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert_eq!(target.spawns(), 3);
}

#[test]
fn stack_is_the_inspectors_to_give() {
    let (fake, _, _, running) = started();
    // Without an inspector the controller cannot read stacks, and says so.
    let err = fake.client().stack().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(
        err.message(),
        "Cannot read the target's stacks: this controller cannot read its target's stacks"
    );
    running.terminate(&fake);

    /// Reads the stack of whichever process it is asked about.
    struct Reader;
    impl crate::Inspector for Reader {
        fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            let mut thread = ThreadStack::new(process.pid.get().into());
            thread.frames.push(Frame::new("<module>", "a.py", Some(1)));
            Ok(vec![thread])
        }
    }
    let (fake, _, _, running) = started_with(|c| c.inspector(Reader));
    assert_eq!(
        fake.client().stack().unwrap(),
        "Thread 4242, most recent call last:\n  File \"a.py\", line 1, in <module>\n"
    );
    running.terminate(&fake);
}

// ---------------------------------------------------------------------------
// Authorization.

#[test]
fn an_authenticated_client_is_granted_only_itself_and_its_descendants() {
    let (fake, granter, target) = controller();
    // 77 runs a debugger, 700, which runs a helper, 701; 88 is a stranger.
    target.table().add(700, 77, 700);
    target.table().add(701, 700, 701);
    let client = target.id_of(77);
    fake.authenticate(Some(client));
    let running = start(controller_over(&fake, &granter, &target));

    for (line, reply) in [
        ("GRANT_ACCESS 88\n", "ERROR: GRANT_ACCESS 88 refused: it must be your own process or one of its descendants (you are PID 77)\n"),
        ("grant_access 1 force\n", "error : GRANT_ACCESS 1 refused: it must be your own process or one of its descendants (you are PID 77)\n"),
        ("GRANT_ACCESS 4242\n", "ERROR: GRANT_ACCESS 4242 refused: it must be your own process or one of its descendants (you are PID 77)\n"),
        ("GRANT_ACCESS 31337\n", "ERROR: GRANT_ACCESS 31337 refused: it must be your own process or one of its descendants (you are PID 77)\n"),
    ] {
        assert_eq!(fake.raw(line.as_bytes()), reply, "{line:?}");
    }
    // Nothing reached the granter.
    assert_eq!(granter.attempts(), 0);
    assert_eq!(
        fake.client().status().unwrap().get("clients"),
        Some("authenticated")
    );
    assert_eq!(fake.raw(b"GRANT_ACCESS 701\n"), "READY\n");
    assert_eq!(fake.raw(b"GRANT_ACCESS 77\n"), "READY\n");
    assert_eq!(granter.granted(), [(PID, 701), (PID, 77)]);

    // A peer whose pid the transport could not tell may ask for nothing.
    fake.authenticate(None);
    assert_eq!(
        fake.raw(b"GRANT_ACCESS 77\n"),
        "ERROR: GRANT_ACCESS 77 refused: it must be your own process or one of its descendants (your PID is unknown)\n"
    );
    // Nor may a peer whose pid now names another process.
    fake.authenticate(Some(ProcessId {
        start_time: client.start_time + 1,
        ..client
    }));
    assert!(fake
        .raw(b"GRANT_ACCESS 77\n")
        .starts_with("ERROR: GRANT_ACCESS 77 refused"));
    assert_eq!(granter.attempts(), 2);

    running.terminate(&fake);
}

#[test]
fn a_grant_to_a_missing_process_is_refused_without_a_granter_call() {
    let (fake, granter, _, running) = started();
    assert_eq!(
        fake.raw(b"GRANT_ACCESS 31337\n"),
        "ERROR: Grant failed: no process with PID 31337\n"
    );
    assert_eq!(granter.attempts(), 0);
    running.terminate(&fake);
}

#[test]
fn a_grant_asked_for_a_thread_is_made_revoked_and_closed_as_its_process() {
    let (fake, granter, target) = controller();
    // 7701 is a thread of process 77.
    target.table().add(7701, 1, 7701);
    target.table().edit(7701, |info| info.process = pid(77));
    let running = start(controller_over(&fake, &granter, &target));
    let client = fake.client();

    let session = fake.granted(7701);
    assert_eq!(granter.granted(), [(PID, 77)]);
    assert_eq!(client.status().unwrap().holder, Some(pid(77)));
    // Another client is told who holds it: the process.
    assert_eq!(
        fake.raw(b"GRANT_ACCESS 88\n"),
        "ERROR: target is being debugged by client PID 77 (attach --force takes it over)\n"
    );
    // The connection closes: the grant, recorded under the process, goes.
    drop(session);
    wait_until("the grant revoked", || granter.revoked() == [PID]);
    assert_eq!(client.status().unwrap().holder, None);

    running.terminate(&fake);
}

#[test]
fn a_holder_that_exited_holds_nothing() {
    let (fake, granter, target, running) = started();
    let client = fake.client();
    let first = fake.granted(77);
    // 77 exits; its pid goes to another process.
    target.table().remove(77);
    assert_eq!(client.status().unwrap().holder, None);
    target.table().add(77, 1, 7777);
    assert_eq!(client.status().unwrap().holder, None);
    // So a second client needs no FORCE, and a REVOKE naming 88 is no
    // longer refused for 77's sake.
    let _second = fake.granted(88);
    assert_eq!(client.status().unwrap().holder, Some(pid(88)));
    // The first connection closes: the grant is no longer its own.
    drop(first);
    thread::sleep(Duration::from_millis(50));
    assert!(granter.revoked().is_empty());
    assert_eq!(client.status().unwrap().holder, Some(pid(88)));

    running.terminate(&fake);
}

#[test]
fn a_grant_made_over_named_pipes_outlives_every_connection() {
    // Connection 0: a transport without connections (named pipes).
    let (fake, granter, _, running) = started();
    let client = fake.client();
    client.grant_access(pid(77)).unwrap();
    // Every connection of the fake closed; the grant was tied to one of
    // them. A grant through a connectionless peer is tied to none:
    let wires = fake.0.clone();
    let (tx, rx) = bounded(1);
    wires
        .to_server
        .send((
            Peer::default(),
            Some((b"GRANT_ACCESS 88 FORCE\n".to_vec(), tx)),
        ))
        .unwrap();
    assert_eq!(rx.recv_timeout(HANG).unwrap().0, b"READY\n");
    wires.to_server.send((Peer::default(), None)).unwrap();
    thread::sleep(Duration::from_millis(50));
    assert_eq!(client.status().unwrap().holder, Some(pid(88)));
    // Only the first grant's connection closing revoked anything.
    assert_eq!(granter.revoked(), [PID]);

    running.terminate(&fake);
}

#[test]
fn a_grant_is_withdrawn_when_the_target_ends_and_never_carries_over() {
    let (fake, granter, target, running) =
        started_with(|c| c.restart(restart_at_once(Restart::Always)));
    let client = fake.client();
    let session = fake.granted(77);
    let first = target.identity();
    target.exit(ExitStatus::Code(1));
    wait_until("the restart", || target.spawns() == 2);
    // The revoke runs on the granter's thread: it may end after the restart.
    wait_until("the grant withdrawn", || granter.revoked() == [PID]);
    assert_ne!(target.identity(), first, "a restart is another process");
    assert_eq!(client.status().unwrap().holder, None);
    // The old grant's connection closing withdraws nothing more.
    drop(session);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(granter.revoked(), [PID]);

    running.terminate(&fake);
}

/// A grant the granter completes after its target ended is no grant, on
/// the target or on another process of its tree: its client hears so, the
/// grant is withdrawn again, and nobody holds one.
#[test]
fn a_grant_whose_target_ended_meanwhile_fails_and_does_not_stay() {
    for (request, process) in [
        (&b"GRANT_ACCESS 77\n"[..], PID),
        (b"GRANT_ACCESS 77 TARGET 5000\n", pid(5000)),
    ] {
        let (fake, granter, target, running) = started_tree_with(|c| c.restart(pending_restart()));
        let (done, report) = granter.hold_next_report();
        let grant = fake.raw_async(request);
        done.recv_timeout(HANG).expect("the grant was not made");
        // The target ends before the controller hears of the grant.
        target.exit(ExitStatus::Code(1));
        let client = fake.client();
        wait_until("the restart to be pending", || {
            client.status().is_ok_and(|s| s.state == "restarting")
        });
        report.send(()).unwrap();
        let grant = String::from_utf8(grant.recv_timeout(HANG).unwrap().unwrap()).unwrap();
        assert_eq!(
            grant,
            "ERROR: Grant failed: target PID 4242 exited during the grant\n"
        );
        assert_eq!(granter.granted(), [(process, 77)]);
        // It was made: it is withdrawn again.
        wait_until("the late grant withdrawn", || {
            granter.revoked() == [process]
        });
        let status = client.status().unwrap();
        assert_eq!((status.holder, status.grants.len()), (None, 0));
        assert_eq!(running.terminate(&fake), ExitStatus::Code(1));
    }
}

// ---------------------------------------------------------------------------
// Signals.

/// Starts `controller`, whose signals the test hands over, and waits until
/// it answers on `fake`: (its run, signals, suspensions).
fn with_fake_signals(
    fake: &Fake,
    controller: Controller<Fake, Recorder, Pretend>,
) -> (Running, Sender<crate::signals::Caught>, Receiver<()>) {
    let (signals, signal_rx) = bounded(16);
    let (suspended_tx, suspended) = unbounded();
    let running = start(controller.fake_signals(signal_rx, suspended_tx));
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    (running, signals, suspended)
}

fn caught(signal: i32, from_kernel: bool) -> crate::signals::Caught {
    crate::signals::Caught {
        signal,
        from_kernel,
    }
}

#[test]
fn a_stop_signal_from_a_process_is_passed_on_and_ends_the_controller() {
    for signal in crate::STOP_SIGNALS {
        let (fake, granter, target) = controller();
        let (running, signals, _) =
            with_fake_signals(&fake, controller_over(&fake, &granter, &target));
        signals.send(caught(signal, false)).unwrap();
        wait_until("the signal passed on", || target.signals() == [signal]);
        target.exit(ExitStatus::Signal(signal));
        assert_eq!(running.join().unwrap(), ExitStatus::Signal(signal));
        assert_eq!(target.terminates(), 0);
        assert_eq!(target.kills(), 0);
    }
}

#[test]
fn a_stop_signal_from_the_terminal_is_not_sent_twice_but_still_ends_the_controller() {
    // The target shares the terminal: the kernel sent it the signal too.
    let fake = Fake::new();
    let target = Pretend::stubborn();
    let (running, signals, _) = with_fake_signals(
        &fake,
        controller_over(&fake, &Recorder::default(), &target).grace(SHORT_GRACE),
    );
    let asked = Instant::now();
    signals.send(caught(libc_sigint(), true)).unwrap();
    // It ignores the terminal's Ctrl-C: killed after the grace period.
    assert_eq!(running.join().unwrap(), ExitStatus::Signal(9));
    assert!(
        asked.elapsed() >= SHORT_GRACE,
        "killed before the grace period"
    );
    assert!(target.signals().is_empty(), "{:?}", target.signals());
    assert_eq!(target.kills(), 1);

    // More of them while stopping do not re-arm the timer: sent every
    // 50 ms for up to 10 s, they would put the kill off past that.
    let fake = Fake::new();
    let target = Pretend::stubborn();
    let (running, signals, _) = with_fake_signals(
        &fake,
        controller_over(&fake, &Recorder::default(), &target).grace(Duration::from_millis(500)),
    );
    let until = Instant::now() + Duration::from_secs(10);
    while target.kills() == 0 && Instant::now() < until {
        let _ = signals.try_send(caught(libc_sigint(), true));
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(target.kills(), 1, "the kill timer was put off");
    assert_eq!(running.join().unwrap(), ExitStatus::Signal(9));
}

#[test]
fn a_terminal_signal_reaches_a_target_in_its_own_group() {
    // In a group of its own the target does not share the terminal: the
    // controller passes what the terminal sent.
    let fake = Fake::new();
    let target = Pretend::with(PretendConfig {
        own_group: true,
        ..PretendConfig::default()
    });
    let (running, signals, _) =
        with_fake_signals(&fake, controller_over(&fake, &Recorder::default(), &target));
    signals.send(caught(libc_sigwinch(), true)).unwrap();
    signals.send(caught(libc_sigint(), true)).unwrap();
    wait_until("both passed on", || target.signals().len() == 2);
    assert_eq!(target.signals(), [libc_sigwinch(), libc_sigint()]);
    target.exit(ExitStatus::Code(0));
    running.join().unwrap();
}

#[test]
fn other_signals_are_passed_on_once_and_only_when_not_from_the_terminal() {
    let (fake, granter, target) = controller();
    let (running, signals, suspended) =
        with_fake_signals(&fake, controller_over(&fake, &granter, &target));
    for signal in crate::PASS_SIGNALS {
        signals.send(caught(signal, false)).unwrap();
        signals.send(caught(signal, true)).unwrap();
    }
    wait_until("all passed on", || {
        target.signals().len() == crate::PASS_SIGNALS.len()
    });
    // A status round trip: every signal has been handled by now.
    fake.client().status().unwrap();
    assert_eq!(target.signals(), crate::PASS_SIGNALS);
    assert!(suspended.is_empty());
    running.assert_running();
    running.terminate(&fake);
}

#[test]
fn a_suspend_signal_is_passed_on_then_suspends_the_controller() {
    let (fake, granter, target) = controller();
    let (running, signals, suspended) =
        with_fake_signals(&fake, controller_over(&fake, &granter, &target));
    let tstp = crate::SUSPEND_SIGNALS[0];
    signals.send(caught(tstp, false)).unwrap();
    suspended
        .recv_timeout(HANG)
        .expect("the controller did not suspend");
    assert_eq!(target.signals(), [tstp]);
    // From the terminal, the target got it already: only the controller stops.
    signals.send(caught(tstp, true)).unwrap();
    suspended
        .recv_timeout(HANG)
        .expect("the controller did not suspend");
    assert_eq!(target.signals(), [tstp]);
    running.assert_running();
    running.terminate(&fake);
}

#[test]
fn signals_while_restarting_reach_no_target_and_a_stop_signal_ends_at_once() {
    let (fake, granter, target) = controller();
    let (running, signals, _) = with_fake_signals(
        &fake,
        controller_over(&fake, &granter, &target).restart(pending_restart()),
    );
    let client = fake.client();
    wait_until("the target running", || target.spawns() == 1);
    target.exit(ExitStatus::Code(3));
    wait_until("the restart to be pending", || {
        client.status().is_ok_and(|s| s.state == "restarting")
    });
    signals.send(caught(libc_sigwinch(), false)).unwrap();
    client.status().unwrap();
    assert!(target.signals().is_empty());
    signals.send(caught(libc_sigint(), true)).unwrap();
    assert_eq!(running.join().unwrap(), ExitStatus::Code(3));
    assert!(target.signals().is_empty());
    assert_eq!(target.spawns(), 1);
}

#[test]
fn caught_signals_sent_by_a_process_are_passed_on() {
    // Real signals: the controller catches them itself. One this process
    // sends itself, as `kill` would, is passed on although the target shares
    // the terminal. SIGWINCH is ignored by default: harmless should nothing
    // catch it.
    //
    // signal-hook never gives a signal its default action back: the stop
    // signals the controller catches would stay caught, and so ignored, in
    // this test process for good, a test runner's SIGTERM or a Ctrl-C
    // included. Their default actions run beside the controller's instead.
    for signal in crate::STOP_SIGNALS
        .into_iter()
        .chain(crate::SUSPEND_SIGNALS)
    {
        signal_hook::flag::register_conditional_default(signal, Arc::new(AtomicBool::new(true)))
            .unwrap();
    }
    let sigwinch = signal_hook::consts::SIGWINCH;
    let (fake, _, target, running) = started_with(|c| c.handle_signals(true));
    // Answering, it catches signals already.
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    signal_hook::low_level::raise(sigwinch).unwrap();
    wait_until("the signal passed on", || target.signals() == [sigwinch]);
    assert_eq!(running.terminate(&fake), ExitStatus::Signal(15));
    assert_eq!(target.signals(), [sigwinch]);
}

fn libc_sigint() -> i32 {
    crate::STOP_SIGNALS[0]
}

fn libc_sigwinch() -> i32 {
    crate::PASS_SIGNALS[2]
}

// ---------------------------------------------------------------------------
// Work off the loop: grants and stack reads with deadlines.

#[test]
fn a_grant_waiting_on_a_frozen_target_holds_up_no_other_request() {
    let (fake, granter, target) = controller();
    let started = granter.stick(Some(Stuck::UntilDeadline));
    let deadline = Duration::from_millis(1500);
    let running = start(controller_over(&fake, &granter, &target).grant_deadline(deadline));
    let asked = Instant::now();
    let reply = fake.raw_async(b"GRANT_ACCESS 77\n");
    started.recv_timeout(HANG).expect("the grant did not start");
    // Frozen during the grant (one asked of a frozen target is refused).
    target.0.frozen.store(true, SeqCst);
    // Meanwhile everything else is answered at once.
    let client = fake.client().timeout(Duration::from_millis(500));
    for _ in 0..20 {
        assert_eq!(client.target_pid().unwrap(), PID);
        let status = client.status().unwrap();
        assert_eq!(status.get("target_state"), Some("frozen"));
    }
    assert!(
        asked.elapsed() < deadline,
        "other requests waited for the grant"
    );
    // The grant's client hears why, after the deadline and not long after.
    let reply = String::from_utf8(reply.recv_timeout(HANG).unwrap().unwrap()).unwrap();
    let took = asked.elapsed();
    assert!(
        reply.starts_with("ERROR: Grant failed: ") && reply.contains("did not stop in time"),
        "{reply}"
    );
    assert!(took >= deadline, "answered before the deadline: {took:?}");
    assert!(granter.granted().is_empty());
    assert_eq!(fake.client().status().unwrap().holder, None);
    // Thawed, the next grant goes through.
    target.0.frozen.store(false, SeqCst);
    granter.stick(None);
    fake.client().grant_access(pid(77)).unwrap();
    assert_eq!(granter.granted(), [(PID, 77)]);
    running.terminate(&fake);
}

#[test]
fn a_grant_the_granter_does_not_report_is_answered_at_its_deadline() {
    // The granter overruns its deadline: the controller does not wait for
    // it, says what it sees of the target, and withdraws the grant when it
    // does complete, as its client was told it failed.
    let (fake, granter, target) = controller();
    let started = granter.stick(Some(Stuck::Late(Duration::from_millis(1200))));
    let running =
        start(controller_over(&fake, &granter, &target).grant_deadline(Duration::from_millis(300)));
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    let reply = fake.raw_async(b"GRANT_ACCESS 77\n");
    started.recv_timeout(HANG).unwrap();
    target.table().edit(PID.get(), |info| {
        info.state = crate::ProcessState::DiskSleep
    });
    assert_eq!(
        fake.client().status().unwrap().get("target_state"),
        Some("uninterruptible-sleep")
    );
    let reply = String::from_utf8(reply.recv_timeout(HANG).unwrap().unwrap()).unwrap();
    assert_eq!(
        reply,
        "ERROR: Grant failed: no answer within its deadline: the target is in uninterruptible \
         sleep (state D)\n"
    );
    // The late grant went through in the granter, and was withdrawn at once.
    wait_until("the late grant withdrawn", || granter.revoked() == [PID]);
    assert_eq!(granter.granted(), [(PID, 77)]);
    assert_eq!(fake.client().status().unwrap().holder, None);
    running.terminate(&fake);
}

/// A grant the granter made in time is answered as made, however late the
/// granter reports it: the controller never tells a client that a grant in
/// force failed.
#[test]
fn a_grant_made_in_time_and_reported_late_is_answered_as_made() {
    let (fake, granter, target) = controller();
    let deadline = Duration::from_millis(100);
    let running = start(controller_over(&fake, &granter, &target).grant_deadline(deadline));
    let (done, report) = granter.hold_next_report();
    let grant = fake.raw_async(b"GRANT_ACCESS 77\n");
    done.recv_timeout(HANG).expect("the grant was not made");
    // The report comes past the deadline and the time the controller
    // gives a worker to report.
    thread::sleep(deadline + Duration::from_millis(500));
    report.send(()).unwrap();
    let grant = String::from_utf8(grant.recv_timeout(HANG).unwrap().unwrap()).unwrap();
    assert_eq!(grant, "READY\n");
    assert_eq!(granter.granted(), [(PID, 77)]);
    running.terminate(&fake);
}

#[test]
fn stopping_calls_off_a_grant_in_progress() {
    let (fake, granter, target) = controller();
    let started = granter.stick(Some(Stuck::UntilDeadline));
    let running =
        start(controller_over(&fake, &granter, &target).grant_deadline(Duration::from_secs(600)));
    let reply = fake.raw_async(b"GRANT_ACCESS 77\n");
    started.recv_timeout(HANG).unwrap();
    let asked = Instant::now();
    fake.client().terminate().unwrap();
    let reply = String::from_utf8(reply.recv_timeout(HANG).unwrap().unwrap()).unwrap();
    assert_eq!(reply, "ERROR: The controller is shutting down\n");
    assert_eq!(running.join().unwrap(), ExitStatus::Signal(15));
    assert!(asked.elapsed() < Duration::from_secs(60));
    // The granter was told to give up.
    wait_until("the deadline called off", || {
        granter.deadlines().iter().all(Deadline::is_cancelled)
    });
}

#[test]
fn a_slow_stack_read_holds_up_no_other_request_and_gets_an_answer() {
    /// Reads a stack only after the test says so.
    struct Gated(Mutex<Receiver<()>>);
    impl crate::Inspector for Gated {
        fn stacks(&self, _process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            let _ = self.0.lock().unwrap().recv_timeout(HANG);
            Ok(vec![ThreadStack::new(1)])
        }
    }
    let (go, gate) = unbounded();
    let (fake, _, _, running) = started_with(|c| {
        c.inspector(Gated(Mutex::new(gate)))
            .stack_deadline(Duration::from_millis(300))
    });
    let reply = fake.raw_async(b"STACK\n");
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    let reply = String::from_utf8(reply.recv_timeout(HANG).unwrap().unwrap()).unwrap();
    assert!(
        reply.starts_with("ERROR: Cannot read the target's stacks: no answer within its deadline"),
        "{reply}"
    );
    // Once the reader is free again, the next read is answered.
    go.send(()).unwrap();
    go.send(()).unwrap();
    assert_eq!(
        fake.client().stack().unwrap(),
        "Thread 1, most recent call last:\n  (no Python frame)\n"
    );
    running.terminate(&fake);
}

#[test]
fn an_inspector_that_panics_gets_an_error_reply_and_the_next_read_an_answer() {
    /// Panics at its first read (as a bug on a target's garbage would).
    struct Buggy(AtomicBool);
    impl crate::Inspector for Buggy {
        fn stacks(&self, _process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            if !self.0.swap(true, SeqCst) {
                panic!("attempt to add with overflow");
            }
            Ok(vec![ThreadStack::new(1)])
        }
    }
    let (fake, _, _, running) = started_with(|c| c.inspector(Buggy(AtomicBool::new(false))));
    assert_eq!(
        fake.raw(b"STACK\n"),
        "ERROR: Cannot read the target's stacks: it failed: a bug in the controller \
         (it panicked: attempt to add with overflow)\n"
    );
    assert_eq!(
        fake.client().stack().unwrap(),
        "Thread 1, most recent call last:\n  (no Python frame)\n"
    );
    running.terminate(&fake);
}

#[test]
fn only_the_grants_connection_or_its_holder_may_revoke_it() {
    let (fake, granter, target, running) = started();
    let (holder, stranger) = (target.id_of(77), target.id_of(88));
    fake.authenticate(Some(holder));
    let mut session = fake.granted(77);

    // Another process, on another connection: refused, both ways of asking.
    fake.authenticate(Some(stranger));
    let refusal = "ERROR: REVOKE refused: the grant is held by client PID 77; only its \
                   connection or that process may withdraw it (attach --force takes it over)\n";
    assert_eq!(fake.raw(b"REVOKE\n"), refusal);
    assert_eq!(fake.raw(b"REVOKE 77\n"), refusal);
    assert!(granter.revoked().is_empty());
    assert_eq!(fake.client().status().unwrap().holder, Some(pid(77)));

    // The holder process itself, on another connection: withdrawn.
    fake.authenticate(Some(holder));
    assert_eq!(fake.raw(b"REVOKE 77\n"), "READY\n");
    wait_until("the revoke", || granter.revoked() == [PID]);
    assert_eq!(fake.client().status().unwrap().holder, None);

    // And on the grant's own connection, whoever holds its end.
    session.grant_access(pid(77)).unwrap();
    fake.authenticate(Some(stranger));
    session.revoke(pid(77)).unwrap();
    wait_until("the second revoke", || granter.revoked().len() == 2);
    running.terminate(&fake);
}

// ---------------------------------------------------------------------------
// Grants in progress: another client's grant, a REVOKE, or the asking
// connection's end while a grant is being made.

/// A request's reply, with its connection, still open.
type Answered = Receiver<(io::Result<Vec<u8>>, FakeConnection)>;

/// Sends `line` on a connection of its own and waits until the granter has
/// started on it (it is held there for a while: see [`Stuck::Late`]).
fn grant_in_progress(fake: &Fake, granter: &Recorder, line: &[u8]) -> Answered {
    let started = granter.stick(Some(Stuck::Late(Duration::from_millis(300))));
    let (tx, rx) = bounded(1);
    let mut connection = fake.connect(HANG).unwrap();
    let line = line.to_vec();
    thread::spawn(move || {
        let reply = connection.round_trip(&line, Instant::now() + HANG);
        let _ = tx.send((reply, connection));
    });
    started.recv_timeout(HANG).expect("the grant started");
    // Only that one is held up.
    granter.stick(None);
    rx
}

/// The reply, and the connection it came on (a grant lasts as long as it).
fn text(reply: Answered) -> (String, FakeConnection) {
    let (reply, connection) = reply.recv_timeout(HANG).unwrap();
    (String::from_utf8(reply.unwrap()).unwrap(), connection)
}

#[test]
fn a_grant_in_progress_is_not_replaced_by_another_clients_grant() {
    let (fake, granter, _, running) = started();

    let first = grant_in_progress(&fake, &granter, b"GRANT_ACCESS 77\n");
    // Yama keeps one ptracer: a second grant, made after the first, would
    // take the first client's access away while it was told READY; and it
    // would wait behind the first. Even with FORCE it is refused.
    for line in [&b"GRANT_ACCESS 88\n"[..], b"GRANT_ACCESS 88 FORCE\n"] {
        assert_eq!(
            fake.raw(line),
            "ERROR: a grant on PID 4242 is already in progress\n"
        );
    }
    let (reply, _first) = text(first);
    assert_eq!(reply, "READY\n");
    assert_eq!(granter.granted(), [(PID, 77)]);
    assert_eq!(fake.client().status().unwrap().holder, Some(pid(77)));
    // Once made, taking it over is possible.
    let mut second = fake.connect(HANG).unwrap();
    let reply = second.round_trip(b"GRANT_ACCESS 88 FORCE\n", Instant::now() + HANG);
    assert_eq!(reply.unwrap(), b"READY\n");
    assert_eq!(fake.client().status().unwrap().holder, Some(pid(88)));

    running.terminate(&fake);
}

#[test]
fn a_revoke_from_another_process_during_a_grant_is_refused() {
    let (fake, granter, target, running) = started();
    let holder = target.id_of(77);
    fake.authenticate(Some(holder));
    let grant = grant_in_progress(&fake, &granter, b"GRANT_ACCESS 77\n");

    // Nobody holds the grant yet, but it is being made: a stranger's
    // REVOKE, queued behind it, would withdraw it once its client was told
    // READY.
    fake.authenticate(Some(target.id_of(88)));
    let refusal = "ERROR: REVOKE refused: the grant is held by client PID 77; only its \
                   connection or that process may withdraw it (attach --force takes it over)\n";
    assert_eq!(fake.raw(b"REVOKE\n"), refusal);
    let (reply, _grant) = text(grant);
    assert_eq!(reply, "READY\n");
    assert!(granter.revoked().is_empty());
    assert_eq!(fake.client().status().unwrap().holder, Some(pid(77)));

    running.terminate(&fake);
}

#[test]
fn a_revoke_by_the_holder_during_its_grant_leaves_nobody_recorded() {
    let (fake, granter, target, running) = started();
    fake.authenticate(Some(target.id_of(77)));
    let grant = grant_in_progress(&fake, &granter, b"GRANT_ACCESS 77\n");

    // The process being granted withdraws it, on another connection: the
    // revoke runs after the grant, so nobody holds it in the end.
    assert_eq!(fake.raw(b"REVOKE 77\n"), "READY\n");
    assert_eq!(
        text(grant).0,
        "ERROR: Grant failed: a REVOKE that came during it withdrew it\n"
    );
    assert_eq!(granter.granted(), [(PID, 77)]);
    assert_eq!(granter.revoked(), [PID]);
    assert_eq!(fake.client().status().unwrap().holder, None);

    running.terminate(&fake);
}

#[test]
fn a_grant_whose_connection_closed_during_it_does_not_stay() {
    let (fake, granter, _, running) = started();
    let started = granter.stick(Some(Stuck::Late(Duration::from_millis(300))));
    // The client gives up at once and its connection closes: a grant tied
    // to a closed connection would never be withdrawn with it.
    let mut connection = fake.connect(HANG).unwrap();
    let asked = connection.round_trip(
        b"GRANT_ACCESS 77\n",
        Instant::now() + Duration::from_millis(50),
    );
    assert_eq!(asked.unwrap_err().kind(), io::ErrorKind::TimedOut);
    started.recv_timeout(HANG).expect("the grant started");
    granter.stick(None);
    drop(connection);
    wait_until("the grant withdrawn", || granter.revoked() == [PID]);
    assert_eq!(granter.granted(), [(PID, 77)]);
    assert_eq!(fake.client().status().unwrap().holder, None);
    // Another client needs no FORCE.
    fake.client().grant_access(pid(88)).unwrap();

    running.terminate(&fake);
}

/// A grant the granter has made, its report on the way, as its connection
/// closes: it cannot be called off any more; it is withdrawn when the
/// report comes, not recorded on the closed connection.
#[test]
fn a_grant_made_as_its_connection_closes_is_withdrawn_not_recorded() {
    let (fake, granter, _, running) = started();
    let (done, report) = granter.hold_next_report();
    let mut connection = fake.connect(HANG).unwrap();
    let asked = connection.round_trip(b"GRANT_ACCESS 77\n", Instant::now());
    assert_eq!(asked.unwrap_err().kind(), io::ErrorKind::TimedOut);
    done.recv_timeout(HANG).expect("the grant was not made");
    drop(connection);
    // Once a later request is answered, the loop has seen the close.
    let client = fake.client();
    assert_eq!(client.status().unwrap().holder, None);
    report.send(()).unwrap();
    wait_until("the grant withdrawn", || granter.revoked() == [PID]);
    assert_eq!(granter.granted(), [(PID, 77)]);
    assert_eq!(client.status().unwrap().holder, None);
    assert!(fake.grant_holders().is_empty());
    // Another client needs no FORCE.
    client.grant_access(pid(88)).unwrap();
    running.terminate(&fake);
}

#[test]
fn a_grant_in_progress_survives_another_connection_closing() {
    let (fake, granter, _, running) = started();
    let other = fake.connect(HANG).unwrap();
    let grant = grant_in_progress(&fake, &granter, b"GRANT_ACCESS 77\n");
    // Only the asking connection's end calls its grant off.
    drop(other);
    let (reply, _connection) = text(grant);
    assert_eq!(reply, "READY\n");
    assert_eq!(fake.client().status().unwrap().holder, Some(pid(77)));
    assert!(granter.revoked().is_empty());

    running.terminate(&fake);
}

#[test]
fn work_past_its_deadline_is_given_up_alone() {
    /// Never reads a stack: a target that does not answer.
    struct Silent;
    impl crate::Inspector for Silent {
        fn stacks(&self, _process: ProcessId) -> io::Result<Vec<ThreadStack>> {
            thread::sleep(HANG);
            Err(io::ErrorKind::TimedOut.into())
        }
    }
    let (fake, granter, target) = controller();
    let started = granter.stick(Some(Stuck::UntilDeadline));
    let running = start(
        controller_over(&fake, &granter, &target)
            .inspector(Silent)
            .grant_deadline(Duration::from_secs(600))
            .stack_deadline(Duration::from_millis(300)),
    );
    // A grant with a long deadline, then a stack read with a short one.
    let grant = fake.raw_async(b"GRANT_ACCESS 77\n");
    started.recv_timeout(HANG).expect("the grant did not start");
    let stack = fake.raw(b"STACK\n");
    assert!(
        stack.starts_with("ERROR: Cannot read the target's stacks: no answer within its deadline"),
        "{stack}"
    );
    // The grant's deadline has not passed: it still waits, and is called
    // off only when the controller stops.
    fake.client().terminate().unwrap();
    let grant = String::from_utf8(grant.recv_timeout(HANG).unwrap().unwrap()).unwrap();
    assert_eq!(grant, "ERROR: The controller is shutting down\n");
    running.join().unwrap();
}

/// A grant the granter completed just as the controller began to stop
/// (before the loop heard of it) was made: its client hears so, not that
/// the controller is shutting down, and the grant ends as any other.
#[test]
fn a_grant_done_as_the_controller_stops_is_answered_with_its_result() {
    let fake = Fake::new();
    let granter = Recorder::default();
    let target = Pretend::stubborn();
    let running = start(controller_over(&fake, &granter, &target).grace(LONG_GRACE));
    let (done, report) = granter.hold_next_report();
    let grant = fake.raw_async(b"GRANT_ACCESS 77\n");
    done.recv_timeout(HANG).expect("the grant was not made");
    // The grant is made; the controller stops before it hears so.
    fake.client().terminate().unwrap();
    report.send(()).unwrap();
    let grant = String::from_utf8(grant.recv_timeout(HANG).unwrap().unwrap()).unwrap();
    assert_eq!(grant, "READY\n");
    assert_eq!(granter.granted(), [(PID, 77)]);
    // In force, it ends as any other: here with the connection that asked.
    wait_until("the grant withdrawn", || granter.revoked() == [PID]);
    target.exit(ExitStatus::Signal(15));
    assert_eq!(running.join().unwrap(), ExitStatus::Signal(15));
}

// ---------------------------------------------------------------------------
// The log.

#[test]
fn what_peers_get_wrong_is_logged_without_flooding_the_log() {
    let (fake, _, target, running) = started();
    let warnings = || -> Vec<String> {
        running
            .logged()
            .into_iter()
            .filter(|(level, _)| *level == log::Level::Warn)
            .map(|(_, line)| line)
            .collect()
    };
    // Connections a transport cannot tell apart share one allowance.
    for _ in 0..8 {
        assert_eq!(fake.raw(b"FOO\n"), "ERROR: Unknown command: FOO\n");
    }
    let logged = warnings();
    assert_eq!(
        logged.len(),
        crate::log_limit::PER_KEY as usize,
        "{logged:?}"
    );
    assert!(logged
        .iter()
        .all(|line| line.starts_with("bad request from ")));
    assert!(
        logged[4].ends_with("(more like it are held back for up to 10 s)"),
        "{logged:?}"
    );
    // A process a transport authenticates has its own: its refusal is
    // logged, with why.
    fake.authenticate(target.table().identity(pid(77)).unwrap());
    assert!(fake
        .raw(b"GRANT_ACCESS 88\n")
        .starts_with("ERROR: GRANT_ACCESS 88 refused"));
    let logged = warnings();
    assert_eq!(logged.len(), crate::log_limit::PER_KEY as usize + 1);
    let refusal = logged.last().unwrap();
    assert!(
        refusal.starts_with("refused GRANT_ACCESS 88 from ")
            && refusal.ends_with("descendants (you are PID 77)"),
        "{refusal}"
    );
    running.terminate(&fake);
}

// ---------------------------------------------------------------------------
// The supervised tree: grants per process, PS and the stacks of the tree.

/// Adds workers to `target`'s pretend world: 5000 and 5001 children of
/// the target, 5002 a child of 5001.
fn add_workers(target: &Pretend) {
    target.table().add(5000, PID.get(), 5000);
    target.table().add(5001, PID.get(), 5001);
    target.table().add(5002, 5001, 5002);
}

/// The usual set-up with the workers in the pretend world.
fn started_tree_with<I: crate::Inspector + Send + Sync + 'static>(
    configure: impl FnOnce(
        Controller<Fake, Recorder, Pretend>,
    ) -> Controller<Fake, Recorder, Pretend, I>,
) -> (Fake, Recorder, Pretend, Running) {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let running = start(configure(controller_over(&fake, &granter, &target)));
    (fake, granter, target, running)
}

fn started_tree() -> (Fake, Recorder, Pretend, Running) {
    started_tree_with(|controller| controller)
}

/// `GRANT_ACCESS <client> TARGET <process>` on a session of its own, which
/// holds the grant as long as it lasts.
fn granted_on(fake: &Fake, client: u32, process: u32) -> Session<FakeConnection> {
    let mut session = fake.client().session().unwrap();
    session
        .grant(GrantRequest::new(pid(client)).process(pid(process)))
        .unwrap();
    session
}

/// The grants `STATUS` lists, as (process, client).
fn grants_listed(fake: &Fake) -> Vec<(u32, u32)> {
    let status = fake.client().status().unwrap();
    status
        .grants
        .iter()
        .map(|grant| (grant.process.get(), grant.client.get()))
        .collect()
}

#[test]
fn two_clients_hold_grants_on_two_processes_of_the_tree() {
    let (fake, granter, _, running) = started_tree();
    let _on_worker = granted_on(&fake, 88, 5001);
    let worker_connection = fake.last_connection();
    let mut on_target = fake.granted(77);
    let target_connection = fake.last_connection();
    assert_eq!(granter.granted(), [(pid(5001), 88), (PID, 77)]);
    // The target's grant first, on the wire too.
    assert_eq!(grants_listed(&fake), [(4242, 77), (5001, 88)]);
    assert_eq!(fake.client().status().unwrap().holder, Some(pid(77)));
    assert!(fake
        .raw(b"STATUS\n")
        .contains(" holder=77 grants=4242:77,5001:88 "));
    // The listener keeps both connections open.
    assert_eq!(fake.grant_holders(), [worker_connection, target_connection]);
    // Naming the target as the process is the target.
    on_target
        .grant(GrantRequest::new(pid(77)).process(PID))
        .unwrap();
    assert_eq!(
        fake.raw(b"GRANT_ACCESS 99 TARGET 4242\n"),
        "ERROR: target is being debugged by client PID 77 (attach --force takes it over)\n"
    );
    // One client may hold grants on several processes.
    assert_eq!(fake.raw(b"GRANT_ACCESS 88 TARGET 5002\n"), "READY\n");
    let logged: Vec<String> = running
        .logged()
        .into_iter()
        .map(|(_, line)| line)
        .filter(|line| line.starts_with("granted"))
        .collect();
    assert_eq!(
        logged,
        [
            "granted PID 88 access to PID 5001 (child of 4242)",
            "granted PID 77 access to target 4242",
            "granted PID 77 access to target 4242",
            "granted PID 88 access to PID 5002 (child of 5001)",
        ]
    );
    running.terminate(&fake);
}

#[test]
fn a_grant_on_a_process_is_taken_over_only_there_and_only_with_force() {
    let (fake, granter, _, running) = started_tree();
    let _first = granted_on(&fake, 77, 5000);
    assert_eq!(
        fake.raw(b"GRANT_ACCESS 88 TARGET 5000\n"),
        "ERROR: PID 5000 (child of 4242) is being debugged by client PID 77 (attach --force \
         takes it over)\n"
    );
    // Other processes are free: Yama keeps one ptracer per process.
    let _on_target = fake.granted(88);
    let mut second = fake.client().session().unwrap();
    second
        .grant(GrantRequest::new(pid(88)).process(pid(5000)).force(true))
        .unwrap();
    assert_eq!(grants_listed(&fake), [(4242, 88), (5000, 88)]);
    assert_eq!(
        granter.granted(),
        [(pid(5000), 77), (PID, 88), (pid(5000), 88)]
    );
    assert!(running.logged().iter().any(|(_, line)| line
        == "granted PID 88 access to PID 5000 (child of 4242), taking it over from PID 77"));
    // The first client detaches: the grant it lost stays with the second.
    assert_eq!(
        fake.raw(b"REVOKE 77 TARGET 5000\n"),
        "ERROR: The grant is held by client PID 88, not PID 77: nothing revoked\n"
    );
    assert!(granter.revoked().is_empty());
    second
        .revoke_grant(RevokeRequest::new().client(pid(88)).process(pid(5000)))
        .unwrap();
    assert_eq!(granter.revoked(), [pid(5000)]);
    assert_eq!(grants_listed(&fake), [(4242, 88)]);
    running.terminate(&fake);
}

#[test]
fn revoking_a_process_with_no_grant_touches_nothing() {
    let (fake, granter, _, running) = started_tree();
    for line in [
        "REVOKE TARGET 5000\n",
        "REVOKE 77 TARGET 5001\n",
        "REVOKE TARGET 1\n",
        "REVOKE TARGET 31337\n",
    ] {
        assert_eq!(fake.raw(line.as_bytes()), "READY\n", "{line:?}");
    }
    // No grant there: nothing was withdrawn, nothing injected.
    assert!(granter.revoked().is_empty());
    // Another connection may not withdraw a grant on a worker.
    let _session = granted_on(&fake, 77, 5000);
    fake.authenticate(Some(ProcessId {
        pid: pid(88),
        start_time: 88,
    }));
    assert_eq!(
        fake.raw(b"REVOKE TARGET 5000\n"),
        "ERROR: REVOKE refused: the grant is held by client PID 77; only its connection or \
         that process may withdraw it (attach --force takes it over)\n"
    );
    assert!(granter.revoked().is_empty());
    assert_eq!(grants_listed(&fake), [(5000, 77)]);
    running.terminate(&fake);
}

#[test]
fn a_closed_connection_revokes_every_grant_it_holds_and_no_other() {
    let (fake, granter, _, running) = started_tree();
    let mut session = granted_on(&fake, 77, 5000);
    session
        .grant(GrantRequest::new(pid(77)).process(pid(5002)))
        .unwrap();
    session.grant_access(pid(77)).unwrap();
    let _other = granted_on(&fake, 88, 5001);
    let other_connection = fake.last_connection();
    assert_eq!(
        grants_listed(&fake),
        [(4242, 77), (5000, 77), (5001, 88), (5002, 77)]
    );
    drop(session);
    wait_until("three revokes", || granter.revoked().len() == 3);
    let mut revoked = granter.revoked();
    revoked.sort();
    assert_eq!(revoked, [PID, pid(5000), pid(5002)]);
    // Each is unlisted once its revoke is back on the loop, just after.
    wait_until("the three unlisted", || {
        grants_listed(&fake) == [(5001, 88)]
    });
    assert_eq!(fake.client().status().unwrap().holder, None);
    assert_eq!(fake.grant_holders(), [other_connection]);
    running.terminate(&fake);
}

#[test]
fn a_process_that_exits_drops_its_grant_and_a_recycled_pid_inherits_nothing() {
    let (fake, granter, target, running) = started_tree();
    let first = granted_on(&fake, 77, 5000);
    let _on_5001 = granted_on(&fake, 88, 5001);
    let connection_5001 = fake.last_connection();
    assert_eq!(grants_listed(&fake), [(5000, 77), (5001, 88)]);
    // 5000 exits: the next STATUS no longer lists its grant, and the
    // granter forgets it.
    target.table().remove(5000);
    assert_eq!(grants_listed(&fake), [(5001, 88)]);
    wait_until("the exited process's grant revoked", || {
        granter.revoked() == [pid(5000)]
    });
    assert_eq!(fake.grant_holders(), [connection_5001]);
    // A new worker gets pid 5000 (a later start time): no grant on it, so
    // another client needs no FORCE there.
    target.table().add(5000, PID.get(), 6000);
    assert_eq!(grants_listed(&fake), [(5001, 88)]);
    let _second = granted_on(&fake, 99, 5000);
    assert_eq!(grants_listed(&fake), [(5000, 99), (5001, 88)]);
    // The first grant's connection closing takes nothing from the new
    // process.
    drop(first);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(granter.revoked(), [pid(5000)]);
    assert_eq!(grants_listed(&fake), [(5000, 99), (5001, 88)]);
    // A worker that exits while a client asks for it: refused, by name.
    target.table().edit(5001, |info| {
        info.state = crate::ProcessState::Zombie;
    });
    assert_eq!(
        fake.raw(b"GRANT_ACCESS 77 TARGET 5001\n"),
        "ERROR: PID 5001 has exited (zombie)\n"
    );
    assert_eq!(grants_listed(&fake), [(5000, 99)]);
    running.terminate(&fake);
}

#[test]
fn the_targets_exit_revokes_every_grant_of_its_tree() {
    let (fake, granter, target, running) =
        started_tree_with(|c| c.restart(restart_at_once(Restart::Always)));
    let _on_target = fake.granted(77);
    let _on_worker = granted_on(&fake, 88, 5001);
    target.exit(ExitStatus::Code(1));
    wait_until("the restart", || target.spawns() == 2);
    wait_until("both grants withdrawn", || granter.revoked().len() == 2);
    let mut revoked = granter.revoked();
    revoked.sort();
    assert_eq!(revoked, [PID, pid(5001)]);
    // The worker lives on, out of the new target's tree: its parent's pid
    // names a process that started after it (the pretend supervisor gives
    // the new target the same pid; its start time is what tells).
    target.table().add(PID.get(), 1, 9000);
    assert!(grants_listed(&fake).is_empty());
    assert!(fake.grant_holders().is_empty());
    assert_eq!(
        fake.raw(b"GRANT_ACCESS 88 TARGET 5001\n"),
        "ERROR: PID 5001 is not in the target's process tree (only the target, PID 4242, \
         and its descendants may be granted)\n"
    );
    running.terminate(&fake);
}

#[test]
fn processes_outside_the_rules_are_refused_by_name_and_nothing_is_injected() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let me = Pid::this().get();
    // 5003 a thread of 5001, 5004 a zombie, 5005 setuid, 5006 another user's.
    let table = target.table();
    table.add(5003, PID.get(), 5001);
    table.edit(5003, |info| info.process = pid(5001));
    table.add(5004, PID.get(), 5004);
    table.edit(5004, |info| info.state = crate::ProcessState::Zombie);
    table.add(5005, 5001, 5005);
    table.edit(5005, |info| info.euid = 0);
    table.add(5006, 5002, 5006);
    table.edit(5006, |info| (info.uid, info.euid) = (2000, 2000));
    let running = start(controller_over(&fake, &granter, &target));
    let outside = |n: u32| {
        format!(
            "ERROR: PID {n} is not in the target's process tree (only the target, PID 4242, \
             and its descendants may be granted)\n"
        )
    };
    for (process, reply) in [
        (1, outside(1)),
        (77, outside(77)),
        (me, format!("ERROR: PID {me} is the controller itself\n")),
        (
            5003,
            "ERROR: PID 5003 is a thread of process 5001, not a process\n".to_owned(),
        ),
        (5004, "ERROR: PID 5004 has exited (zombie)\n".to_owned()),
        (31337, "ERROR: PID 31337 is not running\n".to_owned()),
        (
            5005,
            "ERROR: PID 5005 runs as another user (uid 1000, euid 0; the controller runs as 1000)\n"
                .to_owned(),
        ),
        (
            5006,
            "ERROR: PID 5006 runs as another user (uid 2000, euid 2000; the controller runs as \
             1000)\n"
                .to_owned(),
        ),
    ] {
        for force in ["", " FORCE"] {
            let line = format!("GRANT_ACCESS 77 TARGET {process}{force}\n");
            assert_eq!(fake.raw(line.as_bytes()), reply, "{line:?}");
        }
    }
    // Bad input never reaches the controller's rules.
    for (line, reply) in [
        (
            "GRANT_ACCESS 77 TARGET\n",
            "ERROR: Invalid PID after TARGET\n",
        ),
        (
            "GRANT_ACCESS 77 TARGET abc\n",
            "ERROR: Invalid PID after TARGET\n",
        ),
        ("STACK abc\n", "ERROR: Invalid PID\n"),
    ] {
        assert_eq!(fake.raw(line.as_bytes()), reply, "{line:?}");
    }
    // Nothing reached the granter, the refusals are logged, and the
    // controller serves on.
    assert_eq!(granter.attempts(), 0);
    assert!(running
        .logged()
        .iter()
        .any(|(_, line)| line.starts_with("refused GRANT_ACCESS 77 TARGET 1 from ")));
    assert_eq!(fake.raw(b"GRANT_ACCESS 77 TARGET 5002\n"), "READY\n");
    assert_eq!(granter.granted(), [(pid(5002), 77)]);
    running.terminate(&fake);
}

/// An inspector over the pretend world's table: the tree is what the table
/// says descends from the root; only `python` processes have stacks; a
/// read of the tree says so on `entered` and waits for `gate` when they
/// are set.
#[derive(Clone)]
struct Family {
    table: Table,
    python: Vec<u32>,
    gate: Option<Arc<Mutex<Receiver<()>>>>,
    entered: Option<Sender<()>>,
}

impl Family {
    fn of(target: &Pretend, python: &[u32]) -> Family {
        Family {
            table: target.table().clone(),
            python: python.to_vec(),
            gate: None,
            entered: None,
        }
    }
}

impl crate::Inspector for Family {
    fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
        let pid = process.pid;
        // That process and no other.
        if !self.table.is_running(process) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "gone"));
        }
        if !self.python.contains(&pid.get()) {
            return Err(io::Error::other("not a Python 3.14 process"));
        }
        let mut thread = ThreadStack::new(pid.get().into());
        thread
            .frames
            .push(Frame::new("work", "app.py", Some(pid.get() % 100)));
        Ok(vec![thread])
    }

    /// A Python process has a task `main` awaited by nothing and a task
    /// `child` it awaits.
    fn tasks(&self, process: ProcessId) -> io::Result<crate::tasks::AsyncTasks> {
        use crate::tasks::{AsyncTask, AsyncTasks};
        // That process and no other.
        if !self.table.is_running(process) {
            return Err(io::Error::new(io::ErrorKind::NotFound, "gone"));
        }
        let raw = process.pid.get();
        if !self.python.contains(&raw) {
            return Err(io::Error::other("not a Python 3.14 process"));
        }
        let mut main = AsyncTask::new(0x100, format!("main-{raw}"));
        main.coroutine_stack
            .push(Frame::new("main", "app.py", Some(raw % 100)));
        let mut child = AsyncTask::new(0x200, "child");
        child.awaited_by.push(0x100);
        let mut tasks = AsyncTasks::new(process.pid);
        tasks.tasks = vec![main, child];
        Ok(tasks)
    }

    fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
        if let Some(entered) = &self.entered {
            let _ = entered.send(());
        }
        if let Some(gate) = &self.gate {
            let _ = gate.lock().unwrap().recv_timeout(HANG);
        }
        // Depth first from the root, children in pid order, as a real
        // inspector lists them.
        let mut pids: Vec<u32> = self.table.0.lock().unwrap().keys().copied().collect();
        pids.sort_unstable();
        let mut tree = Vec::new();
        if !self.table.is_running(root) {
            return Ok(tree);
        }
        let mut next = vec![root.pid];
        while let Some(parent) = next.pop() {
            let info = self.table.process(parent)?.unwrap();
            let mut process = TreeProcess::new(parent);
            process.start_time = info.id.start_time;
            process.parent = info.parent;
            process.uid = info.uid;
            process.euid = info.euid;
            process.command = format!("worker {parent}");
            process.python = self
                .python
                .contains(&parent.get())
                .then(|| "3.14.0".to_owned());
            tree.push(process);
            for &raw in pids.iter().rev() {
                let child = self.table.process(pid(raw))?.unwrap();
                // Not a thread, nor a process older than its parent (a
                // reused pid).
                if child.parent == Some(parent)
                    && child.process == child.id.pid
                    && child.id.start_time >= info.id.start_time
                {
                    next.push(pid(raw));
                }
            }
        }
        Ok(tree)
    }
}

#[test]
fn ps_lists_the_tree_with_the_target_its_grants_and_the_subreaper() {
    let (fake, _, target) = controller();
    add_workers(&target);
    let family = Family::of(&target, &[4242, 5000, 5002]);
    let running = start(
        controller_over(&fake, &Recorder::default(), &target)
            .inspector(family)
            .subreaper(true),
    );
    let _session = granted_on(&fake, 88, 5002);
    let tree = fake.client().ps().unwrap();
    assert!(tree.subreaper);
    let rows: Vec<(u32, bool, Option<u32>, bool)> = tree
        .processes
        .iter()
        .map(|p| (p.pid.get(), p.target, p.holder.map(Pid::get), p.is_python()))
        .collect();
    assert_eq!(
        rows,
        [
            (4242, true, None, true),
            (5000, false, None, true),
            (5001, false, None, false),
            (5002, false, Some(88), true),
        ]
    );
    // A worker that exits is gone from the tree and from the grants.
    target.table().remove(5002);
    let tree = fake.client().ps().unwrap();
    assert_eq!(tree.processes.len(), 3);
    assert!(grants_listed(&fake).is_empty());
    assert!(fake.raw(b"ps\n").starts_with("ps {\"processes\":[{"));
    running.terminate(&fake);

    // Not a subreaper unless told.
    let (fake, _, _, running) = started_tree_with(|c| c.inspector(Family::of(&target, &[])));
    assert!(!fake.client().ps().unwrap().subreaper);
    running.terminate(&fake);
}

/// The pids of `tree`, in its order.
fn pids_of(tree: &Tree) -> Vec<u32> {
    tree.processes.iter().map(|p| p.pid.get()).collect()
}

#[test]
fn a_subreapers_tree_holds_the_processes_it_adopted_after_the_targets() {
    let (fake, _, target) = controller();
    add_workers(&target);
    let me = Pid::this().get();
    // 5001 exited: its child 5002 was adopted by the controller, as was
    // 4000 (a daemon the target's tree started); 4000's child 4001.
    let table = target.table();
    table.remove(5001);
    table.add(5002, me, 5002);
    table.add(4000, me, 4000);
    table.add(4001, 4000, 4001);
    let family = Family::of(&target, &[4242, 5002]);
    let running = start(
        controller_over(&fake, &Recorder::default(), &target)
            .inspector(family.clone())
            .subreaper(true),
    );
    let client = fake.client();
    let tree = client.ps().unwrap();
    // The target's subtree first, then each adopted process with its own,
    // their parent the controller; the controller itself is not listed.
    assert_eq!(pids_of(&tree), [4242, 5000, 4000, 4001, 5002]);
    assert_eq!(tree.processes[2].parent, Some(Pid::this()));
    assert_eq!(tree.processes[4].parent, Some(Pid::this()));
    assert!(tree.processes[0].target && tree.subreaper);
    // They may be granted and read like any process of the tree.
    let _session = granted_on(&fake, 88, 5002);
    assert_eq!(client.ps().unwrap().processes[4].holder, Some(pid(88)));
    let all = client.stacks(Scope::All).unwrap();
    let read: Vec<(u32, usize)> = all.iter().map(|p| (p.pid.get(), p.threads.len())).collect();
    assert_eq!(
        read,
        [(4242, 1), (5000, 0), (4000, 0), (4001, 0), (5002, 1)]
    );
    let one = client.stacks(Scope::Process(pid(5002))).unwrap();
    assert_eq!(one[0].role(), Some(Role::ChildOf(Pid::this())));
    running.terminate(&fake);

    // Without the subreaper they are outside the tree.
    let fake = Fake::new();
    let running = start(controller_over(&fake, &Recorder::default(), &target).inspector(family));
    assert_eq!(pids_of(&fake.client().ps().unwrap()), [4242, 5000]);
    assert_eq!(
        fake.raw(b"GRANT_ACCESS 88 TARGET 5002\n"),
        "ERROR: PID 5002 is not in the target's process tree (only the target, PID 4242, \
         and its descendants may be granted)\n"
    );
    running.terminate(&fake);
}

#[test]
fn ps_remembers_that_the_target_forked() {
    let (fake, _, target) = controller();
    let running = start(
        controller_over(&fake, &Recorder::default(), &target)
            .inspector(Family::of(&target, &[4242])),
    );
    let client = fake.client();
    let tree = client.ps().unwrap();
    assert_eq!((tree.processes.len(), tree.forked), (1, false));
    // A child seen once...
    target.table().add(5000, PID.get(), 5000);
    assert!(client.ps().unwrap().forked);
    // ...is remembered after it is gone (it may have left the tree: the
    // controller is no subreaper).
    target.table().remove(5000);
    let tree = client.ps().unwrap();
    assert_eq!((tree.processes.len(), tree.forked), (1, true));
    running.terminate(&fake);
}

/// A grant's holder is shown on the process it was made for, not on a
/// process that took its pid while the tree was read.
#[test]
fn ps_shows_a_holder_on_its_process_only() {
    let (fake, _, target) = controller();
    add_workers(&target);
    let (go, gate) = unbounded();
    let (entered_tx, entered) = unbounded();
    let family = Family {
        gate: Some(Arc::new(Mutex::new(gate))),
        entered: Some(entered_tx),
        ..Family::of(&target, &[])
    };
    let running = start(controller_over(&fake, &Recorder::default(), &target).inspector(family));
    let _session = granted_on(&fake, 77, 5000);
    let ps = fake.raw_async(b"PS\n");
    entered
        .recv_timeout(HANG)
        .expect("the tree read did not start");
    // 5000 ends and its pid goes to another child of the target.
    target.table().add(5000, PID.get(), 9000);
    go.send(()).unwrap();
    let reply = String::from_utf8(ps.recv_timeout(HANG).unwrap().unwrap()).unwrap();
    let tree: Tree = serde_json::from_str(reply.strip_prefix("PS ").unwrap().trim()).unwrap();
    let worker = &tree.processes[1];
    assert_eq!((worker.pid, worker.start_time), (pid(5000), 9000));
    assert_eq!(worker.holder, None);
    running.terminate(&fake);
}

#[test]
fn stacks_of_the_tree_list_every_process_and_skip_those_that_cannot_be_read() {
    let (fake, _, target) = controller();
    add_workers(&target);
    let family = Family::of(&target, &[4242, 5000, 5002]);
    let running = start(controller_over(&fake, &Recorder::default(), &target).inspector(family));
    let client = fake.client();

    let all = client.stacks(Scope::All).unwrap();
    let rows: Vec<(u32, String, usize, Option<String>)> = all
        .iter()
        .map(|p| {
            let role = p.role().map(|role| role.to_string()).unwrap_or_default();
            (p.pid.get(), role, p.threads.len(), p.skipped.clone())
        })
        .collect();
    assert_eq!(
        rows,
        [
            (4242, "target".into(), 1, None),
            (5000, "child of 4242".into(), 1, None),
            (
                5001,
                "child of 4242".into(),
                0,
                Some("not a Python 3.14 process".into())
            ),
            (5002, "child of 5001".into(), 1, None),
        ]
    );
    // One process: its stacks, with its facts; a process that is not
    // Python is an error there.
    let one = client.stacks(Scope::Process(pid(5002))).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(
        (one[0].pid, one[0].parent, one[0].python.as_deref()),
        (pid(5002), Some(pid(5001)), Some("3.14.0"))
    );
    assert_eq!(one[0].threads[0].frames[0].line, Some(2));
    let target_only = client.stacks(Scope::Target).unwrap();
    assert_eq!((target_only.len(), target_only[0].target), (1, true));
    assert_eq!(
        fake.raw(b"STACKS 5001\n"),
        "ERROR: Cannot read the stacks of PID 5001: not a Python 3.14 process\n"
    );
    // Outside the tree: refused by the rule, not read.
    assert_eq!(
        fake.raw(b"STACKS 77\n"),
        "ERROR: PID 77 is not in the target's process tree (only the target, PID 4242, and \
         its descendants may be read)\n"
    );
    assert_eq!(
        fake.raw(b"STACK 1\n"),
        "ERROR: PID 1 is not in the target's process tree (only the target, PID 4242, and \
         its descendants may be read)\n"
    );
    // As text: `STACK` alone is the target's threads, as ever; with a
    // scope, each process under its header.
    assert_eq!(
        client.stack().unwrap(),
        "Thread 4242, most recent call last:\n  File \"app.py\", line 42, in work\n"
    );
    let Reply::Stack(text) = Reply::parse(&fake.raw(b"STACK ALL\n")).unwrap() else {
        panic!("not a stack reply");
    };
    assert_eq!(
        text,
        "Process 4242 (target) Python 3.14.0: worker 4242\n\
         Thread 4242, most recent call last:\n  File \"app.py\", line 42, in work\n\n\
         Process 5000 (child of 4242) Python 3.14.0: worker 5000\n\
         Thread 5000, most recent call last:\n  File \"app.py\", line 0, in work\n\n\
         Process 5001 (child of 4242): worker 5001\n  (skipped: not a Python 3.14 process)\n\n\
         Process 5002 (child of 5001) Python 3.14.0: worker 5002\n\
         Thread 5002, most recent call last:\n  File \"app.py\", line 2, in work\n"
    );
    let Reply::Stack(text) = Reply::parse(&fake.raw(b"stack 5000\n")).unwrap() else {
        panic!("not a stack reply");
    };
    assert!(
        text.starts_with("Process 5000 (child of 4242) Python 3.14.0: worker 5000\nThread 5000"),
        "{text}"
    );
    running.terminate(&fake);
}

#[test]
fn without_an_inspector_ps_and_stacks_say_so() {
    let (fake, _, _, running) = started_tree();
    for (line, reply) in [
        (
            "PS\n",
            "ERROR: Cannot list the target's tree: this controller cannot list its target's tree\n",
        ),
        (
            "STACKS ALL\n",
            "ERROR: Cannot list the target's tree: this controller cannot list its target's tree\n",
        ),
        (
            "STACKS 5000\n",
            "ERROR: Cannot read the stacks of PID 5000: this controller cannot read its target's \
             stacks\n",
        ),
        (
            "STACK\n",
            "ERROR: Cannot read the target's stacks: this controller cannot read its target's \
             stacks\n",
        ),
        (
            "STACKS 4242\n",
            "ERROR: Cannot read the target's stacks: this controller cannot read its target's \
             stacks\n",
        ),
    ] {
        assert_eq!(fake.raw(line.as_bytes()), reply, "{line:?}");
    }
    running.terminate(&fake);
}

#[test]
fn a_hanging_tree_read_holds_up_no_other_request_and_gets_an_answer() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let (go, gate) = unbounded();
    let family = Family {
        gate: Some(Arc::new(Mutex::new(gate))),
        ..Family::of(&target, &[4242])
    };
    let running = start(
        controller_over(&fake, &granter, &target)
            .inspector(family)
            .stack_deadline(Duration::from_millis(300)),
    );
    let ps = fake.raw_async(b"PS\n");
    let all = fake.raw_async(b"STACKS ALL\n");
    // Meanwhile the loop serves, grants included.
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    let _session = granted_on(&fake, 77, 5000);
    // The read that hangs is blamed on the process it reads; the one
    // behind it says it never started, and why.
    let answers = [
        "ERROR: Cannot list the target's tree: no answer within its deadline: the target is \
         in state S\n",
        "ERROR: Cannot list the target's tree: not started within its deadline: the inspector \
         is still busy with earlier work on the target: the target is in state S\n",
    ];
    // (Which of the two reaches the loop first is not known.)
    let mut replies: Vec<String> = [ps, all]
        .into_iter()
        .map(|reply| String::from_utf8(reply.recv_timeout(HANG).unwrap().unwrap()).unwrap())
        .collect();
    replies.sort();
    assert_eq!(replies, answers);
    // Once the reader is free again, the next listing is answered.
    for _ in 0..3 {
        go.send(()).unwrap();
    }
    let tree = fake.client().ps().unwrap();
    assert_eq!(tree.processes.len(), 4);
    assert_eq!(tree.processes[1].holder, Some(pid(77)));
    running.terminate(&fake);
}

#[test]
fn a_worker_grant_the_granter_does_not_report_names_the_worker() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let started = granter.stick(Some(Stuck::Late(Duration::from_millis(1200))));
    let running =
        start(controller_over(&fake, &granter, &target).grant_deadline(Duration::from_millis(300)));
    let reply = fake.raw_async(b"GRANT_ACCESS 77 TARGET 5001\n");
    started.recv_timeout(HANG).unwrap();
    target.table().edit(5001, |info| {
        info.state = crate::ProcessState::DiskSleep;
    });
    let reply = String::from_utf8(reply.recv_timeout(HANG).unwrap().unwrap()).unwrap();
    assert_eq!(
        reply,
        "ERROR: Grant failed: no answer within its deadline: PID 5001 is in uninterruptible \
         sleep (state D)\n"
    );
    // The late grant is withdrawn from that process at once, and recorded
    // nowhere.
    wait_until("the late grant withdrawn", || {
        granter.revoked() == [pid(5001)]
    });
    assert!(grants_listed(&fake).is_empty());
    running.terminate(&fake);
}

/// Process `raw` with one thread of `frames` frames, each of a function
/// named with `name_len` letters, at line 0 to `frames - 1` (the newest).
fn deep(raw: u32, frames: u32, name_len: usize) -> crate::stacks::ProcessStacks {
    let mut process = crate::stacks::ProcessStacks::new(pid(raw));
    let mut thread = ThreadStack::new(raw.into());
    let name = "f".repeat(name_len);
    for line in 0..frames {
        thread
            .frames
            .push(Frame::new(name.clone(), "a.py", Some(line)));
    }
    process.threads.push(thread);
    process
}

/// `stacks` as a reply line, checked to fit and to parse back.
fn fits_a_reply(stacks: &[crate::stacks::ProcessStacks]) {
    let line = Reply::Stacks(stacks.to_vec()).encode(crate::protocol::Dialect::Upper);
    assert!(line.len() <= crate::protocol::MAX_REPLY, "{}", line.len());
    assert_eq!(Reply::parse(&line).unwrap(), Reply::Stacks(stacks.to_vec()));
}

#[test]
fn a_stacks_reply_too_long_for_a_line_keeps_every_threads_newest_frames() {
    // About 1 MB each: four fit in a reply of 4 MiB, six do not.
    let small = vec![deep(1, 1000, 1000), deep(2, 1000, 1000)];
    assert_eq!(crate::event_loop::fit_stacks(small.clone()), small);
    let fitted = crate::event_loop::fit_stacks((1..=6).map(|raw| deep(raw, 1000, 1000)).collect());
    fits_a_reply(&fitted);
    // Every process keeps its thread, with as many of its newest frames
    // as fit in all of them: more than half.
    for process in &fitted {
        assert_eq!(process.skipped, None);
        let thread = &process.threads[0];
        let kept = thread.frames.len();
        assert!((500..1000).contains(&kept), "{kept}");
        assert_eq!(thread.frames.last().unwrap().line, Some(999));
        assert_eq!(thread.frames[0].line, Some(1000 - kept as u32));
        assert_eq!(
            thread.incomplete,
            Some(format!(
                "its {} oldest frames left out to fit a reply of 4194304 bytes",
                1000 - kept
            ))
        );
    }
    // As many in every thread.
    assert_eq!(
        fitted.iter().map(|p| p.threads[0].frames.len()).min(),
        fitted.iter().map(|p| p.threads[0].frames.len()).max()
    );
}

#[test]
fn a_stacks_reply_whose_newest_frames_alone_are_too_long_leaves_the_last_threads_out() {
    // One frame of about 1 MB each, six processes: the last two go.
    let fitted = crate::event_loop::fit_stacks((1..=6).map(|raw| deep(raw, 2, 1 << 20)).collect());
    fits_a_reply(&fitted);
    let kept: Vec<usize> = fitted.iter().map(|p| p.threads.len()).collect();
    assert_eq!(kept, [1, 1, 1, 0, 0, 0]);
    assert_eq!(fitted[0].threads[0].frames.len(), 1);
    assert_eq!(fitted[0].threads[0].frames[0].line, Some(1));
    assert_eq!(
        fitted[5].skipped.as_deref(),
        Some("cut: the stacks of every process would not fit in a reply of 4194304 bytes")
    );
}

// ---------------------------------------------------------------------------
// A grant stays in force until a revoke of it succeeded.

#[test]
fn a_revoke_that_fails_is_tried_again_and_the_grant_stays_listed_meanwhile() {
    let (fake, granter, _, running) = started_tree();
    // A closed connection's grant: its revokes fail twice.
    let session = granted_on(&fake, 77, 5001);
    granter.fail_revokes(2);
    drop(session);
    wait_until("a revoke tried", || granter.revoke_attempts() >= 1);
    // Still in force: still listed, by STATUS and PS alike.
    assert_eq!(grants_listed(&fake), [(5001, 77)]);
    wait_until("the grant revoked", || granter.revoked() == [pid(5001)]);
    assert_eq!(granter.revoke_attempts(), 3);
    assert!(grants_listed(&fake).is_empty());
    assert!(running
        .logged()
        .iter()
        .any(|(_, line)| line.contains("cannot revoke the grant of client PID 77 on PID 5001")));

    // An explicit REVOKE that fails says so; the controller goes on trying.
    let mut session = granted_on(&fake, 88, 5000);
    granter.fail_revokes(1);
    let err = session.revoke_grant(RevokeRequest::new().process(pid(5000)));
    assert!(err.unwrap_err().to_string().contains(
        "Revoke failed: the pretend revoke failed (the grant stays in force; the controller \
             tries again)"
    ),);
    assert_eq!(grants_listed(&fake), [(5000, 88)]);
    wait_until("the grant revoked", || {
        granter.revoked().contains(&pid(5000))
    });
    assert!(grants_listed(&fake).is_empty());
    // Another client needs no FORCE.
    let _other = granted_on(&fake, 99, 5000);
    running.terminate(&fake);
}

#[test]
fn a_grant_being_revoked_is_forgotten_when_its_process_is_gone() {
    let (fake, granter, target, running) = started_tree();
    let session = granted_on(&fake, 77, 5002);
    granter.fail_revokes(usize::MAX);
    drop(session);
    wait_until("a revoke tried", || granter.revoke_attempts() >= 1);
    assert_eq!(grants_listed(&fake), [(5002, 77)]);
    // The process exits: no grant on it is in force any more.
    target.table().remove(5002);
    assert!(grants_listed(&fake).is_empty());
    running.terminate(&fake);
}

#[test]
fn a_revoke_queued_behind_a_slow_grant_gets_its_own_time() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let running =
        start(controller_over(&fake, &granter, &target).grant_deadline(Duration::from_millis(300)));
    let session = granted_on(&fake, 77, 5001);
    // A grant that takes longer than the deadline holds up the granter.
    let started = granter.stick(Some(Stuck::Late(Duration::from_millis(800))));
    let slow = fake.raw_async(b"GRANT_ACCESS 88 TARGET 5000\n");
    started.recv_timeout(HANG).unwrap();
    granter.stick(None);
    // The revoke of the closed connection's grant waits behind it, longer
    // than its deadline: its time counts from its start.
    let dropped = Instant::now();
    drop(session);
    wait_until("the grant revoked", || {
        granter.revoked().contains(&pid(5001))
    });
    // At its first try (a retry would come a second after a failure).
    let took = dropped.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(granter.revoke_attempts(), granter.revoked().len());
    let _ = slow.recv_timeout(HANG);
    assert!(
        !running
            .logged()
            .iter()
            .any(|(_, line)| line.contains("cannot revoke")),
        "{:?}",
        running.logged()
    );
    running.terminate(&fake);
}

#[test]
fn a_grant_on_a_frozen_process_is_refused_at_once_one_in_state_d_is_tried() {
    let (fake, granter, target, running) = started_tree();
    target.0.frozen_others.lock().unwrap().push(5001);
    target.table().edit(5002, |info| {
        info.state = crate::ProcessState::DiskSleep;
    });
    let asked = Instant::now();
    assert_grant_refused_raw(
        &fake,
        b"GRANT_ACCESS 77 TARGET 5001\n",
        "PID 5001 is frozen (cgroup freezer): it cannot be granted until thawed",
    );
    target.0.frozen.store(true, SeqCst);
    assert_grant_refused_raw(
        &fake,
        b"GRANT_ACCESS 77\n",
        "PID 4242 is frozen (cgroup freezer): it cannot be granted until thawed",
    );
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert_eq!(granter.attempts(), 0);
    // A process in state D (mostly brief: a disk read) is tried.
    let _in_d = granted_on(&fake, 88, 5002);
    assert_eq!(granter.attempts(), 1);
    // Thawed, it is granted.
    target.0.frozen_others.lock().unwrap().clear();
    let _session = granted_on(&fake, 77, 5001);
    running.terminate(&fake);
}

fn assert_grant_refused_raw(fake: &Fake, line: &[u8], message: &str) {
    assert_eq!(fake.raw(line), format!("ERROR: {message}\n"));
}

#[test]
fn a_second_grant_on_a_process_while_one_is_pending_is_refused() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let running = start(controller_over(&fake, &granter, &target));
    let first = grant_in_progress(&fake, &granter, b"GRANT_ACCESS 77 TARGET 5001\n");
    assert_grant_refused_raw(
        &fake,
        b"GRANT_ACCESS 88 TARGET 5001 FORCE\n",
        "a grant on PID 5001 is already in progress",
    );
    // Another process is granted meanwhile.
    let _other = granted_on(&fake, 88, 5000);
    let (reply, _first) = text(first);
    assert_eq!(reply, "READY\n");
    assert_eq!(granter.attempts(), 2);
    running.terminate(&fake);
}

#[test]
fn inspections_are_one_per_connection_and_a_few_in_all() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let (go, gate) = unbounded();
    let (entered_tx, entered) = unbounded();
    let family = Family {
        gate: Some(Arc::new(Mutex::new(gate))),
        entered: Some(entered_tx),
        ..Family::of(&target, &[4242])
    };
    let running = start(
        controller_over(&fake, &granter, &target)
            .inspector(family)
            .stack_deadline(HANG),
    );
    // A connection whose read waits (its client gave up waiting) asks
    // again: refused at once.
    let mut connection = fake.connect(HANG).unwrap();
    let first = connection.round_trip(b"PS\n", Instant::now() + Duration::from_millis(20));
    assert_eq!(first.unwrap_err().kind(), io::ErrorKind::TimedOut);
    entered.recv_timeout(HANG).expect("the read started");
    let again = connection.round_trip(b"STACKS ALL\n", Instant::now() + HANG);
    assert_eq!(
        String::from_utf8(again.unwrap()).unwrap(),
        "ERROR: busy: this connection already waits for a PS, STACK or STACKS\n"
    );
    // Other connections fill the queue up to its bound.
    while fake.0.queued.1.try_recv().is_ok() {}
    let waiting: Vec<_> = (0..7).map(|_| fake.raw_async(b"PS\n")).collect();
    for _ in 0..7 {
        fake.0.queued.1.recv_timeout(HANG).unwrap();
    }
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    assert_eq!(
        fake.raw(b"STACK\n"),
        "ERROR: busy: 8 PS, STACK or STACKS requests already wait; try again later\n"
    );
    // Each is answered once the reader goes on; then reads are served again.
    for _ in 0..8 {
        go.send(()).unwrap();
    }
    for reply in waiting {
        let reply = String::from_utf8(reply.recv_timeout(HANG).unwrap().unwrap()).unwrap();
        assert!(reply.starts_with("PS "), "{reply}");
    }
    go.send(()).unwrap();
    let again = connection
        .round_trip(b"PS\n", Instant::now() + HANG)
        .unwrap();
    assert!(String::from_utf8(again).unwrap().starts_with("PS "));
    running.terminate(&fake);
}

// ---------------------------------------------------------------------------
// Replies of huge trees fit a reply line.

/// Process `raw` of the tree, child of the target, with a command line of
/// `command_len` bytes.
fn with_command(raw: u32, command_len: usize) -> TreeProcess {
    let mut process = TreeProcess::new(pid(raw));
    process.parent = Some(PID);
    process.command = format!("python3.14 -c {}", "x".repeat(command_len));
    process
}

fn ps_fits_a_reply(tree: &Tree) {
    let line = Reply::Ps(tree.clone()).encode(crate::protocol::Dialect::Upper);
    assert!(line.len() <= crate::protocol::MAX_REPLY, "{}", line.len());
    assert_eq!(Reply::parse(&line).unwrap(), Reply::Ps(tree.clone()));
}

#[test]
fn a_ps_reply_with_huge_command_lines_cuts_them_and_keeps_every_process() {
    // Three children with ~1.9 MB command lines, and a short one.
    let mut processes: Vec<_> = (5000..5003)
        .map(|raw| with_command(raw, 1_900_000))
        .collect();
    processes.push(with_command(5003, 10));
    let short = processes[3].command.clone();
    let tree = crate::event_loop::fit_tree(Tree::new(processes, false));
    ps_fits_a_reply(&tree);
    assert_eq!(tree.processes.len(), 4);
    assert_eq!(tree.cut, None);
    for process in &tree.processes[..3] {
        assert!(process.command.len() < 5000, "{}", process.command.len());
        assert!(
            process
                .command
                .ends_with("... (cut: the command line is 1900014 bytes)"),
            "{}",
            &process.command[4000..]
        );
    }
    assert_eq!(tree.processes[3].command, short);
    // A tree that fits is left alone.
    let small = Tree::new(vec![with_command(5000, 5000)], false);
    assert_eq!(crate::event_loop::fit_tree(small.clone()), small);
}

#[test]
fn a_ps_reply_of_too_many_processes_leaves_the_last_out_and_says_so() {
    // 2000 workers with 3 KB command lines: 6 MB even cut.
    let processes: Vec<_> = (5000..7000).map(|raw| with_command(raw, 3000)).collect();
    let tree = crate::event_loop::fit_tree(Tree::new(processes, true));
    ps_fits_a_reply(&tree);
    let kept = tree.processes.len();
    assert!((1000..2000).contains(&kept), "{kept}");
    assert_eq!(tree.processes[0].pid, pid(5000));
    assert_eq!(
        tree.cut.as_deref(),
        Some(
            format!(
                "{} processes left out to fit a reply of {} bytes",
                2000 - kept,
                crate::protocol::MAX_REPLY
            )
            .as_str()
        )
    );
    // As few as need be: one more would not fit.
    let json = serde_json::to_string(&tree).unwrap();
    assert!(json.len() + 3100 > crate::protocol::MAX_REPLY - 100);
}

#[test]
fn a_stacks_reply_with_huge_command_lines_cuts_them_first() {
    let stacks: Vec<_> = (5000..5003)
        .map(|raw| {
            let mut process = deep(raw, 3, 10);
            process.command = "y".repeat(1_900_000);
            process
        })
        .collect();
    let fitted = crate::event_loop::fit_stacks(stacks);
    fits_a_reply(&fitted);
    for process in &fitted {
        // Every frame kept, the command cut.
        assert_eq!(process.threads[0].frames.len(), 3);
        assert_eq!(process.skipped, None);
        assert!(process
            .command
            .ends_with("... (cut: the command line is 1900000 bytes)"));
    }
}

#[test]
fn a_late_grant_that_cannot_be_withdrawn_at_once_stays_listed_until_it_is() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let running =
        start(controller_over(&fake, &granter, &target).grant_deadline(Duration::from_millis(300)));
    let started = granter.stick(Some(Stuck::Late(Duration::from_millis(600))));
    // The undo fails, and the first retry.
    granter.fail_revokes(2);
    let reply = fake.raw(b"GRANT_ACCESS 77 TARGET 5001\n");
    assert!(
        reply.starts_with("ERROR: Grant failed: no answer"),
        "{reply}"
    );
    started.recv_timeout(HANG).unwrap();
    granter.stick(None);
    // The grant completes, its undo fails: it is in force, and listed.
    wait_until("the undo tried", || granter.revoke_attempts() >= 1);
    wait_until("the late grant listed", || {
        grants_listed(&fake) == [(5001, 77)]
    });
    wait_until("the late grant withdrawn", || {
        granter.revoked() == [pid(5001)]
    });
    assert!(grants_listed(&fake).is_empty());
    running.terminate(&fake);
}

#[test]
fn a_failed_revoke_waits_while_its_process_is_frozen() {
    let (fake, granter, target, running) = started_tree();
    let session = granted_on(&fake, 77, 5001);
    granter.fail_revokes(1);
    target.0.frozen_others.lock().unwrap().push(5001);
    drop(session);
    wait_until("a revoke tried", || granter.revoke_attempts() == 1);
    // Past its retry time, frozen: not tried (it would hold the granter up).
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(granter.revoke_attempts(), 1);
    assert_eq!(grants_listed(&fake), [(5001, 77)]);
    // Thawed: withdrawn.
    target.0.frozen_others.lock().unwrap().clear();
    wait_until("the grant revoked", || granter.revoked() == [pid(5001)]);
    assert!(grants_listed(&fake).is_empty());
    running.terminate(&fake);
}

// TASKS: the asyncio tasks of a process of the tree.
#[path = "tests_tasks.rs"]
mod tasks;

// Tests that keep cargo-mutants' mutants of the tree feature caught.
#[path = "tests_tree.rs"]
mod tree;

// The agent: AGENT_ATTACH, STATUS, stacks through it.
#[path = "tests_agent.rs"]
mod agent;

// Profiles: PROFILE and SAMPLES.
#[path = "tests_profile.rs"]
mod profile;

// The service manager: ready, status, stopping, the watchdog.
#[path = "tests_notify.rs"]
mod notify;

#[path = "tests_audit.rs"]
mod audit;
// Time limits: GRANT_ACCESS ... FOR, max_grant, the end of a client's time.
#[path = "tests_limits.rs"]
mod limits;
