//! The original Python client's lowercase dialect, end to end over the FIFOs.

use std::process::{Command, Stdio};

use crate::util::{alive, python314, repo, serial, wait_exit, wait_for, Controller, SOON};

#[test]
fn lowercase_client_of_the_original_works_against_our_controller() {
    let _serial = serial();
    let mut controller = Controller::start(&["examples/target.py"]);
    let target = controller.target_pid();
    let mut child = Command::new(python314())
        .arg(repo().join("tests/original_client.py"))
        .arg(&controller.fifo_dir)
        .args([
            "get_target_pid",
            "grant_access $PID",
            "grant_access 0",
            "bogus now",
            "GET_TARGET_PID",
            "terminate",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, SOON);
    let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    assert!(status.success(), "{out}\n{}", controller.log_text());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            format!("target_pid {target}").as_str(),
            "ready",
            "error : Invalid PID",
            "error : Unknown command: bogus",
            format!("TARGET_PID {target}").as_str(),
            "ready",
        ],
        "{}",
        controller.log_text()
    );
    controller.wait();
    wait_for("target gone", SOON, || !alive(target));
}
