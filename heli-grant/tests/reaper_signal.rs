//! A target killed by a real-time signal, reaped by its own reaper and by
//! the orphan reaper: a binary of its own, since the orphan reaper waits
//! for every child of the process.

use std::process::Command;
use std::time::Duration;

use heli_core::{ExitStatus, Supervisor};
use heli_grant::ProcessSupervisor;

/// A target killed by a real-time signal (which nix's `WaitStatus` cannot
/// name) is reported with that signal, by the target's own reaper and by
/// the orphan reaper alike; before, the status was lost and the
/// controller waited for an exit that never came.
#[test]
fn a_target_killed_by_a_real_time_signal_is_reported() {
    let rt = libc::SIGRTMIN() + 6;
    for orphans in [false, true] {
        let mut command = Command::new("sh");
        // sh's own `kill -s` needs the name: the number works in every sh.
        command.args(["-c", &format!("kill -{rt} $$; sleep 5")]);
        let mut supervisor = ProcessSupervisor::new(command);
        if orphans {
            supervisor = supervisor.reap_orphans().unwrap();
        }
        let exits = supervisor.exits();
        for round in 0..20 {
            let pid = supervisor
                .spawn()
                .unwrap_or_else(|err| panic!("orphans {orphans}, spawn {round}: {err}"));
            let exit = exits.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!((exit.pid, exit.status), (pid, ExitStatus::Signal(rt)));
        }
    }
}
