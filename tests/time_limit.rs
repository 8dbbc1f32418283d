//! Time-limited grants with the real programs and real pdb: `attach --for`
//! detaches pdb on time and the target runs on; the controller's
//! `--max-grant` bounds every grant, is refused past, and ends the
//! debugger of a client that does not end it itself.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rexpect::session::{spawn_with_options, Options, PtySession};

use crate::util::{
    alive, children_of, expect_all, python314, serial, wait_for, Controller, Kind, SOON,
};

crate::per_transport!(
    attach_for_detaches_pdb_on_time_and_the_target_runs_on,
    a_grant_longer_than_the_controllers_limit_is_refused,
);

/// Whether the demo target, which logs an iteration a second, is stopped.
fn stopped(controller: &Controller) -> bool {
    let before = controller.iterations();
    std::thread::sleep(Duration::from_millis(1500));
    controller.iterations() == before
}

fn in_terminal(command: Command) -> PtySession {
    let options = Options::new()
        .timeout_ms(Some(30_000))
        .strip_ansi_escape_codes(true);
    spawn_with_options(command, options).unwrap()
}

/// `status --json` of `controller`.
fn status(controller: &Controller) -> serde_json::Value {
    let (status, out, err) = controller.run_client(&["status", "--json"]);
    assert!(status.success(), "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

fn attach_for_detaches_pdb_on_time_and_the_target_runs_on(kind: Kind) {
    let _serial = serial();
    let controller = Controller::demo(kind);
    let target = controller.target_pid();
    controller.wait_for_work_loop();
    let mut client = controller.client();
    client.args(["attach", "--for", "4s"]);
    let started = Instant::now();
    let mut session = in_terminal(client);
    expect_all(&mut session, &["Permission granted for 4 s", "(Pdb) "]);
    // The grant, and its time left, as STATUS says.
    let json = status(&controller);
    let grant = &json["grants"][0];
    assert_eq!(grant["process"], target, "{json}");
    let left = grant["time_left_secs"].as_u64().expect("no time left");
    assert!((1..=4).contains(&left), "{json}");
    // pdb holds the target stopped at its prompt.
    session.send_line("p ('counter', counter)").unwrap();
    session.exp_regex(r"\('counter', \d+\)").unwrap();
    expect_all(
        &mut session,
        &[
            "The grant ends in ",
            " s: pdb will then be detached (the target runs on)",
            "Time is up (4 s): detaching pdb; the target runs on",
            "pdb was detached: the grant's time is up",
            "Debugger detached",
        ],
    );
    session.exp_eof().unwrap();
    let status_code = session.process().wait().unwrap();
    assert!(
        matches!(status_code, rexpect::process::WaitStatus::Exited(_, 0)),
        "{status_code:?}"
    );
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(4), "{took:?}");
    // The target runs on, and no grant is left.
    assert!(alive(target));
    let before = controller.iterations();
    wait_for("the target running again", SOON, || {
        controller.iterations() > before
    });
    wait_for("no grant left", SOON, || {
        status(&controller)["grants"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    let log = controller.log_text();
    assert!(log.contains("lasts 4 s"), "{log}");
}

fn a_grant_longer_than_the_controllers_limit_is_refused(kind: Kind) {
    let _serial = serial();
    let controller = Controller::start_on(kind, &["--max-grant", "1m", "examples/target.py"]);
    let (status, out, err) = controller.run_client(&["attach", "--for", "2m"]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("asked for 120 s; this controller grants 60 s at most (--max-grant)"),
        "{out}{err}"
    );
    let json = self::status(&controller);
    assert_eq!(json["max_grant"], 60, "{json}");
    // Bad durations never reach the controller.
    for bad in ["0", "0s", "-5m", "500ms", "2w", "169h"] {
        let (status, out, err) = controller.run_client(&["attach", &format!("--for={bad}")]);
        assert_eq!(status.code(), Some(2), "{bad}: {out}{err}");
        assert!(err.contains("--for"), "{bad}: {err}");
    }
    assert!(!controller.log_text().contains("granted PID"));
}

#[test]
fn the_controller_ends_the_debugger_of_a_client_that_outlives_its_time() {
    let _serial = serial();
    let controller =
        Controller::start_on(Kind::Socket, &["--max-grant", "4s", "examples/target.py"]);
    let target = controller.target_pid();
    controller.wait_for_work_loop();
    // A client that takes a grant, runs real pdb on the target, and then
    // neither ends it nor lets go of its connection.
    let code = r#"
import socket, subprocess, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.sendall(f"GRANT_ACCESS {__import__('os').getpid()}\n".encode())
lines = sock.makefile()
print(lines.readline().strip(), flush=True)
pdb = subprocess.Popen([sys.executable, "-m", "pdb", "-p", sys.argv[2]],
                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
print(pdb.pid, flush=True)
print("told:", lines.readline().strip(), flush=True)
print("pdb ended:", pdb.wait(), flush=True)
print("closed:", repr(lines.readline()), flush=True)
"#;
    let socket = controller.fifo_dir.join("test.sock");
    let mut client = Command::new(python314())
        .arg("-c")
        .arg(code)
        .arg(&socket)
        .arg(target.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("the client said nothing").unwrap();
    assert_eq!(next(), "READY");
    let pdb: u32 = next().parse().unwrap();
    assert_eq!(children_of(client.id()), [pdb]);
    // pdb attaches and stops the target at its prompt.
    wait_for("the target stopped by pdb", SOON, || stopped(&controller));
    // The grant is withdrawn on time; the client's debugger ended 5 s
    // later, its connection closed; the client itself left alone.
    wait_for("the grant withdrawn", SOON, || {
        status(&controller)["grants"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
    let told = next();
    assert!(
        told.starts_with("told: ERROR: The time limit of your grant was up 5 s ago"),
        "{told}"
    );
    assert_eq!(next(), "pdb ended: -15");
    assert_eq!(next(), "closed: ''");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(9), "{took:?}");
    assert!(!alive(pdb));
    // The client itself was left alone: it ends as it likes.
    assert!(client.wait().unwrap().success());
    // The target runs on once pdb's session is gone.
    let before = controller.iterations();
    wait_for("the target running again", SOON, || {
        controller.iterations() > before
    });
    let log = controller.log_text();
    assert!(log.contains("still debugs"), "{log}");
}

#[test]
fn a_client_that_started_the_controller_never_has_the_controller_ended() {
    let _serial = serial();
    // The client started the controller itself (a script, a process
    // manager, a shell function that also talks to it): the controller and
    // its target descend from the client, yet they are not its debuggers.
    // Its real debugger (here a `sleep`) is ended once its time is up.
    let code = r#"
import os, signal, socket, subprocess, sys, time
runtime = sys.argv[2]
controller = subprocess.Popen(
    [sys.argv[1], "--transport", "socket", "--name", "test", "--", "sleep", "300"],
    env=dict(os.environ, XDG_RUNTIME_DIR=runtime), stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL, stderr=open(sys.argv[3], "w"))
print(controller.pid, flush=True)
path = os.path.join(runtime, "heli", "test.sock")
while not os.path.exists(path):
    time.sleep(0.01)
debugger = subprocess.Popen(["sleep", "300"])
sock = socket.socket(socket.AF_UNIX)
sock.connect(path)
sock.sendall(f"GRANT_ACCESS {os.getpid()} FOR 1\n".encode())
lines = sock.makefile()
print(lines.readline().strip(), flush=True)
print("told:", lines.readline().strip(), flush=True)
print("debugger ended:", debugger.wait(), flush=True)
time.sleep(1)
print("controller:", controller.poll(), flush=True)
controller.send_signal(signal.SIGTERM)
controller.wait()
"#;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("controller.log");
    let mut client = Command::new(python314())
        .arg("-c")
        .arg(code)
        .arg(crate::util::example("controller"))
        .arg(dir.path())
        .arg(&log)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("the client said nothing").unwrap();
    let controller: u32 = next().parse().unwrap();
    let _cleanup = KillOnDrop(controller);
    assert_eq!(next(), "READY");
    let told = next();
    assert!(
        told.starts_with("told: ERROR: The time limit of your grant was up"),
        "{told}"
    );
    assert_eq!(next(), "debugger ended: -15");
    let after = next();
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        after, "controller: None",
        "the controller was ended:\n{log}"
    );
    assert!(client.wait().unwrap().success());
}

/// Kills process `.0` (a controller a test's client started) if the test
/// failed before it ended.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let pid = nix::unistd::Pid::from_raw(self.0 as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}
