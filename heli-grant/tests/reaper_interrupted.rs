//! A reaper interrupted by a signal (a handler run on its thread, or the
//! controller stopped and continued) is no exit of its target: a binary of
//! its own, as it signals every reaper thread of the process.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use heli_core::{Pid, Processes, Supervisor};
use heli_grant::ProcessSupervisor;
use heli_proc::ProcFs;

/// The ids of this process's threads whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            name.starts_with(prefix)
                .then(|| entry.file_name().to_str()?.parse().ok())?
        })
        .collect()
}

/// Sends `signal` to thread `tid` of this process; false once it is gone.
fn signal_thread(tid: i32, signal: i32) -> bool {
    // SAFETY: tgkill takes plain integers and touches no memory of ours.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::c_long::from(tid),
            libc::c_long::from(signal),
        )
    };
    sent == 0
}

#[test]
fn signals_on_the_reaper_thread_leave_a_group_leading_target_and_its_children_alone() {
    // A handler for SIGUSR1, so that the signal interrupts the reaper's
    // wait (EINTR) instead of ending the process.
    let handled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&handled);
    // SAFETY: the handler only increments an atomic counter.
    unsafe {
        signal_hook::low_level::register(libc::SIGUSR1, move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
    }
    .unwrap();

    let (read, write) = nix::unistd::pipe().unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", "sleep 600 & echo $!; wait"])
        .stdout(Stdio::from(write))
        .stderr(Stdio::null());
    let mut supervisor = ProcessSupervisor::new(command)
        .kill_group(true)
        .group_grace(Duration::from_millis(200));
    let exits = supervisor.exits();
    let target = supervisor.spawn().unwrap();
    let mut lines = BufReader::new(File::from(read)).lines();
    let child: u32 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let child = Pid::new(child).unwrap();

    // A thread names itself once it runs: the reaper may not have yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let reapers = loop {
        let reapers = threads_named("heli-reaper");
        if !reapers.is_empty() || std::time::Instant::now() > deadline {
            break reapers;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(reapers.len(), 1, "{reapers:?}");
    for _ in 0..20 {
        if !signal_thread(reapers[0], libc::SIGUSR1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(handled.load(Ordering::SeqCst) > 0);
    // Longer than the group's grace: nothing was ended, nothing reported.
    std::thread::sleep(Duration::from_millis(500));
    assert!(exits.try_recv().is_err(), "an exit was reported");
    for pid in [target, child] {
        assert!(
            ProcFs.identity(pid).unwrap().is_some(),
            "PID {pid} of the group was ended"
        );
    }
    supervisor.kill().unwrap();
    exits.recv_timeout(Duration::from_secs(10)).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::from(child)),
        nix::sys::signal::Signal::SIGKILL,
    );
}
