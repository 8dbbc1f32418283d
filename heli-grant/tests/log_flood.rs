//! What anyone can make the injector log: signals sent to a target while
//! it is injected into are held and sent again afterwards, and those that
//! lose their sender's identity on the way are warned about, a few lines
//! per target and window, not one per signal. (A test binary of its own:
//! it installs a logger that keeps what is logged.)

#![cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]

mod common;

use common::{identity, serial};

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use heli_core::{log_limit, test_log, Deadline, Processes, Supervisor};
use heli_grant::{ProcessSupervisor, SyscallInjector};

#[test]
fn signals_sent_again_during_injections_log_a_few_warnings_only() {
    let _serial = serial("signals_sent_again_during_injections_log_a_few_warnings_only");
    assert!(test_log::capture(log::LevelFilter::Warn));
    let mut command = Command::new("sleep");
    command.arg("600");
    let mut supervisor = ProcessSupervisor::new(command);
    let pid = supervisor.spawn().unwrap();
    let injector = SyscallInjector::new(supervisor.child_waits());

    // Two signals the target ignores, sent with kill(2) (whose sender the
    // kernel does not let be queued again), as fast as they come: an
    // injection that holds both sends the second again.
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        thread::spawn(move || {
            let target = nix::unistd::Pid::from_raw(pid.get() as i32);
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let signal = if n % 2 == 0 {
                    nix::sys::signal::SIGURG
                } else {
                    nix::sys::signal::SIGWINCH
                };
                nix::sys::signal::kill(target, signal).unwrap();
                let start = Instant::now();
                while start.elapsed() < Duration::from_micros(20) {}
            }
        })
    };
    for _ in 0..300 {
        let deadline = Deadline::after(Duration::from_millis(100));
        // Made, or given up when signals kept coming: either way the
        // target lives on.
        let _ = injector.inject(identity(pid), libc::SYS_getpid, &[], &deadline);
    }
    stop.store(true, Ordering::Relaxed);
    storm.join().unwrap();
    assert!(supervisor.is_running(supervisor.identity(pid).unwrap().unwrap()));
    supervisor.kill().unwrap();

    let warnings: Vec<String> = test_log::lines()
        .into_iter()
        .map(|line| line.text)
        .collect();
    let again = warnings
        .iter()
        .filter(|line| line.contains("sending it again without its sender's identity"))
        .count();
    assert!(
        (1..=log_limit::PER_KEY as usize).contains(&again),
        "{again} warnings about signals sent again:\n{}",
        warnings.join("\n")
    );
}
