//! Job control: the terminal's foreground process group for a PID 1's
//! target, and SIGTSTP suspending the controller with its target as under
//! dumb-init.

use std::fs;
use std::process::Command;

use heli::core::ProcessState::{Sleeping, Stopped};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rexpect::session::{spawn_with_options, Options, PtySession};

use crate::util::{
    children_of, example, proc, python314, script, serial, state, wait_for, Controller, Kind, SOON,
};

/// The only child of `pid`, once it has one.
fn only_child(pid: u32) -> u32 {
    let mut child = 0;
    wait_for("a child process", SOON, || match children_of(pid)[..] {
        [only] => {
            child = only;
            true
        }
        _ => false,
    });
    child
}

fn terminal(command: Command) -> PtySession {
    spawn_with_options(
        command,
        Options::new()
            .timeout_ms(Some(SOON.as_millis() as u64))
            .strip_ansi_escape_codes(true),
    )
    .unwrap()
}

/// `controller --transport socket --name tty ARGS` as PID 1 of a new pid
/// namespace, killed with `unshare` should the test fail. With `session`, it
/// leads a session of its own with the terminal, as a container's PID 1
/// does (`setsid --ctty`).
fn pid_1_controller(runtime_dir: &std::path::Path, session: bool, args: &[&str]) -> Command {
    let mut unshare = Command::new("unshare");
    unshare.args(["--pid", "--fork", "--mount-proc", "--kill-child"]);
    if session {
        unshare.args(["setsid", "--ctty"]);
    }
    unshare
        .arg(example("controller"))
        .args(["--transport", "socket", "--name", "tty"])
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime_dir);
    unshare
}

/// A target that says whether it has the terminal; on its first run it
/// reads a line, counts Ctrl-C, reads another line and exits 7; on its
/// second run it exits 0. With `run_before`, its first run is behind it.
/// Returns the command that runs it: Python 3.14 and the script, in `dir`.
fn terminal_target(dir: &std::path::Path, run_before: bool) -> [String; 2] {
    let marker = dir.join("first-run-done");
    if run_before {
        fs::write(&marker, "").unwrap();
    }
    let script = script(
        dir,
        "tty_target.py",
        &format!(
            r#"
import os, signal, sys
first = not os.path.exists({marker:?})
open({marker:?}, "a").close()
print(f"target fg={{os.tcgetpgrp(0) == os.getpgrp()}} own-group={{os.getpgrp() == os.getpid()}}", flush=True)
if not first:
    sys.exit(0)
hits = []
def on_int(signum, frame):
    hits.append(signum)
    print("target got SIGINT", flush=True)
signal.signal(signal.SIGINT, on_int)
print("target reading", flush=True)
print("target read", sys.stdin.readline().strip(), flush=True)
print("target read", sys.stdin.readline().strip(), f"sigints={{len(hits)}}", flush=True)
sys.exit(7)
"#,
            marker = marker.to_str().unwrap()
        ),
    );
    let python = python314();
    [python, script].map(|path| path.to_str().unwrap().to_owned())
}

#[test]
fn as_pid_1_with_a_terminal_the_target_gets_the_foreground_group() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let [python, target] = terminal_target(dir.path(), false);
    let restart_once = ["--restart", "on-failure", "--max-restarts", "1"];
    let args = [&restart_once[..], &["--", &python, &target]].concat();
    let mut session = terminal(pid_1_controller(dir.path(), true, &args));
    let mut seen = String::new();
    let mut expect = |session: &mut PtySession, text: &str| {
        let before = session.exp_string(text).unwrap_or_else(|err| {
            panic!("waiting for {text:?}: {err}\nafter:\n{seen}");
        });
        seen.push_str(&before);
        seen.push_str(text);
    };
    expect(&mut session, "reaping every child");
    expect(&mut session, "the target gets the terminal");
    expect(&mut session, "target fg=True own-group=True");
    expect(&mut session, "target reading");

    // SIGTSTP from outside the namespace stops the target; PID 1 itself
    // cannot be stopped from inside its namespace and goes on; SIGCONT
    // continues the target.
    let unshare = children_of(std::process::id())
        .into_iter()
        .find(|&pid| {
            proc(pid).and_then(|proc| proc.thread_name(pid.into())) == Some("unshare".into())
        })
        .expect("the unshare process");
    let controller = only_child(unshare);
    let target_pid = only_child(controller);
    kill(Pid::from_raw(controller as i32), Signal::SIGTSTP).unwrap();
    wait_for("the target to stop", SOON, || {
        state(target_pid) == Some(Stopped)
    });
    assert_ne!(state(controller), Some(Stopped));
    kill(Pid::from_raw(controller as i32), Signal::SIGCONT).unwrap();
    wait_for("the target to continue", SOON, || {
        state(target_pid).is_some_and(|s| s != Stopped)
    });

    // It reads the terminal (a background group would be stopped by
    // SIGTTIN), and Ctrl-C reaches the target once, the controller not.
    session.send_line("hello").unwrap();
    expect(&mut session, "target read hello");
    session.send_control('c').unwrap();
    expect(&mut session, "target got SIGINT");
    session.send_line("again").unwrap();
    expect(&mut session, "target read again sigints=1");

    // It exits 7; the controller takes the terminal back and restarts it:
    // the new target has the terminal again.
    expect(&mut session, "restarting the target");
    expect(&mut session, "target fg=True own-group=True");
    let rest = session.exp_eof().unwrap();
    seen.push_str(&rest);
    assert!(rest.contains("exiting with status 0"), "{seen}");
    assert!(
        !seen.contains("got signal 2;"),
        "the controller got SIGINT:\n{seen}"
    );
    let status = session.process().wait().unwrap();
    assert!(
        matches!(status, rexpect::process::WaitStatus::Exited(_, 0)),
        "{status:?}\n{seen}"
    );
}

/// Between a target's end and its restart the controller has the terminal
/// back: Ctrl-C during the back-off ends it, with the last exit status.
#[test]
fn as_pid_1_the_terminal_comes_back_while_waiting_to_restart() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut session = terminal(pid_1_controller(
        dir.path(),
        true,
        &["--restart", "always", "--", "sh", "-c", "exit 7"],
    ));
    session.exp_string("the target gets the terminal").unwrap();
    // The sixth restart waits 3.2 s: time enough to press Ctrl-C.
    session.exp_string("(restart 6)").unwrap();
    ctrl_c_ends_the_controller_with(&mut session, 7);
}

/// Ctrl-C on the terminal while no target runs reaches the controller, which
/// ends with `status`, the last exit status of its target.
fn ctrl_c_ends_the_controller_with(session: &mut PtySession, status: i32) {
    session.send_control('c').unwrap();
    session
        .exp_string("got signal 2; stopping the target")
        .unwrap();
    let rest = session.exp_eof().unwrap();
    assert!(
        rest.contains(&format!("exiting with status {status}")),
        "{rest}"
    );
    let ended = session.process().wait().unwrap();
    assert!(
        matches!(ended, rexpect::process::WaitStatus::Exited(_, code) if code == status),
        "{ended:?}\n{rest}"
    );
}

/// A restart whose exec fails (the program was removed) has given the
/// terminal to a child that is gone: the controller takes it back, and
/// Ctrl-C during the next back-off still ends it.
#[test]
fn as_pid_1_a_failed_restart_gives_the_terminal_back() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("vanishing");
    fs::copy("/bin/sh", &program).unwrap();
    let program = program.to_str().unwrap();
    let script = format!("rm -f {program}; exit 3");
    let mut session = terminal(pid_1_controller(
        dir.path(),
        true,
        &["--restart", "always", "--", program, "-c", &script],
    ));
    session.exp_string("the target gets the terminal").unwrap();
    session.exp_string("cannot restart the target").unwrap();
    ctrl_c_ends_the_controller_with(&mut session, 3);
}

/// A PID 1 whose process group lies outside its namespace (`unshare --pid
/// --fork` alone) cannot tell whether it has the terminal: it might be a
/// background job, and taking the terminal would take it from the shell.
/// It says so and keeps the target in its own group.
#[test]
fn as_pid_1_that_cannot_tell_it_has_the_terminal_it_gives_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let [python, target] = terminal_target(dir.path(), true);
    let mut session = terminal(pid_1_controller(
        dir.path(),
        false,
        &["--", &python, &target],
    ));
    session
        .exp_string("cannot tell whether it has the terminal")
        .unwrap();
    session
        .exp_string("target fg=True own-group=False")
        .unwrap();
    session.exp_eof().unwrap();
}

#[test]
fn not_as_pid_1_the_target_shares_the_controllers_group() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let target = terminal_target(dir.path(), true);
    let mut command = Command::new(example("controller"));
    command
        .args(["--transport", "socket", "--name", "tty", "--"])
        .args(target)
        .env("XDG_RUNTIME_DIR", dir.path());
    let mut session = terminal(command);
    session
        .exp_string("target fg=True own-group=False")
        .unwrap();
    let rest = session.exp_eof().unwrap();
    assert!(!rest.contains("gets the terminal"), "{rest}");
}

/// SIGTSTP sent to the controller stops its target and then the controller
/// itself, as dumb-init does (so a shell sees its job stopped); SIGCONT
/// continues both. With `--kill-group` the target's whole group stops.
#[test]
fn sigtstp_suspends_the_target_and_the_controller_until_sigcont() {
    let _serial = serial();
    for extra in [&[][..], &["--kill-group"][..]] {
        let mut args = extra.to_vec();
        args.extend(["--", "sh", "-c", "sleep 1000 & wait"]);
        let mut controller = Controller::start_job(Kind::Socket, &args);
        let target = controller.target_pid();
        let grandchild = only_child(target);
        let pid = controller.child.id();
        let all = [pid, target, grandchild];
        controller.signal(Signal::SIGTSTP as i32);
        wait_for("the controller and its target to stop", SOON, || {
            state(pid) == Some(Stopped) && state(target) == Some(Stopped)
        });
        // Alone in the controller's group, the target's child stays; in a
        // group of its own, the whole group stops.
        let grandchild_state = if extra.is_empty() { Sleeping } else { Stopped };
        wait_for("the target's child state", SOON, || {
            state(grandchild) == Some(grandchild_state)
        });
        controller.signal(Signal::SIGCONT as i32);
        // Should one stay stopped, the controller's log says what it did.
        let continued = || {
            all.iter()
                .all(|&pid| state(pid).is_some_and(|s| s != Stopped))
        };
        let deadline = std::time::Instant::now() + SOON;
        while !continued() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            continued(),
            "not all continued: {:?} of {all:?}\n{}",
            all.map(state),
            controller.log_text()
        );
        let (status, out, err) = controller.run_client(&["status"]);
        assert!(status.success(), "{out}{err}\n{}", controller.log_text());
        controller.signal(Signal::SIGTERM as i32);
        let status = controller.wait();
        assert_eq!(status.code(), Some(143), "{}", controller.log_text());
        assert!(
            controller.log_text().contains("suspending"),
            "{}",
            controller.log_text()
        );
        let _ = kill(Pid::from_raw(grandchild as i32), Signal::SIGKILL);
    }
}
