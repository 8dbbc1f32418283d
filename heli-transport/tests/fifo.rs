//! `FifoTransport` with real named pipes in temporary directories.
//!
//! Every test runs its body under a watchdog (the bounds are listed in
//! [`watched!`], the bodies are plain functions): a hang is a failure, never
//! a stuck test run. The controller is a tiny fake
//! ([`common::Server`]): a thread that answers each request with a
//! closure's reply.

mod common;

use common::{
    as_pid, ask, bounded, counting, expect_refused, expect_unusable, is_root, join_within, line_of,
    mode_of, names_in, private_dir, standard, NOBODY, TARGET,
};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{chown, symlink, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use heli_core::protocol::Request;
use heli_core::{Client, ErrorKind, Listener, Stopper, Transport};
use heli_transport::FifoTransport;
use nix::sys::stat::Mode;

crate::watched!(
    listen_makes_private_pipes_and_a_pid_file: 10,
    a_second_listener_is_refused_and_named: 10,
    dropping_the_listener_removes_what_it_made: 10,
    leftovers_of_a_dead_controller_are_replaced: 10,
    a_symlinked_directory_is_refused: 10,
    a_directory_owned_by_someone_else_is_refused: 10,
    a_directory_open_to_group_or_others_is_refused: 10,
    a_client_refuses_pipes_that_are_regular_files: 10,
    a_client_never_follows_a_symlinked_pipe: 10,
    listen_never_follows_a_symlink_in_the_directory: 10,
    connect_without_a_controller_fails_at_once: 10,
    requests_round_trip_in_both_dialects: 10,
    a_reply_with_descriptors_arrives_without_them: 10,
    no_reply_is_lost_when_the_controller_is_slow: 10,
    a_reply_written_before_the_client_reads_is_kept: 10,
    the_original_blocking_client_works: 10,
    a_client_that_gave_up_does_not_steal_the_next_reply: 20,
    a_controller_that_never_answers_times_clients_out: 20,
    a_stale_reply_in_the_response_pipe_is_drained: 10,
    an_over_long_line_gets_one_error_reply: 10,
    half_a_line_is_dropped_after_silence: 15,
    the_stop_handle_ends_serve_promptly: 10,
    serve_returns_when_the_controller_is_gone: 10,
    many_clients_in_a_row_each_get_their_reply: 60,
    concurrent_clients_never_get_each_others_reply: 60,
    impatient_clients_under_a_slow_controller_never_mix_replies: 60,
    a_connection_kept_open_does_not_hold_other_clients_up: 10,
);

type Server = common::Server<FifoTransport>;

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600)).unwrap();
}

/// Opens a FIFO without blocking (a writer fails with ENXIO when nobody reads).
fn open_nonblocking(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
}

/// Writes `text` into the FIFO at `path`, which someone reads.
fn write_to(path: &Path, text: &str) {
    open_nonblocking(path, true)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// Fails unless the FIFO at `path` is empty; `what` it would hold else.
fn assert_empty(path: &Path, what: &str) {
    let mut spare = [0u8; 64];
    let err = open_nonblocking(path, false)
        .unwrap()
        .read(&mut spare)
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{what}");
}

/// What the original Python client does to send a request: a blocking
/// `open()` of `control` for writing, write the line, close.
fn send_as_original(dir: &Path, line: &str) {
    let mut control = OpenOptions::new()
        .write(true)
        .open(dir.join("control"))
        .unwrap();
    control.write_all(line.as_bytes()).unwrap();
}

/// What the original Python client does to read the reply: a blocking
/// `open()` of `response` for reading, read one line.
fn reply_as_original(dir: &Path) -> String {
    let mut reply = String::new();
    BufReader::new(File::open(dir.join("response")).unwrap())
        .read_line(&mut reply)
        .unwrap();
    reply
}

/// The original client, whole: `line`, and its reply within 3 s.
fn original_client(dir: &Path, line: &'static str) -> String {
    let dir = dir.to_owned();
    bounded(3, move || {
        send_as_original(&dir, line);
        reply_as_original(&dir)
    })
}

fn listen_makes_private_pipes_and_a_pid_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pipes");
    let listener = FifoTransport::new(&dir).listen().unwrap();

    assert!(fs::symlink_metadata(&dir).unwrap().is_dir());
    assert_eq!(mode_of(&dir), 0o700);
    for name in ["control", "response"] {
        let meta = fs::symlink_metadata(dir.join(name)).unwrap();
        assert!(meta.file_type().is_fifo(), "{name} is not a FIFO");
        assert_eq!(meta.mode() & 0o7777, 0o600, "{name}");
        assert_eq!(meta.uid(), nix::unistd::Uid::effective().as_raw());
    }
    let pid = fs::read_to_string(dir.join("controller.pid")).unwrap();
    assert_eq!(pid.trim(), std::process::id().to_string());
    assert_eq!(mode_of(&dir.join("controller.pid")) & 0o077, 0);
    drop(listener);
}

fn a_second_listener_is_refused_and_named() {
    let server = Server::start();
    let err = FifoTransport::new(server.dir()).listen().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("PID {}", std::process::id())),
        "{text:?} should name the running controller"
    );
    assert!(text.contains(&server.dir().display().to_string()), "{text}");

    // The refused attempt took nothing away from the running one.
    assert_eq!(
        names_in(server.dir()),
        ["control", "controller.pid", "response"]
    );
    server.still_serves();
}

fn dropping_the_listener_removes_what_it_made() {
    let tmp = tempfile::tempdir().unwrap();

    // listen made the directory: all gone.
    let made = tmp.path().join("made");
    drop(FifoTransport::new(&made).listen().unwrap());
    assert!(!made.exists(), "directory made by listen was left behind");

    // The directory was there before: it stays, empty.
    let kept = private_dir(tmp.path().join("kept"));
    drop(FifoTransport::new(&kept).listen().unwrap());
    assert!(kept.is_dir());
    assert!(names_in(&kept).is_empty(), "{:?}", names_in(&kept));

    // Someone put a file in the directory listen made: the file stays.
    let shared = tmp.path().join("shared");
    let listener = FifoTransport::new(&shared).listen().unwrap();
    fs::write(shared.join("notes"), "mine").unwrap();
    drop(listener);
    assert_eq!(names_in(&shared), ["notes"]);

    // After a served listener stopped, clients find nobody.
    let transport = FifoTransport::new(tmp.path().join("served"));
    let server = Server::on(None, transport.clone(), standard);
    server.shut_down().unwrap();
    assert!(!transport.dir().exists());
    let err = transport.connect(Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");

    // A new controller can take the same directory again.
    let again = FifoTransport::new(transport.dir()).listen().unwrap();
    drop(again);
}

fn leftovers_of_a_dead_controller_are_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = private_dir(tmp.path().join("pipes"));
    // A FIFO holding half a request, a regular file where a FIFO belongs
    // (holding a bogus reply), and a pid file naming a live process
    // that holds no lock: none of it counts.
    mkfifo(&dir.join("control"));
    fs::write(dir.join("response"), "TARGET_PID 1\n").unwrap();
    fs::write(dir.join("controller.pid"), "1\n").unwrap();
    let transport = FifoTransport::new(&dir);

    // Stale pipes: nobody reads them.
    let err = transport.connect(Duration::from_secs(5)).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");

    let server = Server::on(Some(tmp), transport, standard);
    for name in ["control", "response"] {
        let meta = fs::symlink_metadata(dir.join(name)).unwrap();
        assert!(meta.file_type().is_fifo(), "{name}");
        assert_eq!(meta.mode() & 0o7777, 0o600, "{name}");
    }
    assert_eq!(
        fs::read_to_string(dir.join("controller.pid"))
            .unwrap()
            .trim(),
        std::process::id().to_string()
    );
    server.still_serves();
}

fn a_symlinked_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = private_dir(tmp.path().join("real"));
    let link = tmp.path().join("link");
    symlink(&real, &link).unwrap();

    expect_unusable(&FifoTransport::new(&link), "symbolic link");
    assert!(names_in(&real).is_empty(), "followed the link");

    // A dangling link: listen must not create the directory it names.
    let nowhere = tmp.path().join("nowhere");
    let dangling = tmp.path().join("dangling");
    symlink(&nowhere, &dangling).unwrap();
    expect_refused(
        FifoTransport::new(&dangling).listen().unwrap_err(),
        "symbolic link",
    );
    assert!(!nowhere.exists(), "created the directory behind a link");

    // A live controller's directory reached through a link is refused
    // too, and the controller hears nothing.
    let server = Server::start();
    let via = tmp.path().join("via");
    symlink(server.dir(), &via).unwrap();
    let err = Client::new(FifoTransport::new(&via))
        .target_pid()
        .unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert!(server.asked().is_empty());
    server.shut_down().unwrap();
}

fn a_directory_owned_by_someone_else_is_refused() {
    assert!(
        is_root(),
        "chown to another uid needs root: run the tests as root (CI does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = private_dir(tmp.path().join("pipes"));
    chown(&dir, Some(NOBODY), None).unwrap();
    let needle = format!("owned by uid {NOBODY}");
    expect_unusable(&FifoTransport::new(&dir), &needle);
    // The user cannot remove it from a shared /tmp: told the way out.
    expect_unusable(&FifoTransport::new(&dir), "use a directory of your own");
    assert!(names_in(&dir).is_empty());
    assert_eq!(fs::metadata(&dir).unwrap().uid(), NOBODY);

    // Foreign-owned pipes in our own directory: a client refuses them
    // even with a reader on the other end.
    let server = Server::start();
    chown(server.dir().join("control"), Some(NOBODY), None).unwrap();
    expect_refused(
        server
            .transport
            .connect(Duration::from_secs(1))
            .unwrap_err(),
        &needle,
    );
    assert!(server.asked().is_empty());
    server.shut_down().unwrap();
}

fn a_directory_open_to_group_or_others_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for mode in [0o755, 0o770, 0o750, 0o707, 0o701, 0o710, 0o711, 0o1777] {
        let dir = tmp.path().join(format!("mode{mode:o}"));
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        expect_unusable(&FifoTransport::new(&dir), &format!("{mode:04o}"));
        assert_eq!(mode_of(&dir), mode, "the mode was changed behind our back");
        assert!(names_in(&dir).is_empty());
    }

    Server::start().refused_when_opened_up(0o770);
}

fn a_client_refuses_pipes_that_are_regular_files() {
    for name in ["control", "response"] {
        let server = Server::start();
        let path = server.dir().join(name);
        fs::remove_file(&path).unwrap();
        fs::write(&path, "keep me\n").unwrap();
        expect_refused(
            server
                .transport
                .connect(Duration::from_secs(1))
                .unwrap_err(),
            "not a named pipe",
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "keep me\n");
        assert!(server.asked().is_empty());
        server.shut_down().unwrap();
    }
}

fn a_client_never_follows_a_symlinked_pipe() {
    // Links to a live controller's pipes: following them would reach it.
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = private_dir(tmp.path().join("links"));
    for name in ["control", "response"] {
        symlink(server.dir().join(name), dir.join(name)).unwrap();
    }
    let err = FifoTransport::new(&dir)
        .connect(Duration::from_secs(1))
        .unwrap_err();
    expect_refused(err, "symbolic link");

    // Only one of them a link, in the served directory itself.
    let outside = tmp.path().join("outside");
    mkfifo(&outside);
    let _reader = open_nonblocking(&outside, false).unwrap();
    for name in ["control", "response"] {
        let path = server.dir().join(name);
        let saved = server.dir().join(format!("{name}.saved"));
        fs::rename(&path, &saved).unwrap();
        symlink(&outside, &path).unwrap();
        let err = server
            .transport
            .connect(Duration::from_secs(1))
            .unwrap_err();
        expect_refused(err, "symbolic link");
        fs::remove_file(&path).unwrap();
        fs::rename(&saved, &path).unwrap();
    }
    assert!(server.asked().is_empty());
    server.still_serves();
}

fn listen_never_follows_a_symlink_in_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = private_dir(tmp.path().join("pipes"));
    let victim = tmp.path().join("victim");
    fs::write(&victim, "precious\n").unwrap();

    // Links where the pipes go are replaced, their target untouched.
    symlink(&victim, dir.join("control")).unwrap();
    symlink(&victim, dir.join("response")).unwrap();
    let listener = FifoTransport::new(&dir).listen().unwrap();
    for name in ["control", "response"] {
        let meta = fs::symlink_metadata(dir.join(name)).unwrap();
        assert!(meta.file_type().is_fifo(), "{name}");
    }
    drop(listener);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(names_in(&dir).is_empty(), "{:?}", names_in(&dir));

    // A linked pid file is refused: writing our pid would clobber the
    // target.
    symlink(&victim, dir.join("controller.pid")).unwrap();
    expect_refused(
        FifoTransport::new(&dir).listen().unwrap_err(),
        "symbolic link",
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(fs::symlink_metadata(dir.join("controller.pid"))
        .unwrap()
        .file_type()
        .is_symlink());
}

fn connect_without_a_controller_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pipes");
    let transport = FifoTransport::new(&dir);
    let patience = Duration::from_secs(5);

    // No directory.
    let start = Instant::now();
    let err = transport.connect(patience).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(start.elapsed() < Duration::from_secs(1));
    let err = Client::new(transport.clone())
        .timeout(patience)
        .target_pid()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
    assert!(err.to_string().contains("Controller not running"), "{err}");

    // A directory, no pipes.
    private_dir(dir.clone());
    let err = transport.connect(patience).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    assert!(!dir.join("control").exists(), "connect created a pipe");

    // Pipes nobody reads: stale, refused without waiting.
    mkfifo(&dir.join("control"));
    mkfifo(&dir.join("response"));
    let start = Instant::now();
    let err = transport.connect(patience).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let err = Client::new(transport.clone())
        .timeout(patience)
        .target_pid()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
    assert!(start.elapsed() < Duration::from_secs(1));

    // Only the response pipe is missing.
    fs::remove_file(dir.join("response")).unwrap();
    let _reader = open_nonblocking(&dir.join("control"), false).unwrap();
    let err = transport.connect(patience).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
}

fn requests_round_trip_in_both_dialects() {
    let server = Server::start();
    let client = server.client();
    assert_eq!(client.target_pid().unwrap(), TARGET);
    let err = client.grant_access(as_pid(77)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(err.to_string(), "77");
    client.terminate().unwrap();
    client.revoke(as_pid(77)).unwrap();

    for (line, reply) in [
        ("get_target_pid\n", "target_pid 4242\n"),
        ("GET_TARGET_PID\n", "TARGET_PID 4242\n"),
        ("grant_access 9\n", "error : 9\n"),
        ("terminate\n", "ready\n"),
        ("bogus\n", "error : Unknown command: bogus\n"),
        ("GRANT_ACCESS x\n", "ERROR: Invalid PID\n"),
    ] {
        assert_eq!(ask(&mut server.connect(), line.as_bytes()), reply);
    }
    assert_eq!(server.asked().len(), 10);
    server.shut_down().unwrap();
}

fn a_reply_with_descriptors_arrives_without_them() {
    // (The controller sends none here: it refuses AGENT_ATTACH.)
    let (kept_tx, kept) = mpsc::channel();
    let server = Server::answering_with_fds(move |request| {
        let (mine, theirs) = UnixStream::pair().unwrap();
        kept_tx.send(mine).unwrap();
        (standard(request), vec![theirs.into()])
    });
    assert!(!server.transport.passes_fds());
    assert_eq!(server.client().target_pid().unwrap(), TARGET);
    // A pipe cannot pass it: it was closed.
    let mut mine = kept.recv_timeout(Duration::from_secs(3)).unwrap();
    mine.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(mine.read(&mut [0u8; 1]).unwrap(), 0);
    server.shut_down().unwrap();
}

fn no_reply_is_lost_when_the_controller_is_slow() {
    let server = Server::answering(|request| {
        thread::sleep(Duration::from_millis(300));
        standard(request)
    });
    for _ in 0..3 {
        let start = Instant::now();
        assert_eq!(server.client().target_pid().unwrap(), TARGET);
        assert!(start.elapsed() >= Duration::from_millis(300));
    }
    // The original client too: it blocks in open() and read().
    let reply = original_client(&server.dir(), "get_target_pid\n");
    assert_eq!(reply, "target_pid 4242\n");
    server.shut_down().unwrap();
}

fn a_reply_written_before_the_client_reads_is_kept() {
    let server = Server::start();
    let dir = server.dir();

    // The original's lost reply: the request is answered before the
    // client has opened the response pipe.
    send_as_original(&dir, "get_target_pid\n");
    server.wait_asked(1);
    thread::sleep(Duration::from_millis(300));
    let reply = bounded(2, move || reply_as_original(&dir));
    assert_eq!(reply, "target_pid 4242\n");
    server.shut_down().unwrap();
}

fn the_original_blocking_client_works() {
    let server = Server::start();
    for (line, reply) in [
        ("get_target_pid\n", "target_pid 4242\n"),
        ("grant_access 31\n", "error : 31\n"),
        ("GET_TARGET_PID\n", "TARGET_PID 4242\n"),
        ("terminate\n", "ready\n"),
    ] {
        assert_eq!(original_client(&server.dir(), line), reply);
    }
    server.shut_down().unwrap();
}

fn a_client_that_gave_up_does_not_steal_the_next_reply() {
    // GRANT_ACCESS for pids from 1000 is answered long after its client
    // (waiting 300 ms) gave up.
    let server = Server::answering(|request| {
        if matches!(request, Ok(Request::GrantAccess(pid)) if pid.client.get() >= 1000) {
            thread::sleep(Duration::from_millis(600));
        }
        standard(request)
    });

    // Who reads the late reply first, the next client or the
    // controller's drain, is a race: try a few times.
    for round in 1..=4 {
        let start = Instant::now();
        let err = server
            .client()
            .timeout(Duration::from_millis(300))
            .grant_timeout(Duration::from_millis(300))
            .grant_access(as_pid(1000 + round))
            .unwrap_err();
        let waited = start.elapsed();
        assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
        assert!(err.to_string().contains("Timeout"), "{err}");
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(900),
            "gave up after {waited:?}"
        );

        // The next client, at once: it gets its own reply, not the
        // late one.
        server.each_gets_its_own_reply([round]);
    }
    // And the late replies left nothing behind.
    server.still_serves();
}

fn a_controller_that_never_answers_times_clients_out() {
    let (release, released) = mpsc::channel::<()>();
    let server = Server::answering(move |request| {
        if request == Ok(Request::Terminate) {
            // Hung until the test lets go.
            let _ = released.recv();
        }
        standard(request)
    });
    let client = server.client().timeout(Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(client.terminate().unwrap_err().kind(), ErrorKind::Timeout);
    // The controller is still stuck: the next client times out too,
    // in time, rather than hanging.
    let start2 = Instant::now();
    assert_eq!(client.target_pid().unwrap_err().kind(), ErrorKind::Timeout);
    assert!(start2.elapsed() < Duration::from_secs(1));
    assert!(start.elapsed() < Duration::from_secs(2));

    // Unstuck: the late READY goes to nobody, every client its own reply.
    release.send(()).unwrap();
    server.each_gets_its_own_reply([11, 12, 13]);
    server.shut_down().unwrap();
}

fn a_stale_reply_in_the_response_pipe_is_drained() {
    let server = Server::start();
    let dir = server.dir();
    let response = dir.join("response");
    write_to(&response, "TARGET_PID 1\n");
    assert_eq!(server.client().target_pid().unwrap(), TARGET);

    // The original client does not drain: the controller does, before
    // it answers. (Reading the response pipe before the answer is
    // written would race with that drain: the client reads it later.)
    write_to(&response, "ready\nready\n");
    send_as_original(&dir, "get_target_pid\n");
    server.wait_asked(2);
    thread::sleep(Duration::from_millis(200));
    let reply = bounded(2, move || reply_as_original(&dir));
    assert_eq!(reply, "target_pid 4242\n");
    assert_empty(&response, "stale bytes left");
    server.shut_down().unwrap();
}

fn an_over_long_line_gets_one_error_reply() {
    let server = Server::start();
    let too_long = "ERROR: Request longer than 4096 bytes\n";
    assert_eq!(ask(&mut server.connect(), &line_of(b'A', 5000)), too_long);
    // Exactly one reply: nothing else shows up.
    thread::sleep(Duration::from_millis(300));
    assert_empty(&server.dir().join("response"), "a second reply");
    assert!(server.asked().is_empty(), "{:?}", server.asked());
    assert_eq!(server.client().target_pid().unwrap(), TARGET);

    // The limit is 4096 bytes with the newline.
    let reply = ask(&mut server.connect(), &line_of(b'A', 4095));
    assert!(reply.starts_with("ERROR: Unknown command: AAAA"), "{reply}");
    assert_eq!(ask(&mut server.connect(), &line_of(b'A', 4096)), too_long);
    assert_eq!(server.asked().len(), 2, "{:?}", server.asked());
    server.still_serves();
}

fn half_a_line_is_dropped_after_silence() {
    let server = Server::start();
    let control = server.dir().join("control");
    let write = |text: &str| write_to(&control, text);

    // The rest of a line arriving soon from a writer that kept the pipe
    // open is joined to it.
    let mut writer = open_nonblocking(&control, true).unwrap();
    writer.write_all(b"GET_TARG").unwrap();
    thread::sleep(Duration::from_millis(300));
    writer.write_all(b"ET_PID\n").unwrap();
    drop(writer);
    server.wait_asked(1);
    assert_eq!(server.asked(), [Ok(Request::GetTargetPid)]);

    // A writer that closed mid-line: its fragment is dropped (at once; a
    // silent writer that keeps its end open, after 2 s) and the next
    // client's line parses cleanly.
    write("GRANT_ACC");
    thread::sleep(Duration::from_millis(300));
    let err = server.client().grant_access(as_pid(5)).unwrap_err();
    assert_eq!(err.to_string(), "5");
    assert_eq!(
        server.asked(),
        [
            Ok(Request::GetTargetPid),
            Ok(Request::GrantAccess(
                heli_core::protocol::GrantRequest::new(as_pid(5))
            ))
        ]
    );
    server.shut_down().unwrap();
}

fn the_stop_handle_ends_serve_promptly() {
    // An idle listener.
    let server = Server::start();
    let dir = server.dir().to_owned();
    thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    server.shut_down().unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(!dir.exists());

    // Asked before serve runs, and more than once, from a clone.
    let tmp = tempfile::tempdir().unwrap();
    let mut listener = FifoTransport::new(tmp.path().join("p")).listen().unwrap();
    let stop = listener.stopper();
    stop.clone().stop();
    stop.stop();
    let (events_tx, _events) = crossbeam_channel::bounded(0);
    let serve = thread::spawn(move || listener.serve(&events_tx));
    join_within(serve, Duration::from_secs(1)).unwrap();

    // With half a line pending (serve is waiting on a deadline then).
    let server = Server::start();
    write_to(&server.dir().join("control"), "GET_");
    thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    server.shut_down().unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
}

fn serve_returns_when_the_controller_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let transport = FifoTransport::new(tmp.path().join("p"));
    let mut listener = transport.listen().unwrap();
    let (events_tx, events) = crossbeam_channel::bounded(0);
    drop(events);
    let serve = thread::spawn(move || listener.serve(&events_tx));
    let err = Client::new(transport.clone())
        .timeout(Duration::from_millis(500))
        .target_pid()
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout | ErrorKind::Io),
        "{err}"
    );
    join_within(serve, Duration::from_secs(2)).unwrap();
    assert!(!transport.dir().exists());
}

fn many_clients_in_a_row_each_get_their_reply() {
    let server = Server::answering(counting());
    for n in 1..=200 {
        assert_eq!(server.client().target_pid().unwrap(), as_pid(n));
    }
    assert_eq!(server.asked().len(), 200);
    server.shut_down().unwrap();
}

fn concurrent_clients_never_get_each_others_reply() {
    let server = Server::start();
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let client = server.client().timeout(Duration::from_secs(20));
            thread::spawn(move || {
                for i in 0..20u32 {
                    let pid = 1000 * (t + 1) + i;
                    let err = client.grant_access(as_pid(pid)).unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
                    assert_eq!(err.to_string(), pid.to_string(), "a mixed-up reply");
                }
            })
        })
        .collect();
    for thread in threads {
        join_within(thread, Duration::from_secs(50));
    }
    let mut seen: Vec<_> = server.asked().into_iter().map(Result::unwrap).collect();
    seen.sort_by_key(|r| match r {
        Request::GrantAccess(pid) => pid.client.get(),
        _ => 0,
    });
    seen.dedup();
    assert_eq!(seen.len(), 160);
    server.shut_down().unwrap();
}

fn impatient_clients_under_a_slow_controller_never_mix_replies() {
    // Some requests take longer than their client waits.
    let server = Server::answering(|request| {
        if let Ok(Request::GrantAccess(pid)) = request {
            thread::sleep(Duration::from_millis(u64::from(pid.client.get() % 5) * 40));
        }
        standard(request)
    });
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let client = server.client().timeout(Duration::from_millis(150));
            thread::spawn(move || {
                let (mut answered, mut timed_out) = (0, 0);
                for i in 0..15u32 {
                    let pid = 100 * (t + 1) + i;
                    let err = client.grant_access(as_pid(pid)).unwrap_err();
                    match err.kind() {
                        ErrorKind::Refused => {
                            assert_eq!(err.to_string(), pid.to_string(), "a mixed-up reply");
                            answered += 1;
                        }
                        ErrorKind::Timeout => timed_out += 1,
                        _ => panic!("{err}"),
                    }
                }
                (answered, timed_out)
            })
        })
        .collect();
    let mut answered = 0;
    for thread in threads {
        answered += join_within(thread, Duration::from_secs(50)).0;
    }
    assert!(answered > 0, "no client was ever answered");
    // Calm again: prompt answers for everyone.
    server.each_gets_its_own_reply([7001, 7002, 7003]);
    server.shut_down().unwrap();
}

fn a_connection_kept_open_does_not_hold_other_clients_up() {
    let server = Server::start();
    let client = server.client();
    // A client keeps its connection while its debugger runs ...
    let mut session = client.session().unwrap();
    assert_eq!(session.target_pid().unwrap(), TARGET);
    // ... and other clients are still served, promptly.
    for _ in 0..5 {
        assert_eq!(server.client().target_pid().unwrap(), TARGET);
    }
    // The kept connection still works afterwards.
    assert_eq!(session.target_pid().unwrap(), TARGET);
}
