//! Grants to processes that can never be a client's debugger are refused by
//! the real controller, on either transport: over named pipes, which cannot
//! tell who asks, and over the socket for the asking process's own
//! descendants when they run as another user or as a setuid program would.
//!
//! Both tests need root (to make processes of another user): they fail,
//! not pass, without it.

use std::time::{Duration, Instant};

use heli::core::{Connection, Transport};
use heli::transport::FifoTransport;

use crate::util::{end, python_saying, serial, Controller, Kind};

const SOON: Duration = Duration::from_secs(10);

fn need_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test makes processes of another user: run it as root"
    );
}

/// A Python child of this test that ran `code` (e.g. changed its user),
/// ready when returned.
fn python_child(code: &str) -> std::process::Child {
    let (child, line) = python_saying(&format!(
        "import os, time\n{code}\nprint('ready', flush=True)\ntime.sleep(60)"
    ));
    assert_eq!(line, "ready");
    child
}

#[test]
fn named_pipes_refuse_what_is_never_a_debugger() {
    let _serial = serial();
    need_root();
    let controller = Controller::demo(Kind::Fifo);
    let target = controller.target_pid();
    let other_user = python_child("os.setuid(65534)");
    let transport = FifoTransport::new(&controller.fifo_dir);
    let ask = |request: String| {
        let mut connection = transport.connect(SOON).unwrap();
        let reply = connection
            .round_trip(format!("{request}\n").as_bytes(), Instant::now() + SOON)
            .unwrap();
        String::from_utf8(reply).unwrap()
    };
    let controller_pid = controller.child.id();
    let cases = [
        (1, "it is PID 1".to_owned()),
        // kthreadd, the first kernel thread.
        (2, "it is a kernel thread".to_owned()),
        (controller_pid, "it is this controller".to_owned()),
        (target, "it is the target itself".to_owned()),
        (
            other_user.id(),
            "it runs as uid 65534 (effective), not as uid 0 like this controller".to_owned(),
        ),
    ];
    for (pid, why) in cases {
        assert_eq!(
            ask(format!("GRANT_ACCESS {pid}")),
            format!("ERROR: GRANT_ACCESS {pid} refused: {why}\n")
        );
    }
    // A pid above any the kernel hands out names no process.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let missing = pid_max + 1;
    assert_eq!(
        ask(format!("GRANT_ACCESS {missing}")),
        format!("ERROR: Grant failed: no process with PID {missing}\n")
    );
    // Nobody holds the grant; the controller still serves.
    assert!(ask("STATUS".to_owned()).starts_with("STATUS "));
    assert_eq!(
        ask("GET_TARGET_PID".to_owned()),
        format!("TARGET_PID {target}\n")
    );
    end(other_user);
}

#[test]
fn a_descendant_of_another_user_or_running_setuid_is_refused() {
    let _serial = serial();
    need_root();
    let controller = Controller::demo(Kind::Socket);
    let mut session = controller.session();
    // Both are this test's children, so the descendant rule lets them
    // through: only who they run as is wrong.
    let other_user = python_child("os.setuid(65534)");
    // Real uid ours, effective another: what a setuid program looks like
    // from the other side.
    let setuid_like = python_child("os.seteuid(65534)");
    let refusals = [
        (
            other_user.id(),
            "it runs as uid 65534 (effective), not as uid 0 like this controller",
        ),
        (
            setuid_like.id(),
            "it runs as uid 65534 (effective), not as uid 0 like this controller \
             (a setuid program)",
        ),
    ];
    for (pid, why) in refusals {
        assert_eq!(
            session.ask(&format!("GRANT_ACCESS {pid}\n")),
            format!("ERROR: GRANT_ACCESS {pid} refused: {why}\n")
        );
    }
    // Real uid another, effective ours.
    let real_other = python_child("os.setresuid(65534, 0, 0)");
    let pid = real_other.id();
    assert_eq!(
        session.ask(&format!("GRANT_ACCESS {pid}\n")),
        format!(
            "ERROR: GRANT_ACCESS {pid} refused: it belongs to uid 65534 (real), not to uid 0 \
             like this controller\n"
        )
    );
    // A child running as us is granted.
    let ours = python_child("pass");
    assert_eq!(
        session.ask(&format!("GRANT_ACCESS {}\n", ours.id())),
        "READY\n"
    );
    for child in [other_user, setuid_like, real_other, ours] {
        end(child);
    }
}
