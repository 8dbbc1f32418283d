//! The user's story in a pseudo-terminal: controller on the demo target,
//! client `attach`, real pdb, `p counter`, detach, attach again, terminate.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::{getpgid, Pid};
use rexpect::session::{spawn_with_options, Options, PtySession};

use crate::util::{
    alive, children_of, command, expect_all, goodbye, serial, wait_for, Controller, Kind, SOON,
};

crate::per_transport!(
    attach_detach_attach_terminate_in_a_terminal,
    end_of_input_ends_the_client_and_leaves_the_controller,
    attach_non_interactive_runs_pdb_and_ctrl_c_reaches_pdb,
    stack_reads_the_target_without_a_grant,
    a_client_killed_while_attached_leaves_pdb_target_and_controller_working,
);

fn client_session(controller: &Controller) -> PtySession {
    let options = Options::new()
        .timeout_ms(Some(30_000))
        .strip_ansi_escape_codes(true);
    spawn_with_options(controller.client(), options).unwrap()
}

/// Attaches, prints `counter`, detaches; returns the counter.
fn attach_and_read_counter(session: &mut PtySession, controller: &Controller) -> u64 {
    session.send_line("attach").unwrap();
    // rexpect reads Latin-1: match the words after the emoji.
    expect_all(
        session,
        &[
            "Requesting ptrace permission for client PID",
            "Permission granted",
            "Attaching pdb to target PID",
        ],
    );
    if let Err(err) = session.exp_string("(Pdb) ") {
        panic!(
            "no pdb prompt: {err}\ncontroller log:\n{}",
            controller.log_text()
        );
    }
    // Echoed input must not match: print a tuple the input does not contain.
    session.send_line("p ('counter', counter)").unwrap();
    let (_, printed) = session.exp_regex(r"\('counter', \d+\)").unwrap();
    let counter = printed
        .trim_start_matches("('counter', ")
        .trim_end_matches(')')
        .parse()
        .unwrap();
    session.exp_string("(Pdb) ").unwrap();
    command(session, "q", &["Debugger detached"]);
    counter
}

fn attach_detach_attach_terminate_in_a_terminal(kind: Kind) {
    let _serial = serial();
    let mut controller = Controller::demo(kind);
    let target = controller.target_pid();
    assert!(alive(target));

    let mut session = client_session(&controller);
    session.exp_string(">>> ").unwrap();
    let first = attach_and_read_counter(&mut session, &controller);
    assert!(alive(target), "target died after detaching");

    // The target kept running: wait until its counter has moved on.
    std::thread::sleep(Duration::from_millis(1500));
    let second = attach_and_read_counter(&mut session, &controller);
    assert!(
        second > first,
        "counter did not grow: {first} then {second}"
    );

    command(&mut session, "help", &["terminate"]);
    command(&mut session, "frobnicate", &["Unknown command: frobnicate"]);

    session.send_line("terminate").unwrap();
    session.exp_eof().unwrap();
    let status = controller.wait();
    // The demo target dies of the SIGTERM it was sent: 128 + 15.
    assert_eq!(status.code(), Some(143), "{}", controller.log_text());
    wait_for("target gone", SOON, || !alive(target));
    assert_eq!(controller.fifo_dir_entries(), Vec::<String>::new());
    let log = controller.log_text();
    assert!(log.contains("granted PID"), "{log}");
}

fn end_of_input_ends_the_client_and_leaves_the_controller(kind: Kind) {
    let _serial = serial();
    let controller = Controller::demo(kind);
    let mut session = client_session(&controller);
    session.exp_string(">>> ").unwrap();
    session.send_control('d').unwrap();
    goodbye(&mut session);
    // The controller still serves.
    assert!(controller.target_pid() > 0);
}

/// `client attach` in a terminal of its own, at its first `(Pdb) ` prompt.
fn attached_session(controller: &Controller) -> PtySession {
    let mut command = controller.client();
    command.arg("attach");
    pdb_prompt(controller, command)
}

/// `client attach` run by a shell in a terminal, as a user runs it: the
/// shell, not the client, leads the terminal's session. The shell says how
/// the client ended, then waits.
fn attached_session_in_shell(controller: &Controller) -> PtySession {
    let client = controller.client();
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            "\"$@\"; echo \"client ended: $?\"; exec sleep 600",
            "sh",
        ])
        .arg(client.get_program())
        .args(client.get_args())
        .arg("attach");
    for (key, value) in client.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    pdb_prompt(controller, command)
}

fn pdb_prompt(controller: &Controller, command: Command) -> PtySession {
    // Under load the target takes a while to reach its work loop: wait for
    // it, as a user would see it.
    controller.wait_for_work_loop();
    let options = Options::new()
        .timeout_ms(Some(30_000))
        .strip_ansi_escape_codes(true);
    let mut session = spawn_with_options(command, options).unwrap();
    if let Err(err) = session.exp_string("(Pdb) ") {
        panic!("no pdb prompt: {err}\n{}", controller.log_text());
    }
    session
}

/// Checks that the demo target, which logs an iteration a second, is
/// stopped; returns how many iterations it logged.
fn stopped_at(controller: &Controller) -> usize {
    let stopped = controller.iterations();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        controller.iterations(),
        stopped,
        "the target is not stopped"
    );
    stopped
}

/// `holder=` as `client status --json` reports it.
fn grant_holder(controller: &Controller) -> Option<u32> {
    let (status, out, err) = controller.run_client(&["status", "--json"]);
    assert!(status.success(), "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["holder"].as_u64().map(|pid| pid.try_into().unwrap())
}

/// The pid of the last client granted access, from the controller's log.
fn granted(controller: &Controller) -> u32 {
    let log = controller.log_text();
    let (_, rest) = log.rsplit_once("granted PID ").expect("no grant logged");
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

fn attach_non_interactive_runs_pdb_and_ctrl_c_reaches_pdb(kind: Kind) {
    let _serial = serial();
    let controller = Controller::demo(kind);
    let mut session = attached_session(&controller);
    session.send_line("p ('counter', counter)").unwrap();
    session.exp_regex(r"\('counter', \d+\)").unwrap();
    // Let the target run, then Ctrl-C: it must reach pdb (which stops the
    // target again), not kill the client.
    session.exp_string("(Pdb) ").unwrap();
    session.send_line("c").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    session.send_control('c').unwrap();
    session.exp_string("(Pdb) ").unwrap();
    session.send_line("p ('still', counter)").unwrap();
    session.exp_regex(r"\('still', \d+\)").unwrap();
    session.send_line("q").unwrap();
    session.exp_string("Debugger detached").unwrap();
    session.exp_eof().unwrap();
    let status = session.process().wait().unwrap();
    assert!(
        matches!(status, rexpect::process::WaitStatus::Exited(_, 0)),
        "{status:?}"
    );
}

fn stack_reads_the_target_without_a_grant(kind: Kind) {
    let _serial = serial();
    let controller = Controller::demo(kind);
    let target = controller.target_pid();
    // The target may still be importing at first: wait for its work loop.
    let mut last = String::new();
    wait_for("a stack in work_loop", SOON, || {
        let (status, out, err) = controller.run_client(&["stack"]);
        assert!(status.success(), "{out}{err}\n{}", controller.log_text());
        last = out;
        last.contains("in work_loop")
    });
    let out = last;
    assert!(out.starts_with(&format!("Thread {target}")), "{out}");
    assert!(out.contains("most recent call last"), "{out}");
    assert!(out.contains("examples/target.py\", line "), "{out}");
    assert!(out.contains("in work_loop"), "{out}");
    // No grant was made, and the target kept running.
    assert!(
        !controller.log_text().contains("granted PID"),
        "{}",
        controller.log_text()
    );
    assert!(alive(target));
}

fn a_client_killed_while_attached_leaves_pdb_target_and_controller_working(kind: Kind) {
    let _serial = serial();
    let controller = Controller::demo(kind);
    let target = controller.target_pid();

    // The client dies while its pdb is attached and has stopped the target:
    // pdb dies with it, the target runs on, and the socket revokes the grant
    // with the client's connection (named pipes cannot tell).
    let mut session = attached_session_in_shell(&controller);
    let client = granted(&controller);
    if kind == Kind::Socket {
        assert_eq!(grant_holder(&controller), Some(client));
    }
    let pdb = children_of(client);
    assert_eq!(pdb.len(), 1, "{pdb:?}");
    let stopped = stopped_at(&controller);
    signal::kill(Pid::from_raw(client as i32), Signal::SIGKILL).unwrap();
    session.exp_string("client ended: 137").unwrap();
    wait_for("pdb gone", SOON, || !alive(pdb[0]));
    wait_for("the target running again", SOON, || {
        controller.iterations() > stopped
    });
    if kind == Kind::Socket {
        wait_for("the grant revoked", SOON, || {
            grant_holder(&controller).is_none()
        });
    }
    drop(session);

    // The terminal goes away with everything on it: the same.
    let session = attached_session_in_shell(&controller);
    let stopped = stopped_at(&controller);
    let group = getpgid(Some(Pid::from_raw(granted(&controller) as i32))).unwrap();
    signal::killpg(group, Signal::SIGKILL).unwrap();
    wait_for("the target running again", SOON, || {
        controller.iterations() > stopped
    });
    drop(session);

    // Nothing of this reached the controller: the next attach works.
    assert!(alive(target));
    assert_eq!(controller.target_pid(), target);
    let mut session = attached_session(&controller);
    session.send_line("q").unwrap();
    session.exp_string("Debugger detached").unwrap();
    session.exp_eof().unwrap();
}
