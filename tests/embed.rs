//! `examples/embed.rs`, another tool composing a `Controller` from a
//! `Supervisor` of its own, runs to its end.

use std::process::{Command, Stdio};

use crate::util::{example, serial, wait_exit, SOON};

#[test]
fn embed_example_runs_its_own_supervisor_to_the_end() {
    let _serial = serial();
    let mut child = Command::new(example("embed"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, SOON);
    let output = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
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
