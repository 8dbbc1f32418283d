//! The user's story in a pseudo-terminal: controller on the demo target,
//! client `attach`, real pdb, `p counter`, detach, attach again, terminate.

use std::time::Duration;

use rexpect::session::{spawn_with_options, Options, PtySession};

use crate::util::{alive, serial, wait_for, Controller, Kind, SOON};

crate::per_transport!(
    attach_detach_attach_terminate_in_a_terminal,
    end_of_input_ends_the_client_and_leaves_the_controller,
    attach_non_interactive_runs_pdb_and_ctrl_c_reaches_pdb,
    stack_reads_the_target_without_a_grant,
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
    session
        .exp_string("Requesting ptrace permission for client PID")
        .unwrap();
    // rexpect reads Latin-1: match the words after the emoji.
    session.exp_string("Permission granted").unwrap();
    session.exp_string("Attaching pdb to target PID").unwrap();
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
    session.send_line("q").unwrap();
    session.exp_string("Debugger detached").unwrap();
    session.exp_string(">>> ").unwrap();
    counter
}

fn attach_detach_attach_terminate_in_a_terminal(kind: Kind) {
    let _serial = serial();
    let mut controller = Controller::start_on(kind, &["examples/target.py"]);
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

    session.send_line("help").unwrap();
    session.exp_string("terminate").unwrap();
    session.exp_string(">>> ").unwrap();
    session.send_line("frobnicate").unwrap();
    session.exp_string("Unknown command: frobnicate").unwrap();
    session.exp_string(">>> ").unwrap();

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
    let controller = Controller::start_on(kind, &["examples/target.py"]);
    let mut session = client_session(&controller);
    session.exp_string(">>> ").unwrap();
    session.send_control('d').unwrap();
    session.exp_string("Goodbye!").unwrap();
    session.exp_eof().unwrap();
    // The controller still serves.
    assert!(controller.target_pid() > 0);
}

fn attach_non_interactive_runs_pdb_and_ctrl_c_reaches_pdb(kind: Kind) {
    let _serial = serial();
    let controller = Controller::start_on(kind, &["examples/target.py"]);
    let options = Options::new()
        .timeout_ms(Some(30_000))
        .strip_ansi_escape_codes(true);
    let mut command = controller.client();
    command.arg("attach");
    let mut session = spawn_with_options(command, options).unwrap();
    session.exp_string("(Pdb) ").unwrap();
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
    let controller = Controller::start_on(kind, &["examples/target.py"]);
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
