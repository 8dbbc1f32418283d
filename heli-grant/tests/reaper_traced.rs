//! The supervisor's reaper when a dead target is held by another tracer: a
//! binary of its own, so its reaper thread is the only one to watch.

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use heli_core::{ExitStatus, Pid, Supervisor};
use heli_grant::ProcessSupervisor;
use heli_proc::Proc;

/// A tracer that seizes `pid` (no options: no exit stop) and then never
/// waits for it, as a debugger busy elsewhere does: when `pid` dies, it
/// stays a zombie that only the tracer may collect, while its pidfd already
/// says it exited.
fn idle_tracer(pid: Pid) -> std::process::Child {
    let code = "import ctypes, sys, time\n\
                rc = ctypes.CDLL(None, use_errno=True).ptrace(0x4206, int(sys.argv[1]), None, None)\n\
                print('seized' if rc == 0 else 'failed %d' % ctypes.get_errno(), flush=True)\n\
                time.sleep(600)\n";
    let mut tracer = Command::new("/usr/bin/python3")
        .args(["-c", code, &pid.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(tracer.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "seized");
    tracer
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

/// A traced target dies while its tracer does not wait for it: the pidfd
/// says it exited, yet it cannot be reaped. The reaper must wait for it
/// without spinning (it used to take a whole CPU), and report the exit once
/// the tracer lets go.
#[test]
fn a_dead_target_held_by_another_tracer_is_awaited_without_spinning() {
    let mut command = Command::new("sleep");
    command.arg("600");
    let mut supervisor = ProcessSupervisor::new(command);
    let exits = supervisor.exits();
    let pid = supervisor.spawn().unwrap();
    let mut tracer = idle_tracer(pid);
    supervisor.kill().unwrap();
    let target = Proc::open_existing(pid).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while target.info().unwrap().unwrap().state != heli_core::ProcessState::Zombie {
        assert!(Instant::now() < deadline, "the target did not die");
        thread::sleep(Duration::from_millis(10));
    }
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
    tracer.kill().unwrap();
    tracer.wait().unwrap();
    let exit = exits.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!((exit.pid, exit.status), (pid, ExitStatus::Signal(9)));
}
