//! `examples/embed.rs`, another tool composing a `Controller` from a
//! `Supervisor` of its own, runs to its end.

use std::process::Command;

use crate::util::{example, run, serial};

#[test]
fn embed_example_runs_its_own_supervisor_to_the_end() {
    let _serial = serial();
    let (status, out, err) = run(Command::new(example("embed")));
    assert!(status.success(), "{out}{err}");
    let target: u32 = out
        .lines()
        .find_map(|line| line.strip_prefix("embed: spawn #1 is PID "))
        .unwrap_or_else(|| panic!("no spawn reported:\n{out}{err}"))
        .parse()
        .unwrap();
    // The controller's STATUS went through the custom supervisor's describe.
    assert!(
        out.contains(&format!("embed: target {target} runs sleep 600 (spawn #1)")),
        "{out}"
    );
    assert!(out.contains("embed: target ended with signal 15"), "{out}");
    assert!(!crate::util::alive(target));
}
