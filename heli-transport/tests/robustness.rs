//! What hostile or unlucky clients must not be able to do to either
//! transport: pass for a process whose pid they inherited, lock everyone out
//! with idle connections, or glue their half of a line onto the next
//! client's request; and what an unlucky client must not meet: a pipe or
//! socket that is there but not served yet.
//!
//! Every test runs under a watchdog ([`bounded`]) and, one at a time, under
//! [`SERIAL`] ([`one_at_a_time`]): one of them allocates pids on purpose,
//! another opens a thousand connections. The controller is a tiny fake that
//! records every [`Event`], except where the real [`Controller`] must set
//! the grant holder.

mod common;

use common::{bounded, is_root, join_within, standard, told, wait_until, Fresh, Server, TARGET};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use heli_core::protocol::{Reply, Request};
use heli_core::{
    Client, Connection, Controller, Credentials, Exit, ExitStatus, Granter, Peer, Pid, ProcessId,
    ProcessInfo, Processes, Supervisor, Transport,
};
use heli_proc::ProcFs;
use heli_transport::{FifoTransport, UnixSocketTransport};

/// The system's Python.
const PYTHON: &str = "/usr/bin/python3";

/// One test at a time in this file.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `body` under a watchdog of `secs` seconds ([`bounded`]), while no
/// other test of this file runs ([`SERIAL`]).
fn one_at_a_time<T: Send + 'static>(secs: u64, body: impl FnOnce() -> T + Send + 'static) -> T {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    bounded(secs, body)
}

/// Session `test` in a temporary runtime directory, set up by `configure`.
fn unix_server(
    configure: impl FnOnce(UnixSocketTransport) -> UnixSocketTransport,
) -> Server<UnixSocketTransport> {
    let tmp = tempfile::tempdir().unwrap();
    let transport = configure(UnixSocketTransport::in_dir(tmp.path()));
    Server::on(Some(tmp), transport, standard)
}

// ---------------------------------------------------------------------------
// A pid reused by another process (Unix socket)
// ---------------------------------------------------------------------------

/// Forks A, which connects, asks once, forks C and exits; with `reuse`
/// (root only), then forks N with A's pid (set with `ns_last_pid`), which
/// runs `sleep`. Prints A's pid and N's (0 without `reuse`). Each line of
/// its input makes C ask again on A's connection and print the reply; at
/// the end of its input N is killed and C exits. Python's own start-up is
/// over before A is forked: A and N start within a few milliseconds, often
/// in one clock tick.
const CONNECT_FORK_EXIT: &str = "import os, signal, socket, sys
path, reuse = sys.argv[1], sys.argv[2] == 'reuse'
go_r, go_w = os.pipe()
a = os.fork()
if a == 0:
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    replies = s.makefile('rb')
    def ask():
        s.sendall(b'GET_TARGET_PID\\n')
        return replies.readline().decode().strip()
    ask()
    if os.fork() == 0:
        os.close(go_w)
        while os.read(go_r, 1):
            print(ask(), flush=True)
        os._exit(0)
    os._exit(0)
os.waitpid(a, 0)
n = 0
if reuse:
    with open('/proc/sys/kernel/ns_last_pid', 'w') as f:
        f.write(str(a - 1))
    n = os.fork()
    if n == 0:
        os.execvp('sleep', ['sleep', '60'])
print(a, n, flush=True)
for line in sys.stdin:
    os.write(go_w, b'x')
if n:
    os.kill(n, signal.SIGKILL)
    os.waitpid(n, 0)
";

/// A connection made by a process that has exited, kept by its child.
struct Inherited {
    /// The pid of A, which connected and exited, and the request it made.
    a: (u32, Peer),
    /// The pid of N, made with A's pid (or 0).
    n: u32,
    script: Child,
    output: BufReader<ChildStdout>,
}

impl Inherited {
    /// Runs [`CONNECT_FORK_EXIT`] against `server`.
    fn make(server: &Server<UnixSocketTransport>, reuse: bool) -> Inherited {
        let mut script = Command::new(PYTHON)
            .args(["-c", CONNECT_FORK_EXIT])
            .arg(server.transport.path())
            .arg(if reuse { "reuse" } else { "no" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut output = BufReader::new(script.stdout.take().unwrap());
        let pids: Vec<u32> = read_line(&mut output)
            .split(' ')
            .map(|pid| pid.parse().unwrap())
            .collect();
        let (request, peer) = server.requests().pop().unwrap();
        assert_eq!(request, Ok(Request::GetTargetPid));
        assert_eq!(peer.process().map(|id| id.pid.get()), Some(pids[0]));
        Inherited {
            a: (pids[0], peer),
            n: pids[1],
            script,
            output,
        }
    }

    /// C asks on A's connection; the peer the controller saw.
    fn ask(&mut self, server: &Server<UnixSocketTransport>) -> Peer {
        let before = server.requests().len();
        let input = self.script.stdin.as_mut().unwrap();
        input.write_all(b"ask\n").unwrap();
        assert_eq!(read_line(&mut self.output), "TARGET_PID 4242");
        let requests = server.requests();
        assert_eq!(requests.len(), before + 1);
        let (request, peer) = requests[before].clone();
        assert_eq!(request, Ok(Request::GetTargetPid));
        peer
    }
}

impl Drop for Inherited {
    fn drop(&mut self) {
        // N is killed, C exits.
        drop(self.script.stdin.take());
        let _ = self.script.wait();
    }
}

fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

#[test]
fn requests_after_the_connected_process_exited_name_no_process() {
    one_at_a_time(20, || {
        let server = Server::<UnixSocketTransport>::start();
        let mut inherited = Inherited::make(&server, false);
        let peer = inherited.ask(&server);
        // The same connection, the same user; the process that connected
        // is gone, so none is named.
        assert_eq!(peer.connection, inherited.a.1.connection);
        assert_eq!(
            peer.credentials,
            Some(Credentials {
                uid: nix::unistd::Uid::effective().as_raw(),
                process: None,
            })
        );
        drop(inherited);
        server.shut_down().unwrap();
    })
}

#[test]
fn a_reused_pid_is_not_taken_for_the_process_that_connected() {
    assert!(
        is_root(),
        "this test needs root (ns_last_pid): run it as root"
    );
    one_at_a_time(60, || {
        let server = Server::<UnixSocketTransport>::start();
        // Until N gets A's pid and a start time equal to A's, to the clock
        // tick: what the controller would take for A.
        let mut inherited = (0..50)
            .map(|_| Inherited::make(&server, true))
            .find(|inherited| {
                let (a_pid, a_peer) = inherited.a;
                inherited.n == a_pid
                    && ProcFs.identity(Pid::new(a_pid).unwrap()).unwrap() == a_peer.process()
            })
            .expect("N never got A's pid and start time");

        let peer = inherited.ask(&server);
        assert_eq!(peer.connection, inherited.a.1.connection);
        assert_eq!(
            peer.process(),
            None,
            "the process that connected has exited: {peer:?}"
        );
        drop(inherited);
        server.shut_down().unwrap();
    })
}

// ---------------------------------------------------------------------------
// Idle connections (Unix socket)
// ---------------------------------------------------------------------------

/// Lets this process open `n` files.
fn allow_files(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < n {
        assert!(hard >= n, "RLIMIT_NOFILE's hard limit {hard} is below {n}");
        setrlimit(Resource::RLIMIT_NOFILE, n, hard).unwrap();
    }
}

#[test]
fn a_thousand_idle_connections_do_not_lock_clients_out() {
    one_at_a_time(60, || {
        allow_files(4096);
        let server = Server::<UnixSocketTransport>::start();
        let path = server.transport.path().to_owned();
        // 1,030 connections that never send anything: the limit (1,024) is
        // reached, and a few more are tried.
        let idle: Vec<UnixStream> = (0..1030)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        thread::sleep(Duration::from_millis(1500));

        let start = Instant::now();
        let status = server.client().status();
        assert_eq!(
            status
                .map(|status| status.pid)
                .map_err(|err| err.to_string()),
            Ok(TARGET)
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        server.client().terminate().unwrap();
        drop(idle);
        server.shut_down().unwrap();
    })
}

#[test]
fn idle_connections_are_closed_and_told_why() {
    one_at_a_time(20, || {
        let server = unix_server(|transport| transport.idle_timeout(Duration::from_millis(300)));
        let path = server.transport.path().to_owned();
        let start = Instant::now();
        let mut idle = UnixStream::connect(&path).unwrap();
        assert_eq!(
            told(&mut idle),
            "ERROR: Connection closed: idle for 0.3 s; connect again\n"
        );
        let after = start.elapsed();
        assert!(
            after >= Duration::from_millis(300) && after < Duration::from_secs(2),
            "{after:?}"
        );

        // Idle again after each answer; a client's next request gets the
        // reason as its reply.
        let mut connection = server.transport.connect(Duration::from_secs(2)).unwrap();
        for _ in 0..3 {
            thread::sleep(Duration::from_millis(150));
            let reply = connection.request(Request::GetTargetPid, Duration::from_secs(2));
            assert_eq!(reply.unwrap(), Reply::TargetPid(TARGET));
        }
        thread::sleep(Duration::from_millis(600));
        let reply = connection.request(Request::GetTargetPid, Duration::from_secs(2));
        assert_eq!(
            reply.unwrap(),
            Reply::Error("Connection closed: idle for 0.3 s; connect again".into())
        );
        // A line begun is not idle: it has its own 2 s.
        let mut half = UnixStream::connect(&path).unwrap();
        half.write_all(b"GET_TARG").unwrap();
        thread::sleep(Duration::from_millis(600));
        half.write_all(b"ET_PID\n").unwrap();
        let mut reply = String::new();
        BufReader::new(&half).read_line(&mut reply).unwrap();
        assert_eq!(reply, "TARGET_PID 4242\n");
        server.shut_down().unwrap();
    })
}

#[test]
fn at_the_limit_the_connection_idle_longest_makes_room() {
    one_at_a_time(20, || {
        let server = unix_server(|transport| transport.max_connections(3));
        let path = server.transport.path().to_owned();
        let connect = || {
            let mut connection = server.transport.connect(Duration::from_secs(2)).unwrap();
            let reply = connection.request(Request::GetTargetPid, Duration::from_secs(2));
            assert_eq!(reply.unwrap(), Reply::TargetPid(TARGET));
            connection
        };
        let mut first = UnixStream::connect(&path).unwrap();
        let mut second = connect();
        let mut third = UnixStream::connect(&path).unwrap();
        // Recently active, all of them: a fourth is refused as before.
        let mut refused = UnixStream::connect(&path).unwrap();
        assert_eq!(
            told(&mut refused),
            "ERROR: too many connections to session test (3); try again later\n"
        );
        thread::sleep(UnixSocketTransport::EVICTABLE_AFTER + Duration::from_millis(100));
        // The second asks again: the first and the third are idle, the
        // first longest.
        let reply = second.request(Request::GetTargetPid, Duration::from_secs(2));
        assert_eq!(reply.unwrap(), Reply::TargetPid(TARGET));
        let why = "ERROR: Connection closed: it was idle while session test was full (3 connections); connect again\n";
        let _fourth = connect();
        assert_eq!(told(&mut first), why);
        let _fifth = connect();
        assert_eq!(told(&mut third), why);
        // The second, the fourth and the fifth were active just now.
        let mut refused = UnixStream::connect(&path).unwrap();
        assert!(told(&mut refused).starts_with("ERROR: too many connections"));
        let reply = second.request(Request::GetTargetPid, Duration::from_secs(2));
        assert_eq!(reply.unwrap(), Reply::TargetPid(TARGET));
        server.shut_down().unwrap();
    })
}

/// The real controller's target for [`the_grant_holder_is_never_closed`]:
/// `sleep`, reaped by a thread of its own.
#[derive(Debug)]
struct Sleeper {
    pid: Arc<Mutex<Option<Pid>>>,
    exits: (
        crossbeam_channel::Sender<Exit>,
        crossbeam_channel::Receiver<Exit>,
    ),
}

impl Processes for Sleeper {
    fn process(&self, pid: Pid) -> io::Result<Option<ProcessInfo>> {
        ProcFs.process(pid)
    }
}

impl Supervisor for Sleeper {
    fn spawn(&mut self) -> io::Result<Pid> {
        let mut child = Command::new("sleep").arg("60").spawn()?;
        let pid = Pid::new(child.id()).unwrap();
        *self.pid.lock().unwrap() = Some(pid);
        let (running, exits) = (Arc::clone(&self.pid), self.exits.0.clone());
        thread::spawn(move || {
            use std::os::unix::process::ExitStatusExt;
            let status = child.wait().unwrap();
            *running.lock().unwrap() = None;
            let status = match status.code() {
                Some(code) => ExitStatus::Code(code),
                None => ExitStatus::Signal(status.signal().unwrap_or(0)),
            };
            let _ = exits.send(Exit { pid, status });
        });
        Ok(pid)
    }

    fn exits(&self) -> crossbeam_channel::Receiver<Exit> {
        self.exits.1.clone()
    }

    fn pid(&self) -> Option<Pid> {
        *self.pid.lock().unwrap()
    }

    fn signal(&mut self, signal: i32) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("no target runs"))?;
        let signal = nix::sys::signal::Signal::try_from(signal)?;
        Ok(nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::from(pid)),
            signal,
        )?)
    }

    fn terminate(&mut self) -> io::Result<()> {
        self.signal(nix::libc::SIGTERM)
    }

    fn kill(&mut self) -> io::Result<()> {
        self.signal(nix::libc::SIGKILL)
    }
}

/// A granter that grants nothing for real.
#[derive(Debug)]
struct Pretend;

impl Granter for Pretend {
    fn name(&self) -> &str {
        "pretend"
    }

    fn grant(&mut self, _: ProcessId, _: ProcessId, _: &heli_core::Deadline) -> io::Result<()> {
        Ok(())
    }

    fn revoke(&mut self, _: ProcessId, _: &heli_core::Deadline) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_grant_holder_is_never_closed() {
    one_at_a_time(30, || {
        let tmp = tempfile::tempdir().unwrap();
        let idle_timeout = Duration::from_millis(1500);
        let transport = UnixSocketTransport::session_in(tmp.path().join("run"), "grant")
            .unwrap()
            .max_connections(2)
            .idle_timeout(idle_timeout);
        // The real controller sets the grant holder for its listener.
        let sleeper = Sleeper {
            pid: Arc::default(),
            exits: crossbeam_channel::unbounded(),
        };
        let controller = Controller::new(transport.clone(), Pretend, sleeper);
        let shutdown = controller.shutdown_handle();
        let run = thread::spawn(move || controller.run());
        let client = Client::new(transport.clone());
        wait_until(
            Duration::from_secs(5),
            "the controller never listened",
            || client.target_pid().is_ok(),
        );

        // The controller runs in this process, and a grant never goes to
        // the controller: the debugger is a child of ours.
        let mut debugger = Command::new("sleep").arg("60").spawn().unwrap();
        let debugger_pid = Pid::new(debugger.id()).unwrap();
        let mut holder = client.session().unwrap();
        holder.grant_access(debugger_pid).unwrap();
        let granted = Instant::now();
        let mut other = transport.connect(Duration::from_secs(2)).unwrap();
        assert!(other
            .request(Request::GetTargetPid, Duration::from_secs(2))
            .is_ok());
        // Both idle long enough to make room; the holder longest, but the
        // other one goes.
        thread::sleep(UnixSocketTransport::EVICTABLE_AFTER + Duration::from_millis(200));
        let status = client.status().unwrap();
        assert_eq!(status.holder, Some(debugger_pid));
        let reply = other.request(Request::GetTargetPid, Duration::from_secs(2));
        assert_eq!(
            reply.unwrap(),
            Reply::Error(
                "Connection closed: it was idle while session grant was full (2 connections); connect again".into()
            )
        );
        // Idle for twice the idle timeout: still open, still the holder.
        thread::sleep((granted + idle_timeout * 2).saturating_duration_since(Instant::now()));
        assert_eq!(holder.status().unwrap().holder, Some(debugger_pid));
        drop(holder);
        let _ = debugger.kill();
        let _ = debugger.wait();
        shutdown.shutdown();
        join_within(run, Duration::from_secs(10)).unwrap();
    })
}

// ---------------------------------------------------------------------------
// Unfinished lines (named pipes)
// ---------------------------------------------------------------------------

/// Opens `server`'s control pipe for writing, as any process of the user
/// can, and writes `begun` to it: the start of a line.
fn begin_line(server: &Server<FifoTransport>, begun: &[u8]) -> File {
    let mut raw = OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(server.transport.dir().join("control"))
        .unwrap();
    raw.write_all(begun).unwrap();
    raw
}

#[test]
fn a_line_left_unfinished_by_a_writer_that_closed_is_dropped() {
    one_at_a_time(20, || {
        let server = Server::<FifoTransport>::start();
        for _ in 0..20 {
            drop(begin_line(&server, b"GET_TAR"));
            // At once: not after the 2 s given to an unfinished line.
            let start = Instant::now();
            assert_eq!(
                server.client().target_pid().map_err(|err| err.to_string()),
                Ok(TARGET)
            );
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{:?}",
                start.elapsed()
            );
        }
        let requests = server.requests();
        assert_eq!(requests.len(), 20);
        assert!(
            requests
                .iter()
                .all(|(request, _)| *request == Ok(Request::GetTargetPid)),
            "{requests:?}"
        );
        server.shut_down().unwrap();
    })
}

#[test]
fn a_writer_that_keeps_its_end_open_finishes_its_line() {
    one_at_a_time(20, || {
        let server = Server::<FifoTransport>::start();
        let mut raw = begin_line(&server, b"GET_TARG");
        thread::sleep(Duration::from_millis(300));
        raw.write_all(b"ET_PID\n").unwrap();
        wait_until(Duration::from_secs(2), "no request", || {
            !server.requests().is_empty()
        });
        assert_eq!(server.requests()[0].0, Ok(Request::GetTargetPid));
        // Its reply waits in the response pipe (once written: the request
        // is seen before it is answered); a client drains it.
        let mut reply = String::new();
        let mut response = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(server.transport.dir().join("response"))
            .unwrap();
        wait_until(Duration::from_secs(2), "no reply", || {
            let _ = response.read_to_string(&mut reply);
            reply.ends_with('\n')
        });
        assert_eq!(reply, "TARGET_PID 4242\n");
        drop(raw);
        assert_eq!(
            server.client().target_pid().map_err(|err| err.to_string()),
            Ok(TARGET)
        );
        server.shut_down().unwrap();
    })
}

#[test]
fn a_fragment_of_a_writer_that_stays_silent_is_dropped_before_a_client_writes() {
    one_at_a_time(20, || {
        let server = Server::<FifoTransport>::start();
        // Open, but silent: its fragment is dropped after 2 s, and a
        // client of ours waits for that rather than continue it.
        let raw = begin_line(&server, b"GRANT_ACC");
        thread::sleep(Duration::from_millis(100));
        let start = Instant::now();
        let pid = server
            .client()
            .timeout(Duration::from_secs(5))
            .target_pid()
            .map_err(|err| err.to_string());
        assert_eq!(pid, Ok(TARGET));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        assert_eq!(server.requests().len(), 1);
        drop(raw);
        server.shut_down().unwrap();
    })
}

// ---------------------------------------------------------------------------
// A listener found before it listens (both transports)
// ---------------------------------------------------------------------------

/// Runs `listen` while another thread waits, spinning, for `file` to show
/// up and then `probe`s it at once, each of `rounds` times; fails unless
/// every probe succeeded, saying how many failed and the first error.
fn probe_while_listening<T: Transport>(
    rounds: usize,
    make: impl Fn(&Path) -> (T, std::path::PathBuf),
    probe: impl Fn(&Path) -> io::Result<()> + Send + Sync + 'static,
) {
    let probe = Arc::new(probe);
    let seen: Vec<io::Result<()>> = (0..rounds)
        .map(|_| {
            let tmp = tempfile::tempdir().unwrap();
            let (transport, file) = make(tmp.path());
            let watcher = {
                let probe = Arc::clone(&probe);
                thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while std::fs::symlink_metadata(&file).is_err() {
                        assert!(
                            Instant::now() < deadline,
                            "{} never showed up",
                            file.display()
                        );
                        std::hint::spin_loop();
                    }
                    probe(&file)
                })
            };
            let listener = transport.listen().unwrap();
            let seen = join_within(watcher, Duration::from_secs(6));
            drop(listener);
            seen
        })
        .collect();
    let failed: Vec<_> = seen.iter().filter_map(|seen| seen.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {rounds}: {:?}",
        failed.len(),
        failed[0]
    );
}

#[test]
fn a_session_socket_is_listening_once_it_is_there() {
    one_at_a_time(60, || {
        probe_while_listening(
            400,
            |dir| {
                let transport = UnixSocketTransport::session_in(dir.join("run"), "s").unwrap();
                let file = transport.path().to_owned();
                (transport, file)
            },
            |file| UnixStream::connect(file).map(drop),
        );
    })
}

#[test]
fn named_pipes_are_open_once_they_are_there() {
    one_at_a_time(60, || {
        probe_while_listening(
            400,
            |dir| {
                let transport = FifoTransport::new(dir.join("pipes"));
                let file = transport.dir().join("response");
                (transport, file)
            },
            // Nobody holding the response pipe open for writing: a read
            // finds end of file instead of waiting for a reply.
            |file| {
                let mut response = OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_NONBLOCK)
                    .open(file)?;
                match response.read(&mut [0u8; 16]) {
                    Ok(0) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "nobody writes it",
                    )),
                    Ok(_) => Ok(()),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(()),
                    Err(err) => Err(err),
                }
            },
        );
    })
}
