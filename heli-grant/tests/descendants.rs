//! `Supervisor::signal_descendants`: how the controller ends the debuggers
//! of a client whose time is up (every process descended from it, never
//! the client itself nor anyone else).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heli_core::{Pid, Processes, Supervisor};
use heli_grant::ProcessSupervisor;
use heli_proc::ProcFs;

fn running(pid: Pid) -> bool {
    ProcFs.identity(pid).unwrap().is_some()
}

fn pid_of(line: &str) -> Pid {
    Pid::new(line.trim().parse().unwrap()).unwrap()
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
fn the_descendants_of_a_process_are_signalled_and_nobody_else() {
    // A client whose "debugger" has a child of its own; once they are gone
    // the client says so and goes on (as `sleep`).
    let script = "sh -c 'sleep 300 & echo $!; wait' & echo $!; wait; echo free; exec sleep 300";
    let mut client = Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut bystander = Command::new("sleep").arg("300").spawn().unwrap();
    let client_pid = Pid::new(client.id()).unwrap();
    let mut cleanup = Cleanup(vec![client_pid, Pid::new(bystander.id()).unwrap()]);
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("the client said nothing").unwrap();
    let (first, second) = (pid_of(&next()), pid_of(&next()));
    cleanup.0.extend([first, second]);
    let debuggers = [first, second];
    assert!(debuggers.iter().all(|&pid| running(pid)));

    let id = ProcFs.identity(client_pid).unwrap().unwrap();
    // The supervisor's own target plays no part.
    let mut supervisor = ProcessSupervisor::new(Command::new("true"));
    let signalled = supervisor.signal_descendants(id, libc::SIGKILL).unwrap();
    assert_eq!(signalled, 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while debuggers.iter().any(|&pid| running(pid)) {
        assert!(Instant::now() < deadline, "the debuggers still run");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(next(), "free");
    assert!(client.try_wait().unwrap().is_none(), "the client was ended");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "a bystander was ended"
    );

    // Nothing left to end (the client now runs `sleep` itself); an
    // ancestor that is gone has no descendants.
    assert_eq!(supervisor.signal_descendants(id, libc::SIGKILL).unwrap(), 0);
    client.kill().unwrap();
    client.wait().unwrap();
    assert_eq!(supervisor.signal_descendants(id, libc::SIGKILL).unwrap(), 0);
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}
