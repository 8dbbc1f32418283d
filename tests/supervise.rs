//! The controller as a supervisor: exit status, signals, escalation, no
//! orphans, stale pipes.

use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::util::{alive, script, serial, temp_script, wait_for, Controller, Kind, SOON};

crate::per_transport!(
    exit_code_of_the_target_is_the_controllers,
    death_by_signal_becomes_128_plus_signal,
    script_mode_runs_python_with_arguments,
    signals_are_forwarded_to_the_target,
    a_target_that_ignores_sigterm_is_killed_after_the_grace_period,
    terminate_request_stops_target_and_controller,
    a_second_controller_for_the_same_session_refuses_and_names_the_first,
    client_without_controller_fails_fast_with_advice,
);

fn exit_code_of_the_target_is_the_controllers(kind: Kind) {
    let _serial = serial();
    let mut controller = Controller::start_on(kind, &["--", "sh", "-c", "sleep 0.5; exit 7"]);
    assert_eq!(
        controller.wait().code(),
        Some(7),
        "{}",
        controller.log_text()
    );
    assert!(controller.log_text().contains("ended on its own"));
    assert_eq!(controller.fifo_dir_entries(), Vec::<String>::new());
}

fn death_by_signal_becomes_128_plus_signal(kind: Kind) {
    let _serial = serial();
    let mut controller = Controller::start_on(
        kind,
        &["--", "sh", "-c", "sleep 0.5; kill -USR2 $$; sleep 5"],
    );
    assert_eq!(
        controller.wait().code(),
        Some(128 + 12),
        "{}",
        controller.log_text()
    );
}

fn script_mode_runs_python_with_arguments(kind: Kind) {
    let _serial = serial();
    let (_dir, path) = temp_script(
        "args.py",
        "import sys, time\ntime.sleep(0.5)\nsys.exit(int(sys.argv[1]) + len(sys.argv))\n",
    );
    let mut controller = Controller::start_on(kind, &[path.to_str().unwrap(), "40", "x"]);
    assert_eq!(
        controller.wait().code(),
        Some(43),
        "{}",
        controller.log_text()
    );
}

/// A target that records the signals it gets in `out` and exits on SIGTERM.
pub fn recorder(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = dir.join("signals.txt");
    let path = script(
        dir,
        "recorder.py",
        &format!(
            r#"
import os, signal, sys, time
out = open({out:?}, "a", buffering=1)
def record(signum, frame):
    out.write(f"{{signal.Signals(signum).name}}\n")
    if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        sys.exit(0)
for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH, signal.SIGHUP, signal.SIGTERM,
          signal.SIGINT, signal.SIGQUIT):
    signal.signal(s, record)
out.write("ready\n")
while True:
    time.sleep(0.05)
"#,
            out = out.to_str().unwrap()
        ),
    );
    (path, out)
}

fn signals_are_forwarded_to_the_target(kind: Kind) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (path, out) = recorder(dir.path());
    let mut controller = Controller::start_on(kind, &[path.to_str().unwrap()]);
    let read = || fs::read_to_string(&out).unwrap_or_default();
    wait_for("target ready", SOON, || read().contains("ready"));
    controller.signal(Signal::SIGUSR1 as i32);
    wait_for("SIGUSR1 forwarded", SOON, || read().contains("SIGUSR1"));
    controller.signal(Signal::SIGUSR2 as i32);
    wait_for("SIGUSR2 forwarded", SOON, || read().contains("SIGUSR2"));
    controller.signal(Signal::SIGWINCH as i32);
    wait_for("SIGWINCH forwarded", SOON, || read().contains("SIGWINCH"));
    controller.signal(Signal::SIGTERM as i32);
    let status = controller.wait();
    assert_eq!(status.code(), Some(0), "{}", controller.log_text());
    assert_eq!(read(), "ready\nSIGUSR1\nSIGUSR2\nSIGWINCH\nSIGTERM\n");
    assert_eq!(controller.fifo_dir_entries(), Vec::<String>::new());
}

fn a_target_that_ignores_sigterm_is_killed_after_the_grace_period(kind: Kind) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let path = script(
        dir.path(),
        "stubborn.py",
        &format!(
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nopen({:?}, 'w').close()\ntime.sleep(600)\n",
            ready.to_str().unwrap()
        ),
    );
    let mut controller = Controller::start_on(kind, &["--grace", "0.5", path.to_str().unwrap()]);
    let target = controller.target_pid();
    wait_for("target ready", SOON, || ready.exists());
    let asked = Instant::now();
    controller.signal(Signal::SIGTERM as i32);
    let status = controller.wait();
    assert!(
        asked.elapsed() >= Duration::from_millis(500),
        "killed before the grace period ended"
    );
    assert_eq!(status.code(), Some(128 + 9), "{}", controller.log_text());
    assert!(!alive(target));
    assert!(controller.log_text().contains("killing it"));
}

fn terminate_request_stops_target_and_controller(kind: Kind) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let (path, out) = recorder(dir.path());
    let mut controller = Controller::start_on(kind, &[path.to_str().unwrap()]);
    wait_for("target ready", SOON, || {
        fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("ready")
    });
    let (status, stdout, _) = controller.run_client(&["terminate"]);
    assert!(status.success(), "{stdout}");
    assert_eq!(
        controller.wait().code(),
        Some(0),
        "{}",
        controller.log_text()
    );
    assert!(fs::read_to_string(&out).unwrap().contains("SIGTERM"));
}

#[test]
fn no_orphan_when_the_controller_is_killed_and_the_next_one_replaces_stale_pipes() {
    let _serial = serial();
    let mut controller = Controller::start(&["examples/target.py"]);
    let target = controller.target_pid();
    controller.signal(Signal::SIGKILL as i32);
    controller.wait();
    wait_for("target killed with its controller", SOON, || !alive(target));
    // The pipes and pid file of the dead controller are still there ...
    let mut left = controller.fifo_dir_entries();
    left.sort();
    assert_eq!(left, ["control", "controller.pid", "response"]);
    // ... a client says nobody serves them, without hanging ...
    let (status, _, stderr) = controller.run_client(&["pid"]);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("Controller not running"), "{stderr}");
    // ... and the next controller on the same directory replaces them.
    let next = Controller::start_at(&controller.fifo_dir, &["examples/target.py"]);
    let new_target = next.target_pid();
    assert_ne!(new_target, target);
}

fn a_second_controller_for_the_same_session_refuses_and_names_the_first(kind: Kind) {
    let _serial = serial();
    let first = Controller::demo(kind);
    let mut command = std::process::Command::new(crate::util::example("controller"));
    match kind {
        Kind::Fifo => command
            .args(["--transport", "fifo", "--fifo-dir"])
            .arg(&first.fifo_dir),
        Kind::Socket => command
            .args(["--transport", "socket", "--name", "test"])
            .env("XDG_RUNTIME_DIR", first.dir.path()),
    };
    let mut second = command
        .args(["--", "sleep", "100"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = crate::util::wait_exit(&mut second, SOON);
    assert_eq!(status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&second.wait_with_output().unwrap().stderr).into_owned();
    assert!(
        stderr.contains(&format!("PID {}", first.child.id())),
        "{stderr}"
    );
    // The first one still serves.
    assert!(first.target_pid() > 0);
}

fn client_without_controller_fails_fast_with_advice(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut command = std::process::Command::new(crate::util::example("client"));
    match kind {
        Kind::Fifo => command
            .args(["--transport", "fifo", "--fifo-dir"])
            .arg(dir.path().join("nothing-here")),
        // An empty runtime directory: no session at all.
        Kind::Socket => command.env("XDG_RUNTIME_DIR", dir.path()),
    };
    let output = command.arg("attach").output().unwrap();
    assert!(started.elapsed() < SOON);
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Controller not running"), "{stderr}");
    assert!(
        stderr.contains("cargo run --example controller"),
        "{stderr}"
    );
}
