//! A target in a process group of its own (`kill_group`): what it leaves of
//! its group when it ends is ended too.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heli_core::{ExitStatus, Pid, Processes, Supervisor};
use heli_grant::ProcessSupervisor;
use heli_proc::{group_members, ProcFs};

/// Runs `script` as a group-leading target that prints the pids it leaves
/// behind, one a line, then `done` and exits 3; returns those pids, and how
/// long after `done` its exit was reported.
fn run_leaving(script: &str, grace: Duration) -> (Pid, Vec<Pid>, Duration) {
    let (read, write) = nix::unistd::pipe().unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", script])
        .stdout(Stdio::from(write))
        .stderr(Stdio::null());
    let mut supervisor = ProcessSupervisor::new(command)
        .kill_group(true)
        .group_grace(grace);
    let exits = supervisor.exits();
    let target = supervisor.spawn().unwrap();
    let mut left = Vec::new();
    let mut lines = BufReader::new(File::from(read)).lines();
    let done = loop {
        let line = lines.next().expect("the target said nothing").unwrap();
        if line == "done" {
            break Instant::now();
        }
        left.push(Pid::new(line.trim().parse().unwrap()).unwrap());
    };
    let exit = exits.recv_timeout(Duration::from_secs(20)).unwrap();
    let took = done.elapsed();
    assert_eq!((exit.pid, exit.status), (target, ExitStatus::Code(3)));
    (target, left, took)
}

fn running(pid: Pid) -> bool {
    ProcFs.identity(pid).unwrap().is_some()
}

/// Kills what a failed test left running.
struct Cleanup(Vec<Pid>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::from(pid)),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[test]
fn children_left_in_the_group_get_sigterm_when_the_target_ends() {
    let (group, left, _) = run_leaving(
        "sleep 600 & echo $!; sleep 600 & echo $!; echo done; exit 3",
        Duration::from_secs(5),
    );
    let _cleanup = Cleanup(left.clone());
    assert_eq!(left.len(), 2);
    for pid in left {
        assert!(!running(pid), "PID {pid} of the group still runs");
    }
    assert!(group_members(group).unwrap().is_empty());
}

#[test]
fn children_that_ignore_sigterm_get_sigkill_after_the_grace_period() {
    let grace = Duration::from_millis(600);
    // An ignored signal stays ignored across exec: sleep ignores SIGTERM.
    let (group, left, took) = run_leaving(
        "trap '' TERM; sleep 600 & echo $!; echo done; exit 3",
        grace,
    );
    let _cleanup = Cleanup(left.clone());
    assert_eq!(left.len(), 1);
    assert!(!running(left[0]), "PID {} survived SIGKILL", left[0]);
    assert!(group_members(group).unwrap().is_empty());
    assert!(
        took >= grace,
        "reported after {took:?}, before the grace period"
    );
}

#[test]
fn a_target_that_leaves_nothing_is_reported_at_once() {
    let (_, left, took) = run_leaving("echo done; exit 3", Duration::from_secs(30));
    assert!(left.is_empty());
    assert!(took < Duration::from_secs(10), "{took:?}");
}
