//! `UnixSocketTransport` with real sockets in temporary runtime directories
//! (never the user's real `XDG_RUNTIME_DIR`).
//!
//! Every test runs its body under a watchdog (the bounds are listed in
//! [`watched!`], the bodies are plain functions): a hang is a failure, never
//! a stuck test run. The controller is a tiny fake: a thread
//! that records every [`Event`] and answers each request with a closure's
//! reply. Child processes (`sleep`, `/usr/bin/python3`) are killed and
//! reaped by guards.

mod common;

use common::{
    as_pid, ask, bounded, counting, expect_refused, expect_unusable, is_root, join_within, line_of,
    mode_of, names_in, private_dir, standard, wait_until, Seen, NOBODY, TARGET,
};
use std::collections::HashSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{chown, symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use heli_core::protocol::{Reply, Request};
use heli_core::{
    Client, Connection, Credentials, ErrorKind, Listener, Peer, Pid, ProcessId, Processes, Stopper,
    Transport,
};
use heli_proc::ProcFs;
use heli_transport::{SessionState, UnixSocketConnection, UnixSocketTransport};
use nix::fcntl::{Flock, FlockArg};

/// The system's Python, reachable by any user (not a shim under /root).
const PYTHON: &str = "/usr/bin/python3";

crate::watched!(
    listen_makes_a_private_socket_and_a_lock: 10,
    round_trips_in_both_dialects: 10,
    one_connection_carries_many_requests: 20,
    peer_credentials_reach_the_controller: 10,
    the_controller_hears_when_a_client_leaves: 20,
    a_peer_of_another_uid_is_refused: 20,
    many_concurrent_connections_are_served: 60,
    idle_and_unfinished_connections_do_not_hold_up_others: 30,
    garbage_and_over_long_lines_get_errors_and_the_connection_goes_on: 10,
    connections_beyond_the_limit_are_refused: 20,
    a_timed_out_round_trip_does_not_mix_up_replies: 20,
    an_agent_reply_brings_working_sockets_and_plain_readers_still_read_it: 10,
    sessions_are_listed_and_dead_ones_removed: 20,
    a_second_controller_of_a_live_session_is_refused: 10,
    controllers_racing_for_one_name_get_it_once: 30,
    a_starting_controller_removes_dead_sessions: 20,
    a_stale_socket_is_replaced: 10,
    a_stopped_listener_leaves_nothing_and_clients_find_no_session: 10,
    stopping_is_prompt_whatever_the_clients_do: 20,
    serve_ends_when_the_controller_is_gone: 10,
    hostile_runtime_directories_are_refused: 20,
    the_runtime_directory_falls_back_to_tmp: 10,
);

type Server = common::Server<UnixSocketTransport>;

impl Server {
    /// A plain socket to the session, with a read timeout.
    fn raw(&self) -> UnixStream {
        let stream = UnixStream::connect(self.transport.path()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
    }
}

/// Sends each line on `connection` in turn, checking its reply.
fn converse(connection: &mut UnixSocketConnection, exchanges: &[(&[u8], &str)]) {
    for &(line, reply) in exchanges {
        let line_text = String::from_utf8_lossy(line);
        assert_eq!(ask(connection, line), reply, "the reply to {line_text:?}");
    }
}

/// Reads `stream` until the other end closes it (end of file or reset);
/// what it sent, and when it closed.
fn read_until_closed(stream: &mut UnixStream) -> (String, Instant) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => break,
            Err(err) => panic!("the connection was not closed: {err}"),
        }
    }
    (String::from_utf8_lossy(&data).into_owned(), Instant::now())
}

/// Whether the other end still holds `stream` open and sent nothing.
fn still_open(stream: &UnixStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let open =
        matches!((&*stream).read(&mut buf), Err(err) if err.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).unwrap();
    open
}

/// For the parts that need another uid: fails (never skips) when not root.
fn require_root() -> bool {
    assert!(
        is_root(),
        "this test needs root for another uid: run it as root (CI does)"
    );
    true
}

fn my_uid() -> u32 {
    nix::unistd::Uid::effective().as_raw()
}

/// A socket file nobody listens on: what a controller killed with SIGKILL
/// leaves behind (std's listener does not remove its file).
fn dead_socket(path: &Path) {
    drop(UnixListener::bind(path).unwrap());
}

/// What no controller may take for a dead session of its own, and one it
/// may, in `dir`: `lockless.sock` (dead, without a lock file), `file.sock`
/// (no socket), `.hidden.sock` (no session name), `notes.txt` and (as root)
/// another user's `theirs.sock`. Returns the names that must stay.
fn strangers_in(dir: &Path) -> Vec<&'static str> {
    dead_socket(&dir.join("lockless.sock"));
    fs::write(dir.join("file.sock"), "not a socket").unwrap();
    dead_socket(&dir.join(".hidden.sock"));
    fs::write(dir.join("notes.txt"), "ignored").unwrap();
    let mut stay = vec![".hidden.sock", "file.sock", "notes.txt"];
    if require_root() {
        dead_socket(&dir.join("theirs.sock"));
        chown(dir.join("theirs.sock"), Some(NOBODY), Some(NOBODY)).unwrap();
        stay.push("theirs.sock");
    }
    stay
}

/// Fails unless `dir` holds `stay` and `also`, and nothing else.
fn assert_left<'a>(dir: &Path, mut stay: Vec<&'a str>, also: &[&'a str]) {
    stay.extend(also);
    stay.sort();
    assert_eq!(names_in(dir), stay);
}

/// A child process, killed and reaped when dropped.
struct Reaped(Child);

impl Reaped {
    fn spawn(command: &mut Command) -> Reaped {
        Reaped(command.spawn().unwrap())
    }

    fn id(&self) -> u32 {
        self.0.id()
    }

    /// Its first line of output.
    fn line(&mut self) -> String {
        let mut line = String::new();
        BufReader::new(self.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This process as the kernel identifies it: pid and start time.
fn my_identity() -> ProcessId {
    ProcFs.identity(Pid::this()).unwrap().unwrap()
}

fn listen_makes_a_private_socket_and_a_lock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let transport = UnixSocketTransport::session_in(&dir, "alpha").unwrap();
    assert_eq!(transport.name(), "alpha");
    assert_eq!(transport.path(), dir.join("alpha.sock"));
    let listener = transport.listen().unwrap();

    assert!(fs::symlink_metadata(&dir).unwrap().is_dir());
    assert_eq!(mode_of(&dir), 0o700);
    let meta = fs::symlink_metadata(dir.join("alpha.sock")).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!(meta.uid(), my_uid());
    let lock = dir.join("alpha.lock");
    assert_eq!(mode_of(&lock), 0o600);
    assert_eq!(
        fs::read_to_string(&lock).unwrap().trim(),
        std::process::id().to_string()
    );
    assert!(transport.describe().contains("alpha.sock"));
    assert!(transport.describe().contains("session alpha"));
    drop(listener);
    assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));
    assert!(dir.is_dir(), "the runtime directory is shared: it stays");
}

fn round_trips_in_both_dialects() {
    let server = Server::start();
    let mut connection = server.connect();
    converse(
        &mut connection,
        &[
            (b"GET_TARGET_PID\n", "TARGET_PID 4242\n"),
            (b"get_target_pid\n", "target_pid 4242\n"),
            (b"terminate\n", "ready\n"),
            (b"frobnicate\n", "error : Unknown command: frobnicate\n"),
        ],
    );
    assert_eq!(
        connection
            .request(Request::GetTargetPid, Duration::from_secs(2))
            .unwrap(),
        Reply::TargetPid(TARGET)
    );
    // The client of heli-core, a connection per call.
    assert_eq!(server.client().target_pid().unwrap(), TARGET);
    // A plain socket, as any program would use it.
    let mut raw = server.raw();
    raw.write_all(b"get_target_pid\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&raw).read_line(&mut reply).unwrap();
    assert_eq!(reply, "target_pid 4242\n");
    assert_eq!(connection.server_pid(), std::process::id());
    server.shut_down().unwrap();
}

fn one_connection_carries_many_requests() {
    let server = Server::answering(counting());
    let mut connection = server.connect();
    for n in 1..=200 {
        let reply = connection
            .request(Request::GetTargetPid, Duration::from_secs(2))
            .unwrap();
        assert_eq!(reply, Reply::TargetPid(as_pid(n)));
    }
    // Three lines in one write: three replies, in order.
    let mut raw = server.raw();
    raw.write_all(b"GET_TARGET_PID\nget_target_pid\nGET_TARGET_PID\n")
        .unwrap();
    let mut reader = BufReader::new(&raw);
    for expected in ["TARGET_PID 201\n", "target_pid 202\n", "TARGET_PID 203\n"] {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, expected);
    }
    let peers: HashSet<u64> = server
        .requests()
        .iter()
        .map(|(_, peer)| peer.connection)
        .collect();
    assert_eq!(peers.len(), 2, "two connections, each with one id");
    server.shut_down().unwrap();
}

fn peer_credentials_reach_the_controller() {
    let server = Server::start();
    let mut first = server.connect();
    let mut second = server.connect();
    ask(&mut first, b"GET_TARGET_PID\n");
    ask(&mut second, b"GET_TARGET_PID\n");
    ask(&mut first, b"GET_TARGET_PID\n");
    let peers: Vec<Peer> = server.requests().into_iter().map(|(_, p)| p).collect();
    assert_eq!(peers.len(), 3);
    for peer in &peers {
        let expected = Credentials {
            uid: my_uid(),
            process: Some(my_identity()),
        };
        assert_eq!(peer.credentials, Some(expected));
        assert_ne!(peer.connection, 0);
    }
    assert_ne!(peers[0].connection, peers[1].connection);
    assert_eq!(peers[0].connection, peers[2].connection);
    server.shut_down().unwrap();
}

fn the_controller_hears_when_a_client_leaves() {
    let server = Server::start();

    // Dropped after a request: Disconnected comes after its answer.
    let mut connection = server.connect();
    ask(&mut connection, b"GET_TARGET_PID\n");
    let peer = server.requests()[0].1;
    assert!(server.disconnected().is_empty());
    drop(connection);
    wait_until(Duration::from_secs(3), "no Disconnected", || {
        !server.disconnected().is_empty()
    });
    assert_eq!(
        server.seen(),
        [
            Seen::Request(Ok(Request::GetTargetPid), peer),
            Seen::Disconnected(peer)
        ]
    );

    // A client process killed with SIGKILL while connected.
    let script = "import socket, sys, time\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  s.sendall(b'GET_TARGET_PID\\n')\n\
                  print(s.recv(100).decode().strip(), flush=True)\n\
                  time.sleep(60)\n";
    let mut child = Reaped::spawn(
        Command::new(PYTHON)
            .args(["-c", script])
            .arg(server.transport.path())
            .stdout(Stdio::piped()),
    );
    assert_eq!(child.line().trim(), "TARGET_PID 4242");
    let child_peer = server
        .requests()
        .into_iter()
        .map(|(_, peer)| peer)
        .find(|peer| peer.process().map(|p| p.pid.get()) == Some(child.id()))
        .expect("the child's request, with its pid");
    assert_eq!(child_peer.credentials.unwrap().uid, my_uid());
    assert!(!server.disconnected().contains(&child_peer));
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    wait_until(
        Duration::from_secs(3),
        "no Disconnected for the killed client",
        || server.disconnected().contains(&child_peer),
    );
    // A connection that never sent anything is announced too.
    drop(server.raw());
    wait_until(
        Duration::from_secs(3),
        "no Disconnected for a silent client",
        || server.disconnected().len() == 3,
    );
    server.shut_down().unwrap();
}

#[test]
fn grant_requests_reach_the_controller_with_the_askers_credentials() {
    // Deciding who may be granted what is the controller's: the transport
    // forwards every grant, whatever pid it names, with what it verified.
    bounded(20, || {
        let server = Server::start();
        let me = std::process::id();
        let mut connection = server.connect();
        let child = Reaped::spawn(Command::new("sleep").arg("30"));
        let pids = [
            me,
            child.id(),
            1,
            std::os::unix::process::parent_id(),
            i32::MAX as u32,
        ];
        for pid in pids {
            assert_eq!(
                ask(
                    &mut connection,
                    format!("GRANT_ACCESS {pid} FORCE\n").as_bytes()
                ),
                "READY\n"
            );
        }
        let requests = server.requests();
        let granted: Vec<Option<u32>> = requests
            .iter()
            .map(|(request, _)| request.clone().unwrap().grant_pid().map(u32::from))
            .collect();
        assert_eq!(granted, pids.map(Some));
        let expected = Credentials {
            uid: my_uid(),
            process: Some(my_identity()),
        };
        for (_, peer) in &requests {
            assert_eq!(peer.credentials, Some(expected));
        }
        server.shut_down().unwrap();
    })
}

fn a_peer_of_another_uid_is_refused() {
    assert!(
        is_root(),
        "connecting as another uid needs root: run the tests as root (CI does)"
    );
    let server = Server::start();
    // Let uid 65534 reach the socket: only the credentials stop it.
    fs::set_permissions(
        server.tmp.as_ref().unwrap().path(),
        fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    fs::set_permissions(server.dir(), fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(server.transport.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let script = "import socket, sys\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.settimeout(5)\n\
                  s.connect(sys.argv[1])\n\
                  try:\n\
                  \x20   s.sendall(b'GRANT_ACCESS 1\\nGET_TARGET_PID\\n')\n\
                  except (BrokenPipeError, ConnectionResetError):\n\
                  \x20   pass  # refused before it could write\n\
                  data = b''\n\
                  try:\n\
                  \x20   while True:\n\
                  \x20       chunk = s.recv(4096)\n\
                  \x20       if not chunk: break\n\
                  \x20       data += chunk\n\
                  except ConnectionResetError:\n\
                  \x20   pass\n\
                  except socket.timeout:\n\
                  \x20   print('still open', flush=True)\n\
                  print(repr(data.decode()), flush=True)\n";
    let output = Command::new(PYTHON)
        .args(["-c", script])
        .arg(server.transport.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout.trim(),
        format!(
            "'ERROR: permission denied: session test belongs to uid {}, not to uid {NOBODY}\\n'",
            my_uid()
        ),
        "{output:?}"
    );
    thread::sleep(Duration::from_millis(100));
    assert!(server.seen().is_empty(), "{:?}", server.seen());
    // Our own clients are still served.
    let mut connection = UnixStream::connect(server.transport.path()).unwrap();
    connection.write_all(b"GET_TARGET_PID\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&connection).read_line(&mut reply).unwrap();
    assert_eq!(reply, "TARGET_PID 4242\n");
    server.shut_down().unwrap();
}

fn many_concurrent_connections_are_served() {
    let server = Server::start();
    let clients = 256;
    let barrier = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let transport = server.transport.clone();
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut connection = transport.connect(Duration::from_secs(10)).unwrap();
                // All of them are connected at once.
                barrier.wait();
                connection
                    .request(Request::GetTargetPid, Duration::from_secs(10))
                    .unwrap()
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(
            join_within(thread, Duration::from_secs(50)),
            Reply::TargetPid(TARGET)
        );
    }
    let connections: HashSet<u64> = server
        .requests()
        .iter()
        .map(|(_, peer)| peer.connection)
        .collect();
    assert_eq!(connections.len(), clients);
    wait_until(
        Duration::from_secs(5),
        "Disconnected for every client",
        || server.disconnected().len() == clients,
    );
    server.shut_down().unwrap();
}

fn idle_and_unfinished_connections_do_not_hold_up_others() {
    let server = Server::start();
    let idle: Vec<UnixStream> = (0..50).map(|_| server.raw()).collect();
    let mut halves: Vec<(UnixStream, Instant)> = (0..50)
        .map(|_| {
            let mut stream = server.raw();
            stream.write_all(b"GET_TARG").unwrap();
            (stream, Instant::now())
        })
        .collect();
    // A slow writer: a byte every 300 ms never finishes its line in time.
    let mut slow = server.raw();
    let slow_start = Instant::now();
    let writer = {
        let mut slow = slow.try_clone().unwrap();
        thread::spawn(move || {
            for byte in b"GET_TARGET_PID".iter().cycle().take(20) {
                if slow.write_all(&[*byte]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(300));
            }
        })
    };

    // A normal client is answered at once.
    thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let mut connection = server.connect();
    assert_eq!(
        ask(&mut connection, b"GET_TARGET_PID\n"),
        "TARGET_PID 4242\n"
    );
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );

    // Unfinished lines are answered with an error and closed after 2 s.
    let expected = "ERROR: Request line not finished within 2 s; closing the connection\n";
    for (stream, began) in &mut halves {
        let (data, closed) = read_until_closed(stream);
        assert_eq!(data, expected);
        let after = closed - *began;
        assert!(
            after >= Duration::from_millis(1900) && after < Duration::from_millis(3500),
            "closed after {after:?}"
        );
    }
    let (data, closed) = read_until_closed(&mut slow);
    assert_eq!(data, expected);
    let after = closed - slow_start;
    assert!(
        after >= Duration::from_millis(1900) && after < Duration::from_millis(3500),
        "the slow writer was closed after {after:?}"
    );
    join_within(writer, Duration::from_secs(10));

    // Idle connections stay open and work.
    for stream in &idle {
        assert!(still_open(stream), "an idle connection was closed");
    }
    for mut stream in idle {
        stream.write_all(b"GET_TARGET_PID\n").unwrap();
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply).unwrap();
        assert_eq!(reply, "TARGET_PID 4242\n");
    }
    // The controller only heard complete lines.
    assert!(server
        .requests()
        .iter()
        .all(|(request, _)| *request == Ok(Request::GetTargetPid)));
    assert_eq!(server.requests().len(), 51);
    server.shut_down().unwrap();
}

fn garbage_and_over_long_lines_get_errors_and_the_connection_goes_on() {
    let server = Server::start();
    let mut connection = server.connect();
    let too_long = "ERROR: Request longer than 4096 bytes\n";
    converse(
        &mut connection,
        &[
            (b"\xff\xfe\n", "ERROR: Request is not valid UTF-8\n"),
            (b"GET\0PID\n", "ERROR: Unknown command: GET\\0PID\n"),
            (b"\n", "ERROR: Empty request\n"),
            (b"GRANT_ACCESS x\n", "ERROR: Invalid PID\n"),
            (b"GET_TARGET_PID\n", "TARGET_PID 4242\n"),
            (&line_of(b'A', 5000), too_long),
            // Much longer, in pieces: still one error.
            (&line_of(b'B', 100_000), too_long),
            (b"get_target_pid\n", "target_pid 4242\n"),
        ],
    );
    // The limit is 4096 bytes with the newline.
    let longest = ask(&mut connection, &line_of(b'A', 4095));
    assert!(
        longest.starts_with("ERROR: Unknown command: AAAA"),
        "{longest}"
    );
    converse(
        &mut connection,
        &[
            (&line_of(b'A', 4096), too_long),
            (b"GET_TARGET_PID\n", "TARGET_PID 4242\n"),
        ],
    );
    // Over-long lines never reached the controller; the rest did.
    let requests = server.requests();
    assert_eq!(requests.len(), 8, "{requests:?}");
    assert!(requests
        .iter()
        .all(|(request, _)| !format!("{request:?}").contains("longer")));
    server.shut_down().unwrap();
}

fn connections_beyond_the_limit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let transport = UnixSocketTransport::session_in(tmp.path().join("run"), "few")
        .unwrap()
        .max_connections(4);
    let server = Server::on(Some(tmp), transport, standard);
    let mut open: Vec<UnixSocketConnection> = (0..4).map(|_| server.connect()).collect();
    for connection in &mut open {
        assert_eq!(ask(connection, b"GET_TARGET_PID\n"), "TARGET_PID 4242\n");
    }
    let mut extra = server.raw();
    let (data, _) = read_until_closed(&mut extra);
    assert_eq!(
        data,
        "ERROR: too many connections to session few (4); try again later\n"
    );
    // One leaves: there is room again.
    drop(open.pop());
    wait_until(
        Duration::from_secs(3),
        "the closed connection was not noticed",
        || server.disconnected().len() == 1,
    );
    let mut again = server.connect();
    assert_eq!(ask(&mut again, b"GET_TARGET_PID\n"), "TARGET_PID 4242\n");
    server.shut_down().unwrap();
}

/// The fake controller's answer to `AGENT_ATTACH`: the client's ends of
/// two fresh socket pairs with the reply, the process's ends sent on
/// `kept`; the [`standard`] answers to the rest.
fn agent_answers(
    kept: mpsc::Sender<(UnixStream, UnixStream)>,
) -> impl FnMut(Result<Request, String>) -> (Reply, Vec<OwnedFd>) + Send + 'static {
    move |request| match request {
        Ok(Request::AgentAttach(process)) => {
            let (pdb, pdb_client) = UnixStream::pair().unwrap();
            let (interrupt, interrupt_client) = UnixStream::pair().unwrap();
            kept.send((pdb, interrupt)).unwrap();
            let reply = Reply::Agent {
                pid: process.unwrap_or(TARGET),
                python: "3.14.0".into(),
            };
            (reply, vec![pdb_client.into(), interrupt_client.into()])
        }
        other => (standard(other), Vec::new()),
    }
}

/// What one end writes the other reads.
fn assert_talk(writer: &UnixStream, reader: &UnixStream, what: &[u8]) {
    (&*writer).write_all(what).unwrap();
    reader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = vec![0u8; what.len()];
    (&*reader).read_exact(&mut got).unwrap();
    assert_eq!(got, what);
}

fn an_agent_reply_brings_working_sockets_and_plain_readers_still_read_it() {
    let (kept_tx, kept) = mpsc::channel();
    let server = Server::answering_with_fds(agent_answers(kept_tx));
    assert!(server.transport.passes_fds());
    let soon = || Instant::now() + Duration::from_secs(3);
    // heli-core's client: the two sockets, each the other end of the
    // process's, both ways.
    let (process, python, fds) = server.client().agent_attach(None).unwrap();
    assert_eq!((process, python.as_str(), fds.len()), (TARGET, "3.14.0", 2));
    let (pdb, interrupt) = kept.recv_timeout(Duration::from_secs(3)).unwrap();
    let mut fds = fds.into_iter().map(UnixStream::from);
    let (pdb_client, interrupt_client) = (fds.next().unwrap(), fds.next().unwrap());
    assert_talk(&pdb_client, &pdb, b"p counter\n");
    assert_talk(&pdb, &pdb_client, b"(Pdb) ");
    assert_talk(&interrupt_client, &interrupt, b"\x03");
    // On one connection, replies without descriptors before and after one
    // with, read either way.
    let mut connection = server.connect();
    let (reply, fds) = connection
        .round_trip_with_fds(b"GET_TARGET_PID\n", soon(), 2)
        .unwrap();
    assert_eq!((reply, fds.len()), (b"TARGET_PID 4242\n".to_vec(), 0));
    let (reply, fds) = connection
        .round_trip_with_fds(b"agent_attach 5001\n", soon(), 2)
        .unwrap();
    assert_eq!((reply, fds.len()), (b"agent 5001 3.14.0\n".to_vec(), 2));
    drop(kept.recv_timeout(Duration::from_secs(3)).unwrap());
    assert_eq!(
        ask(&mut connection, b"GET_TARGET_PID\n"),
        "TARGET_PID 4242\n"
    );
    // A client that reads with read(2), as any program would: the line;
    // the kernel closes the descriptors it did not take.
    let mut raw = server.raw();
    raw.write_all(b"AGENT_ATTACH\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&raw).read_line(&mut reply).unwrap();
    assert_eq!(reply, "AGENT 4242 3.14.0\n");
    let (mut pdb, _) = kept.recv_timeout(Duration::from_secs(3)).unwrap();
    pdb.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(pdb.read(&mut [0u8; 1]).unwrap(), 0);
    server.shut_down().unwrap();
}

fn a_timed_out_round_trip_does_not_mix_up_replies() {
    let mut count = counting();
    let mut first = true;
    let server = Server::answering(move |request| {
        if std::mem::take(&mut first) {
            thread::sleep(Duration::from_millis(600));
        }
        count(request)
    });
    let mut connection = server.connect();
    let err = connection
        .round_trip(
            b"GET_TARGET_PID\n",
            Instant::now() + Duration::from_millis(200),
        )
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    // The late reply (1) is skipped: this request gets its own (2).
    assert_eq!(ask(&mut connection, b"GET_TARGET_PID\n"), "TARGET_PID 2\n");
    assert_eq!(ask(&mut connection, b"GET_TARGET_PID\n"), "TARGET_PID 3\n");
    server.shut_down().unwrap();
}

fn sessions_are_listed_and_dead_ones_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    assert!(UnixSocketTransport::sessions_in(&dir).unwrap().is_empty());

    let live = UnixSocketTransport::session_in(&dir, "live").unwrap();
    let server = Server::on(None, live, standard);
    dead_socket(&dir.join("dead.sock"));
    fs::write(dir.join("dead.lock"), "1\n").unwrap();
    symlink(dir.join("live.sock"), dir.join("link.sock")).unwrap();
    let strangers = strangers_in(&dir);

    let sessions = UnixSocketTransport::sessions_in(&dir).unwrap();
    let found: Vec<(&str, &SessionState)> = sessions
        .iter()
        .map(|entry| (entry.name.as_str(), &entry.state))
        .collect();
    let foreign = |why: &str| SessionState::Foreign(why.to_owned());
    let mut expected = vec![
        (".hidden", foreign("not a session name")),
        ("dead", SessionState::Dead),
        ("file", foreign("not a socket")),
        ("link", foreign("a symbolic link")),
        ("live", SessionState::Live),
        ("lockless", SessionState::Dead),
    ];
    if require_root() {
        expected.push(("theirs", foreign(&format!("owned by uid {NOBODY}"))));
    }
    let expected: Vec<(&str, &SessionState)> = expected
        .iter()
        .map(|(name, state)| (*name, state))
        .collect();
    assert_eq!(found, expected);
    let live = sessions.iter().find(|entry| entry.name == "live").unwrap();
    assert_eq!(live.pid, Some(std::process::id()));
    assert_eq!(live.path, dir.join("live.sock"));
    assert_eq!(live.transport().path(), live.path);

    // Dead sockets (and their locks) are gone; the rest is untouched.
    assert_left(&dir, strangers, &["link.sock", "live.lock", "live.sock"]);
    // The live session did not notice more than a connection coming
    // and going.
    assert_eq!(Client::new(live.transport()).target_pid().unwrap(), TARGET);
    assert!(server.requests().len() == 1);

    let again = UnixSocketTransport::sessions_in(&dir).unwrap();
    assert!(again.iter().all(|entry| entry.state != SessionState::Dead));
    server.shut_down().unwrap();
}

fn a_second_controller_of_a_live_session_is_refused() {
    let server = Server::start();
    let err = UnixSocketTransport::session_in(server.dir(), "test")
        .unwrap()
        .listen()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "a controller already serves session test (PID {})",
            std::process::id()
        )),
        "{text}"
    );
    // The refused attempt took nothing away from the running one.
    assert_eq!(names_in(server.dir()), ["test.lock", "test.sock"]);
    assert_eq!(server.client().target_pid().unwrap(), TARGET);

    // Another name in the same directory is fine.
    let other = UnixSocketTransport::session_in(server.dir(), "other")
        .unwrap()
        .listen()
        .unwrap();
    drop(other);
    server.shut_down().unwrap();
}

fn controllers_racing_for_one_name_get_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    for round in 0..5 {
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let transport = UnixSocketTransport::session_in(&dir, "race").unwrap();
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    barrier.wait();
                    transport.listen()
                })
            })
            .collect();
        let results: Vec<_> = threads
            .into_iter()
            .map(|thread| join_within(thread, Duration::from_secs(10)))
            .collect();
        let winners = results.iter().filter(|result| result.is_ok()).count();
        assert_eq!(winners, 1, "round {round}: {results:?}");
        let me = std::process::id();
        for result in &results {
            if let Err(err) = result {
                // Turned away by the lock, naming the winner; not by
                // a failed bind.
                assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
                let text = err.to_string();
                assert!(
                    text.contains("session race") && text.contains(&format!("PID {me}")),
                    "{text}"
                );
            }
        }
        // The winner's files are intact and it accepts connections.
        assert_eq!(names_in(&dir), ["race.lock", "race.sock"]);
        UnixSocketTransport::session_in(&dir, "race")
            .unwrap()
            .connect(Duration::from_secs(1))
            .unwrap();
        drop(results);
        assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));
    }
}

fn a_starting_controller_removes_dead_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let live = UnixSocketTransport::session_in(&dir, "live").unwrap();
    let server = Server::on(None, live, standard);

    // A controller killed with SIGKILL: its socket and its lock file
    // stay (the kernel only lets go of the lock).
    let script = "import fcntl, os, socket, sys, time\n\
                  lock = open(os.path.join(sys.argv[1], 'killed.lock'), 'w')\n\
                  fcntl.flock(lock, fcntl.LOCK_EX)\n\
                  lock.write(f'{os.getpid()}\\n')\n\
                  lock.flush()\n\
                  s = socket.socket(socket.AF_UNIX)\n\
                  s.bind(os.path.join(sys.argv[1], 'killed.sock'))\n\
                  s.listen()\n\
                  print('listening', flush=True)\n\
                  time.sleep(60)\n";
    let mut killed = Reaped::spawn(
        Command::new(PYTHON)
            .args(["-c", script])
            .arg(&dir)
            .stdout(Stdio::piped()),
    );
    assert_eq!(killed.line().trim(), "listening");
    killed.0.kill().unwrap();
    killed.0.wait().unwrap();
    // A dead socket whose lock a controller holds (it is taking the
    // session over); a dead one without a lock file and entries that
    // are no sessions of ours.
    dead_socket(&dir.join("starting.sock"));
    let starting = fs::File::create(dir.join("starting.lock")).unwrap();
    let starting = Flock::lock(starting, FlockArg::LockExclusiveNonblock).unwrap();
    let strangers = strangers_in(&dir);
    assert!(names_in(&dir).contains(&"killed.sock".to_owned()));
    assert!(names_in(&dir).contains(&"killed.lock".to_owned()));

    // Another name in that directory: the dead sessions go, and nothing
    // holds up the start (no lock is waited for).
    let started = Instant::now();
    let fresh = UnixSocketTransport::session_in(&dir, "fresh")
        .unwrap()
        .listen()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let ours = [
        "fresh.lock",
        "fresh.sock",
        "live.lock",
        "live.sock",
        "starting.lock",
        "starting.sock",
    ];
    assert_left(&dir, strangers, &ours);
    // The live session saw no request, and serves on.
    assert!(server.requests().is_empty(), "{:?}", server.requests());
    assert_eq!(server.client().target_pid().unwrap(), TARGET);
    drop(fresh);
    drop(starting);
    server.shut_down().unwrap();
}

fn a_stale_socket_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = private_dir(tmp.path().join("run"));
    dead_socket(&dir.join("test.sock"));
    fs::write(dir.join("test.lock"), "1\n").unwrap();
    let transport = UnixSocketTransport::session_in(&dir, "test").unwrap();

    let err = transport.connect(Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        err.to_string()
            .contains("session test is gone (stale socket"),
        "{err}"
    );
    let err = Client::new(transport.clone()).target_pid().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");

    let server = Server::on(None, transport, standard);
    assert_eq!(server.client().target_pid().unwrap(), TARGET);
    assert_eq!(
        fs::read_to_string(dir.join("test.lock")).unwrap().trim(),
        std::process::id().to_string()
    );
    server.shut_down().unwrap();

    // Something that is no socket is not ours to replace.
    fs::write(dir.join("test.sock"), "precious").unwrap();
    let transport = UnixSocketTransport::session_in(&dir, "test").unwrap();
    expect_refused(transport.listen().unwrap_err(), "is not a socket");
    assert_eq!(
        fs::read_to_string(dir.join("test.sock")).unwrap(),
        "precious"
    );
}

fn a_stopped_listener_leaves_nothing_and_clients_find_no_session() {
    let tmp = tempfile::tempdir().unwrap();
    let transport = UnixSocketTransport::session_in(tmp.path().join("run"), "test").unwrap();
    let server = Server::on(None, transport.clone(), standard);
    let dir = server.dir();
    let mut connection = server.connect();
    let start = Instant::now();
    server.shut_down().unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));
    // The open connection was closed.
    let err = connection
        .round_trip(b"GET_TARGET_PID\n", Instant::now() + Duration::from_secs(2))
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
    let err = transport.connect(Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains(&format!(
            "no session test at {}",
            transport.path().display()
        )),
        "{err}"
    );
    let err = Client::new(transport.clone()).target_pid().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
    // The name is free again.
    drop(transport.listen().unwrap());
}

fn stopping_is_prompt_whatever_the_clients_do() {
    let (release, released) = mpsc::channel::<()>();
    let released = Mutex::new(released);
    let server = Server::answering(move |request| {
        if request == Ok(Request::Terminate) {
            // Hung until the test lets go.
            let _ = released.lock().unwrap().recv();
        }
        standard(request)
    });
    let idle: Vec<UnixStream> = (0..20).map(|_| server.raw()).collect();
    let mut half = server.raw();
    half.write_all(b"GET_").unwrap();
    // A client waiting for the hung controller.
    let mut waiting = server.raw();
    waiting.write_all(b"TERMINATE\n").unwrap();
    wait_until(
        Duration::from_secs(2),
        "the controller never got TERMINATE",
        || !server.requests().is_empty(),
    );

    let start = Instant::now();
    server.stop.stop();
    let serve = {
        let mut server = server;
        let serve = server.serve.take().unwrap();
        // Unblock the fake controller only after serve had to give up.
        let releaser = thread::spawn(move || {
            thread::sleep(Duration::from_secs(3));
            let _ = release.send(());
        });
        let result = join_within(serve, Duration::from_secs(3));
        drop(server);
        (result, releaser)
    };
    serve.0.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "serve took {:?} to stop",
        start.elapsed()
    );
    for mut stream in idle {
        assert_eq!(read_until_closed(&mut stream).0, "");
    }
    assert_eq!(read_until_closed(&mut half).0, "");
    assert_eq!(read_until_closed(&mut waiting).0, "");
    join_within(serve.1, Duration::from_secs(5));
}

fn serve_ends_when_the_controller_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let transport = UnixSocketTransport::session_in(tmp.path().join("run"), "t").unwrap();
    let mut listener = transport.listen().unwrap();
    let (events_tx, events) = crossbeam_channel::bounded(0);
    drop(events);
    let serve = thread::spawn(move || listener.serve(&events_tx));
    let mut connection = transport.connect(Duration::from_secs(2)).unwrap();
    let err = connection
        .round_trip(b"GET_TARGET_PID\n", Instant::now() + Duration::from_secs(2))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    join_within(serve, Duration::from_secs(2)).unwrap();
    assert!(!transport.path().exists());
}

fn hostile_runtime_directories_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |dir: &Path, needle: &str| {
        expect_unusable(&UnixSocketTransport::session_in(dir, "s").unwrap(), needle);
        expect_refused(UnixSocketTransport::sessions_in(dir).unwrap_err(), needle);
    };

    // A symbolic link, to a private directory or to nowhere: nothing is
    // made behind it.
    let real = private_dir(tmp.path().join("real"));
    let link = tmp.path().join("link");
    symlink(&real, &link).unwrap();
    check(&link, "is a symbolic link");
    assert!(names_in(&real).is_empty(), "followed the link");
    let nowhere = tmp.path().join("nowhere");
    let dangling = tmp.path().join("dangling");
    symlink(&nowhere, &dangling).unwrap();
    check(&dangling, "is a symbolic link");
    assert!(!nowhere.exists(), "created the directory behind a link");

    // Open to group or others.
    for mode in [0o755, 0o750, 0o711, 0o701, 0o1777] {
        let dir = tmp.path().join(format!("mode{mode:o}"));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        check(
            &dir,
            &format!("is open to group or others (mode {mode:04o})"),
        );
        assert_eq!(mode_of(&dir), mode, "the mode was changed behind our back");
        assert!(names_in(&dir).is_empty());
    }

    // Not a directory.
    let file = tmp.path().join("file");
    fs::write(&file, "").unwrap();
    check(&file, "is not a directory");

    // Another user's.
    if require_root() {
        let theirs = private_dir(tmp.path().join("theirs"));
        chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
        check(&theirs, &format!("is owned by uid {NOBODY}, not by you"));
        // The user cannot remove it from a shared /tmp: told the way out.
        check(&theirs, "set XDG_RUNTIME_DIR to a directory of your own");
        assert!(names_in(&theirs).is_empty());
    }

    // A served directory opened up later: clients refuse it.
    Server::start().refused_when_opened_up(0o755);
    // A socket of another user in our directory is refused too.
    let server = Server::start();
    if require_root() {
        chown(server.transport.path(), Some(NOBODY), None).unwrap();
        expect_refused(
            server
                .transport
                .connect(Duration::from_secs(1))
                .unwrap_err(),
            &format!("is owned by uid {NOBODY}"),
        );
    }
    server.shut_down().unwrap();
}

fn the_runtime_directory_falls_back_to_tmp() {
    let tmp = tempfile::tempdir().unwrap();
    let uid = my_uid();
    let fallback = PathBuf::from(format!("/tmp/heli-{uid}"));
    let from = |xdg: Option<&Path>, uid: u32| {
        UnixSocketTransport::runtime_dir_from(xdg.map(Path::as_os_str), uid)
    };

    let good = tmp.path().join("xdg");
    fs::create_dir(&good).unwrap();
    assert_eq!(from(Some(&good), uid), good.join("heli"));
    let mut slashed = good.clone().into_os_string();
    slashed.push("/");
    assert_eq!(from(Some(Path::new(&slashed)), uid), good.join("heli"));

    assert_eq!(from(None, uid), fallback);
    assert_eq!(from(Some(Path::new("")), uid), fallback);
    assert_eq!(from(Some(Path::new("relative/dir")), uid), fallback);
    assert_eq!(from(Some(&tmp.path().join("missing")), uid), fallback);
    let file = tmp.path().join("file");
    fs::write(&file, "").unwrap();
    assert_eq!(from(Some(&file), uid), fallback);
    let link = tmp.path().join("link");
    symlink(&good, &link).unwrap();
    assert_eq!(from(Some(&link), uid), fallback);
    let mut link_slashed = link.clone().into_os_string();
    link_slashed.push("/");
    assert_eq!(from(Some(Path::new(&link_slashed)), uid), fallback);
    // Someone else's directory.
    assert_eq!(
        from(Some(&good), uid + 1),
        PathBuf::from(format!("/tmp/heli-{}", uid + 1))
    );
}

#[test]
fn session_names_are_checked() {
    for bad in ["", ".x", "a/b", "../up", "sp ace", &"n".repeat(65)] {
        let err = UnixSocketTransport::session_in("/tmp", bad).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        assert!(err.to_string().contains("invalid session name"), "{err}");
    }
    let ok = UnixSocketTransport::session_in("/run/x", "target.py-1234").unwrap();
    assert_eq!(ok.path(), Path::new("/run/x/target.py-1234.sock"));
    let at = UnixSocketTransport::at("/somewhere/else.sock");
    assert_eq!(at.name(), "else");
    assert_eq!(at.path(), Path::new("/somewhere/else.sock"));
}
