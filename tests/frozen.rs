//! A target frozen by the cgroup freezer (what `docker pause` does) while a
//! grant waits on it: the controller goes on answering every other request,
//! says the target is frozen, answers the grant by its deadline with why,
//! leaves the target neither traced nor stopped, grants again once it is
//! thawed, and ends promptly when told to stop.
//!
//! The examples run with `--granter yama`, which really injects the
//! `prctl` (it fails with EINVAL where the kernel has no Yama: the same
//! path, ending in an error reply). The tests need root and a cgroup
//! freezer (v1's `/sys/fs/cgroup/freezer`, else a v2 hierarchy); without
//! one they say so and check nothing.

use std::fs;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::freezer::Freezer;
use crate::util::{alive, run, serial, wait_exit, wait_for, Controller, Kind, SOON};

/// The controller's options: the Yama granter, then the demo target.
const YAMA_DEMO: [&str; 3] = ["--granter", "yama", "examples/target.py"];

/// Well within the client's 2 s wait for a reply: a request that waited
/// for the grant would take longer.
const PROMPT: Duration = Duration::from_secs(1);

/// The controller's grant deadline (5 s), and room for the client to start
/// and be told.
const GRANT_ANSWERED: Duration = Duration::from_millis(6500);

/// A field of each thread's status file, read by the test itself.
fn thread_fields(pid: u32, field: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let status = fs::read_to_string(task.join("status")).unwrap();
        let value = status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in {}/status", task.display()));
        let tid = task.file_name().unwrap().to_string_lossy().into_owned();
        fields.push((tid, value.trim().to_owned()));
    }
    fields
}

/// Every thread of `pid` is neither traced nor stopped.
fn assert_let_go(pid: u32, when: &str) {
    let tracers = thread_fields(pid, "TracerPid");
    assert!(!tracers.is_empty());
    for (tid, tracer) in tracers {
        assert_eq!(tracer, "0", "{when}: thread {tid} of PID {pid} is traced");
    }
    for (tid, state) in thread_fields(pid, "State") {
        assert!(
            !state.starts_with(['t', 'T']),
            "{when}: thread {tid} of PID {pid} is stopped: {state}"
        );
    }
}

/// The controller on the demo target with the Yama granter, its target
/// running Python and then frozen: the controller, the target's pid and
/// its freezer.
fn started_frozen() -> (Controller, u32, Freezer) {
    let controller = Controller::start_on(Kind::Socket, &YAMA_DEMO);
    wait_for("the target's first iteration", SOON, || {
        controller.iterations() > 0
    });
    let target = controller.target_pid();
    let freezer = Freezer::new("e2e-frozen");
    freezer.add(target);
    freezer.set(true);
    (controller, target, freezer)
}

/// `client status --json`, which must answer promptly: the reply as JSON.
fn status_json(controller: &Controller) -> serde_json::Value {
    let asked = Instant::now();
    let (status, out, err) = controller.run_client(&["status", "--json"]);
    let took = asked.elapsed();
    assert!(
        status.success(),
        "status failed after {took:?} ({status}): {out}{err}\n{}",
        controller.log_text()
    );
    assert!(took < PROMPT, "status took {took:?}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `client attach --with true` run to its end: its status, its output
/// (stdout and stderr), and how
/// long it took.
fn attach(controller: &Controller) -> (ExitStatus, String, Duration) {
    let mut client = controller.client();
    client.args(["attach", "--with", "true"]);
    let asked = Instant::now();
    let (status, out, err) = run(client);
    (status, format!("{out}{err}"), asked.elapsed())
}

/// What issue 13 reproduced: a grant for a frozen target used to block the
/// whole controller, with no deadline. A frozen process is now refused at
/// once, saying why (one frozen during a grant is let go at its deadline:
/// heli-core's tests), and every other request is answered meanwhile.
#[test]
fn a_grant_on_a_frozen_target_is_refused_at_once_and_leaves_it_untouched() {
    let _serial = serial();
    let (mut controller, target, freezer) = started_frozen();
    assert_eq!(status_json(&controller)["target_state"], "frozen");

    let (status, output, took) = attach(&controller);
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("is frozen (cgroup freezer)"), "{output}");
    assert!(took < GRANT_ANSWERED, "the grant took {took:?}: {output}");
    let status = status_json(&controller);
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["target_state"], "frozen", "{status}");
    assert_eq!(controller.target_pid(), target);

    // Let go untouched, and still frozen: the grant thawed nothing.
    assert_let_go(target, "after the grant, still frozen");
    assert!(freezer.frozen());
    let before = controller.iterations();
    thread::sleep(Duration::from_millis(1200));
    assert_eq!(controller.iterations(), before, "a frozen target counted");

    // Thawed, it runs on, and a grant is answered at once (EINVAL without
    // Yama, READY with it: never a timeout).
    freezer.set(false);
    wait_for("the target to count again", SOON, || {
        controller.iterations() > before
    });
    assert_let_go(target, "thawed");
    let status = status_json(&controller);
    assert_eq!(status.get("target_state"), None, "{status}");
    let (status, output, took) = attach(&controller);
    assert!(took < Duration::from_secs(2), "the grant took {took:?}");
    assert!(
        status.success() || (status.code() == Some(1) && output.contains("EINVAL")),
        "{status}: {output}"
    );
    assert_let_go(target, "after a grant");

    let (status, out, err) = controller.run_client(&["terminate"]);
    assert!(status.success(), "{out}{err}");
    controller.wait();
    assert!(!alive(target));
}

/// A stop signal with the target frozen ends the controller after the
/// grace period: the target is killed. A process the cgroup v1 freezer
/// holds dies only once thawed: the controller does not wait for that, and
/// the target ends when thawed. A grant asked for meanwhile is refused at
/// once (the target is frozen), never left waiting.
#[test]
fn sigterm_with_a_frozen_target_ends_the_controller() {
    let _serial = serial();
    let (mut controller, target, freezer) = started_frozen();
    // The grant goes to a child of the test's, on a connection of its own.
    let mut grantee = Command::new("sleep")
        .arg("30")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut session = controller.session();
    let reply = session.ask(&format!("GRANT_ACCESS {}\n", grantee.id()));
    assert!(
        reply.starts_with("ERROR: ") && reply.contains("is frozen (cgroup freezer)"),
        "{reply}"
    );
    let stopped = Instant::now();
    controller.signal(Signal::SIGTERM as i32);
    // The grace period (2 s), then the kill, then a look at the freezer.
    let exit = wait_exit(&mut controller.child, Duration::from_secs(6));
    let took = stopped.elapsed();
    let _ = grantee.kill();
    let _ = grantee.wait();
    let log = controller.log_text();
    assert!(
        took < Duration::from_secs(4),
        "the controller took {took:?}:\n{log}"
    );
    assert_eq!(exit.code(), Some(128 + 9), "{log}");
    // cgroup v2 lets a frozen process die of SIGKILL; v1 does not.
    if !freezer.v2 {
        assert!(log.contains("it ends when thawed"), "{log}");
        // Frozen, killed, and neither traced nor stopped.
        assert!(alive(target));
        assert_let_go(target, "the controller gone, the target frozen");
    }
    freezer.set(false);
    wait_for("the target to end once thawed", SOON, || !alive(target));
}
