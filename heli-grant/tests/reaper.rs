//! The supervisor's reapers, with orphan reaping on (as a PID 1 or a
//! subreaper runs them): a binary of its own, since the orphan reaper waits
//! for every child of the process.

use std::process::Command;
use std::time::Duration;

use heli_core::{ExitStatus, Supervisor};
use heli_grant::ProcessSupervisor;

/// Targets that exit at once race the orphan reaper, which may reap them
/// before the supervisor opened their pidfd: every spawn must still succeed
/// and every exit be reported, with its status, once.
#[test]
fn targets_that_exit_at_once_are_each_reported_once() {
    let mut command = Command::new("sh");
    command.args(["-c", "exit 7"]);
    let mut supervisor = ProcessSupervisor::new(command).reap_orphans().unwrap();
    let exits = supervisor.exits();
    for round in 0..300 {
        let pid = supervisor
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {round}: {err}"));
        let exit = exits
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|err| panic!("exit of spawn {round}: {err}"));
        assert_eq!((exit.pid, exit.status), (pid, ExitStatus::Code(7)));
    }
    assert!(exits.try_recv().is_err());
}
