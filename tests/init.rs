//! The controller as a container's entrypoint: stop signals, restarts,
//! orphans and zombies (as a subreaper and as PID 1), a killed target, a
//! client killed while waiting for its reply, hostile input.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heli::core::Pid;
use heli::core::ProcessState::Zombie;
use heli::proc::Syscall;
use nix::sys::signal::Signal;

use crate::supervise::recorder;
use crate::util::{
    by_remote_exec, children_of, end, example, proc, run, run_with_input, script, serial, state,
    temp_script, wait_for, Controller, Kind, SOON,
};

/// Children of `pid` that are zombies, and all its children.
fn children(pid: u32) -> (usize, usize) {
    let all = children_of(pid);
    let zombies = all.iter().filter(|&&child| state(child) == Some(Zombie));
    (zombies.count(), all.len())
}

#[test]
fn every_stop_signal_reaches_the_target_and_ends_the_controller_cleanly() {
    let _serial = serial();
    let signals = [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ];
    for (signal, kind) in signals
        .into_iter()
        .flat_map(|s| [(s, Kind::Fifo), (s, Kind::Socket)])
    {
        let dir = tempfile::tempdir().unwrap();
        let (path, out) = recorder(dir.path());
        let mut controller = Controller::start_on(kind, &[path.to_str().unwrap()]);
        let read = || fs::read_to_string(&out).unwrap_or_default();
        wait_for("target ready", SOON, || read().contains("ready"));
        controller.signal(signal as i32);
        let status = controller.wait();
        assert_eq!(
            status.code(),
            Some(0),
            "{signal} ({kind:?}): {}",
            controller.log_text()
        );
        assert_eq!(read(), format!("ready\n{}\n", signal.as_str()));
        assert_eq!(
            controller.fifo_dir_entries(),
            Vec::<String>::new(),
            "{signal} ({kind:?})"
        );
    }
}

#[test]
fn a_killed_target_ends_the_controller_and_clients_are_told() {
    let _serial = serial();
    let mut controller = Controller::demo(Kind::Socket);
    let target = controller.target_pid();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(target as i32), Signal::SIGKILL).unwrap();
    assert_eq!(controller.wait().code(), Some(128 + 9));
    assert!(
        controller
            .log_text()
            .contains("ended on its own (signal 9)"),
        "{}",
        controller.log_text()
    );
    let (status, _, stderr) = controller.run_client(&["pid"]);
    assert_eq!(status.code(), Some(3), "{stderr}");
}

#[test]
fn a_failing_target_is_restarted_with_a_new_pid_then_given_up() {
    let _serial = serial();
    let (_dir, path) = temp_script(
        "flaky.py",
        "import time\ntime.sleep(1)\nraise SystemExit(3)\n",
    );
    let mut controller = Controller::start_on(
        Kind::Socket,
        &[
            "--restart",
            "on-failure",
            "--max-restarts",
            "2",
            path.to_str().unwrap(),
        ],
    );
    let first = controller.target_pid();
    let mut seen = vec![first];
    let deadline = Instant::now() + SOON;
    while seen.len() < 3 && Instant::now() < deadline {
        let (status, out, _) = controller.run_client(&["pid"]);
        if let Some(pid) = status
            .success()
            .then(|| out.trim().parse::<u32>().ok())
            .flatten()
        {
            if !seen.contains(&pid) {
                seen.push(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        seen.len(),
        3,
        "clients saw {seen:?}\n{}",
        controller.log_text()
    );
    // Three runs, then the controller exits with the target's status.
    assert_eq!(
        controller.wait().code(),
        Some(3),
        "{}",
        controller.log_text()
    );
    assert_eq!(
        controller
            .log_text()
            .matches("restarting the target in")
            .count(),
        2
    );
}

/// A target that fails at once, again and again, is restarted after ever
/// longer pauses (100 ms doubling): a handful of restarts in 3 s, not the
/// thousands of a loop without back-off.
#[test]
fn a_crash_looping_target_does_not_make_the_controller_spin() {
    let _serial = serial();
    let controller = Controller::start_on(
        Kind::Socket,
        &["--restart", "always", "--", "sh", "-c", "exit 1"],
    );
    std::thread::sleep(Duration::from_secs(3));
    let (status, out, err) = controller.run_client(&["status", "--json"]);
    assert!(status.success(), "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let restarts = json["restarts"].as_u64().unwrap();
    // Counted when planned; pauses of 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s: at
    // most 6 planned in 3 s.
    assert!((3..=6).contains(&restarts), "{restarts} restarts\n{out}");
    assert_eq!(json["last_exit"], 1, "{out}");
}

/// A target that leaves `count` orphans behind, each living `life`
/// seconds, then waits.
fn orphan_maker(dir: &std::path::Path, count: u32, life: f64) -> std::path::PathBuf {
    script(
        dir,
        "orphans.sh",
        // `exec`: the target itself waits, and ends with the controller
        // (a child of its shell would be left running).
        &format!("for i in $(seq {count}); do (sleep {life} &); done\nexec sleep 600\n"),
    )
}

#[test]
fn a_subreaper_controller_reaps_100_orphaned_grandchildren() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let maker = orphan_maker(dir.path(), 100, 1.0);
    let controller = Controller::start_on(
        Kind::Socket,
        &["--subreaper", "--", "sh", maker.to_str().unwrap()],
    );
    let me = controller.child.id();
    // The orphans are re-parented to the controller (not to PID 1) ...
    wait_for("orphans re-parented to the controller", SOON, || {
        children(me).1 >= 50
    });
    // ... and once they have exited, none is left a zombie.
    std::thread::sleep(Duration::from_millis(1500));
    wait_for("no zombies", SOON, || children(me) == (0, 1));
    assert!(
        controller.log_text().contains("reaping every child"),
        "{}",
        controller.log_text()
    );
}

#[test]
fn as_pid_1_of_a_pid_namespace_the_controller_reaps_every_orphan() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // The target counts the zombies of its namespace after its orphans died,
    // and exits with that count.
    let check = script(
        dir.path(),
        "pid1.sh",
        "for i in $(seq 100); do (sleep 0.3 &); done\nsleep 2\n\
         zombies=$(cat /proc/[0-9]*/stat 2>/dev/null | grep -c ') Z ')\n\
         echo \"zombies: $zombies\"\nexit $zombies\n",
    );
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(example("controller"))
        .args(["--transport", "socket", "--name", "pid1", "--", "sh"])
        .arg(&check)
        .env("XDG_RUNTIME_DIR", dir.path());
    let (status, out, err) = run(unshare);
    assert!(err.contains("reaping every child"), "{err}");
    assert!(out.contains("zombies: 0"), "{out}\n{err}");
    assert_eq!(status.code(), Some(0), "{out}\n{err}");
}

/// 100,000 lines of random bytes, over-long lines, NULs, empty lines.
fn hostile_lines(seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..100_000)
        .map(|i| {
            let len = match i % 1000 {
                0 => 5000 + (next() % 3000) as usize,
                _ => (next() % 120) as usize,
            };
            let mut line: Vec<u8> = (0..len)
                .map(|_| (next() % 255) as u8)
                .filter(|&b| b != b'\n')
                .collect();
            if i % 7 == 0 {
                line.splice(0..0, b"GRANT_ACCESS ".iter().copied());
            }
            line.push(b'\n');
            line
        })
        .collect()
}

fn hostile_input_leaves_the_controller_serving(kind: Kind) {
    let _serial = serial();
    let controller = Controller::demo(kind);
    let lines = hostile_lines(0x5eed + kind as u64);
    let replies = match kind {
        Kind::Socket => {
            // Bursts: many lines per write, read back on another thread.
            let stream = controller.socket();
            let reader = stream.try_clone().unwrap();
            let expected = lines.len();
            let counting = std::thread::spawn(move || {
                let mut reader = BufReader::new(reader);
                let mut line = Vec::new();
                let mut replies = 0;
                while replies < expected {
                    line.clear();
                    if reader.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    replies += 1;
                }
                replies
            });
            let mut writer = stream;
            for burst in lines.chunks(100) {
                writer.write_all(&burst.concat()).unwrap();
            }
            counting.join().unwrap()
        }
        Kind::Fifo => {
            // One client at a time: each line a request of its own.
            let transport = heli::transport::FifoTransport::new(&controller.fifo_dir);
            let mut connection = heli::core::Transport::connect(&transport, SOON).unwrap();
            lines
                .iter()
                .filter(|line| {
                    heli::core::Connection::round_trip(&mut connection, line, Instant::now() + SOON)
                        .is_ok()
                })
                .count()
        }
    };
    assert_eq!(replies, lines.len(), "every complete line gets one reply");
    // Still serving a real attach. Named pipes cannot tell who asks, so a
    // random `GRANT_ACCESS <pid>` may have granted some live pid (as the
    // original did): take the grant over there. The socket refused them all.
    let attach: &[&str] = match kind {
        Kind::Fifo => &["attach", "--force"],
        Kind::Socket => &["attach"],
    };
    let mut client = controller.client();
    client.args(attach);
    let (status, stdout, stderr) = run_with_input(client, b"p ('counter', counter)\nq\n");
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("('counter', "), "{stdout}");
}

crate::per_transport!(
    hostile_input_leaves_the_controller_serving,
    a_client_killed_while_waiting_for_ready_leaves_the_controller_serving,
);

/// A grant by remote exec into a target asleep in C code takes the whole
/// remote-exec deadline: the client is killed meanwhile. The controller
/// answers into the void, and the next client gets its own reply.
fn a_client_killed_while_waiting_for_ready_leaves_the_controller_serving(kind: Kind) {
    let _serial = serial();
    let (_dir, sleeper) = temp_script("sleeper.py", "import time\ntime.sleep(1000)\n");
    let controller = Controller::start_on(kind, &by_remote_exec(sleeper.to_str().unwrap()));
    let target = controller.target_pid();
    // Asleep in C code, not still starting up in Python.
    wait_for("the target to sleep", SOON, || {
        let syscall = proc(target)
            .unwrap()
            .thread_syscall(Pid::new(target).unwrap());
        syscall.unwrap() == Some(Syscall::In(libc::SYS_clock_nanosleep))
    });
    let mut client = controller.client();
    client
        .args(["--timeout", "30", "attach"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let client = client.spawn().unwrap();
    let request = format!("request GRANT_ACCESS {}", client.id());
    // Killed once the remote exec waits on the target: killed sooner, the
    // granter finds it gone before it starts, and fails at once.
    wait_for("the remote exec to wait on the target", SOON, || {
        let log = controller.log_text();
        log.contains(&request) && log.contains("asked thread")
    });
    end(client);
    wait_for("the grant to give up", SOON, || {
        controller.log_text().contains("grant for PID")
    });
    assert!(
        controller.log_text().contains("blocked in C code"),
        "{}",
        controller.log_text()
    );
    assert_eq!(controller.target_pid(), target);
    let (status, out, err) = controller.run_client(&["status"]);
    assert!(status.success(), "{out}{err}");
    assert!(crate::util::alive(target));
}
