//! The supervisor's reaper when a dead target is held by another tracer: a
//! binary of its own, so its reaper thread is the only one to watch.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use heli_core::{ExitStatus, Pid, Supervisor};
use heli_grant::ProcessSupervisor;
use heli_proc::Proc;
use nix::sys::signal::{kill, Signal};

/// strace, which the test command installs; missing, the test fails.
fn strace() -> Command {
    let mut command = Command::new("strace");
    command.stdout(Stdio::null()).stderr(Stdio::null());
    command
}

/// The reaper thread of this process (there is one: this binary supervises
/// one target), by its name.
fn reaper_thread() -> Pid {
    let me = Proc::open_existing(Pid::this()).unwrap();
    me.threads()
        .unwrap()
        .into_iter()
        .find(|&tid| {
            me.thread_name(u64::from(tid))
                .is_some_and(|name| name.starts_with("heli-reaper"))
        })
        .expect("a reaper thread")
}

fn cpu_ticks(tid: Pid) -> u64 {
    Proc::open_existing(tid)
        .unwrap()
        .cpu_ticks()
        .unwrap()
        .unwrap()
}

/// A traced target dies while its tracer (strace, stopped) does not wait
/// for it: the pidfd says it exited, yet it cannot be reaped. The reaper
/// must wait for it without spinning (it used to take a whole CPU), and
/// report the exit once the tracer lets go.
#[test]
fn a_dead_target_held_by_another_tracer_is_awaited_without_spinning() {
    let mut command = Command::new("sleep");
    command.arg("600");
    let mut supervisor = ProcessSupervisor::new(command);
    let exits = supervisor.exits();
    let pid = supervisor.spawn().unwrap();
    let mut tracer = strace()
        .args(["-p", &pid.to_string()])
        .spawn()
        .expect("strace (the test command installs it)");
    let target = Proc::open_existing(pid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while target.status().unwrap().unwrap().tracer.is_none() {
        assert!(Instant::now() < deadline, "strace did not attach");
        thread::sleep(Duration::from_millis(10));
    }
    let tracer_pid = nix::unistd::Pid::from_raw(tracer.id() as i32);
    kill(tracer_pid, Signal::SIGSTOP).unwrap();
    supervisor.kill().unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(
        exits.try_recv().is_err(),
        "reaped while its tracer holds it"
    );
    let reaper = reaper_thread();
    let before = cpu_ticks(reaper);
    thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(reaper) - before;
    eprintln!("the reaper used {used} ticks in 2 s");
    // Clock ticks are 10 ms: a spinning reaper uses about 200 here.
    assert!(used <= 20, "the reaper used {used} ticks of CPU in 2 s");

    // The tracer goes: the target is ours to reap, and is reported.
    kill(tracer_pid, Signal::SIGKILL).unwrap();
    tracer.wait().unwrap();
    let exit = exits.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((exit.pid, exit.status), (pid, ExitStatus::Signal(9)));
}
