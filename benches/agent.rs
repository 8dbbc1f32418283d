//! What heli's in-target agent (issue 15) costs the target, and how long
//! `attach` through it takes:
//!
//! - the target's start-up: `python3.14 -c pass` started by a
//!   `ProcessSupervisor` with an `AgentHost` (the agent's directory first
//!   on `PYTHONPATH`, its channel inherited) and by the same supervisor
//!   without one, in turns, spawn to exit (the aim: <= 10 ms
//!   added);
//! - the agent thread's wake-ups (`heli-agent`, its voluntary and
//!   involuntary context switches) over 10 s of a sleeping target once
//!   its agent is ready (aim: 0);
//! - the resident memory of a sleeping target with and without the agent;
//! - `client attach` in a pseudo-terminal until pdb's `(Pdb) ` prompt,
//!   through the agent (`controller --agent always`) and through the
//!   ptrace grant (`pdb -p`), in turns, on `examples/target.py`.
//!
//! `cargo bench --bench agent` prints the tables (the aims are never
//! asserted). Under `cargo test` it runs a few rounds of each, with a 1 s
//! idle wait, to keep the bench code working.

#![allow(missing_docs)]

mod common;

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use heli::core::{Agent, AgentState, ExitStatus, Pid, Processes, Supervisor};
use heli::grant::{AgentHost, ProcessSupervisor};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rexpect::process::PtyProcess;

use common::{benchmarking, example_exe, python};

/// A target that sleeps until it is killed.
const SLEEPER: &str = "import time\ntime.sleep(3600)\n";

/// The median and 90th percentile of `samples`, in milliseconds.
fn median_p90(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5).as_secs_f64() * 1e3, at(0.9).as_secs_f64() * 1e3)
}

/// A supervisor of `python3.14 ARGS`, with the agent of `host` if any;
/// Python writes the bytecode of what it compiles (the agent's modules, in
/// the host's directory) unless `compile_each_start` (then it compiles
/// them at every start, as with `PYTHONDONTWRITEBYTECODE` set in the
/// controller's environment).
fn supervisor(
    args: &[&str],
    host: Option<&AgentHost>,
    compile_each_start: bool,
) -> ProcessSupervisor {
    let mut command = Command::new(python());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if compile_each_start {
        command.env("PYTHONDONTWRITEBYTECODE", "1");
    } else {
        command.env_remove("PYTHONDONTWRITEBYTECODE");
    }
    let supervisor = ProcessSupervisor::new(command);
    match host {
        Some(host) => supervisor.agent(host.clone()),
        None => supervisor,
    }
}

/// Spawns the target of `supervisor` and waits for it to exit: how long
/// that took.
fn run_to_exit(supervisor: &mut ProcessSupervisor) -> Duration {
    let exits = supervisor.exits();
    let start = Instant::now();
    let pid = supervisor.spawn().unwrap();
    let exit = exits.recv_timeout(Duration::from_secs(30)).unwrap();
    let took = start.elapsed();
    assert_eq!((exit.pid, exit.status), (pid, ExitStatus::Code(0)));
    took
}

/// `host` writes bytecode, `uncached` gets none written.
fn start_up(host: &AgentHost, uncached: &AgentHost, rounds: usize) {
    let mut kinds = [
        (
            "with the agent",
            supervisor(&["-c", "pass"], Some(host), false),
        ),
        ("without", supervisor(&["-c", "pass"], None, false)),
        (
            "with the agent, its bytecode not written (`PYTHONDONTWRITEBYTECODE=1`)",
            supervisor(&["-c", "pass"], Some(uncached), true),
        ),
    ];
    // One start each first: the agent's bytecode written, the files cached.
    for (_, supervisor) in &mut kinds {
        run_to_exit(supervisor);
    }
    let mut samples = vec![Vec::new(); kinds.len()];
    for round in 0..rounds {
        // Which goes first changes every round.
        for turn in 0..kinds.len() {
            let kind = (round + turn) % kinds.len();
            samples[kind].push(run_to_exit(&mut kinds[kind].1));
        }
    }
    println!("\n`python3.14 -c pass`, spawn to exit by a ProcessSupervisor, in turns");
    println!("| what | runs | median ms | p90 ms |");
    println!("|---|---|---|---|");
    let figures: Vec<(f64, f64)> = samples.into_iter().map(median_p90).collect();
    for ((what, _), (median, p90)) in kinds.iter().zip(&figures) {
        println!("| {what} | {rounds} | {median:.2} | {p90:.2} |");
    }
    let (plain_median, plain_p90) = figures[1];
    for (what, index) in [("with the agent", 0), ("not written", 2)] {
        let (median, p90) = figures[index];
        println!(
            "| added by the agent ({what}) | | {:.2} | {:.2} |",
            median - plain_median,
            p90 - plain_p90
        );
    }
}

/// A sleeping target, killed when dropped.
struct Sleeper {
    supervisor: ProcessSupervisor,
    pid: Pid,
}

impl Sleeper {
    /// Starts [`SLEEPER`] (with the agent of `host` if any), and waits for
    /// its agent to be ready; then lets it settle into its sleep.
    fn start(script: &Path, host: Option<&AgentHost>) -> Sleeper {
        let mut supervisor = supervisor(&[script.to_str().unwrap()], host, false);
        let pid = supervisor.spawn().unwrap();
        if let Some(host) = host {
            let id = supervisor.identity(pid).unwrap().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match host.state(id) {
                    AgentState::Ready { .. } => break,
                    AgentState::Starting => {}
                    other => panic!("PID {pid}: no agent: {other}"),
                }
                assert!(
                    Instant::now() < deadline,
                    "PID {pid}: the agent never said hello"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        Sleeper { supervisor, pid }
    }

    fn status(&self, task: Option<u32>) -> String {
        let path = match task {
            Some(tid) => format!("/proc/{}/task/{tid}/status", self.pid),
            None => format!("/proc/{}/status", self.pid),
        };
        std::fs::read_to_string(path).unwrap()
    }

    fn field(status: &str, name: &str) -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    }

    fn rss_kib(&self) -> u64 {
        Sleeper::field(&self.status(None), "VmRSS")
    }

    /// The thread named `name`.
    fn thread(&self, name: &str) -> u32 {
        std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .unwrap()
            .flatten()
            .find_map(|task| {
                let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
                (comm.trim_end() == name).then(|| task.file_name().to_str()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("PID {}: no thread named {name}", self.pid))
    }

    /// Voluntary and involuntary context switches of thread `tid`.
    fn switches(&self, tid: u32) -> (u64, u64) {
        let status = self.status(Some(tid));
        (
            Sleeper::field(&status, "voluntary_ctxt_switches"),
            Sleeper::field(&status, "nonvoluntary_ctxt_switches"),
        )
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let exits = self.supervisor.exits();
        let _ = self.supervisor.kill();
        let _ = exits.recv_timeout(Duration::from_secs(10));
    }
}

fn idle_and_memory(host: &AgentHost, script: &Path, idle: Duration, rounds: usize) {
    let sleeper = Sleeper::start(script, Some(host));
    let tid = sleeper.thread("heli-agent");
    let threads = std::fs::read_dir(format!("/proc/{}/task", sleeper.pid))
        .unwrap()
        .count();
    let before = sleeper.switches(tid);
    std::thread::sleep(idle);
    let after = sleeper.switches(tid);
    drop(sleeper);
    println!(
        "\nThe agent thread `heli-agent` of a sleeping Python 3.14 target, idle over {} s \
         once ready ({threads} threads in the target)",
        idle.as_secs()
    );
    println!("| voluntary switches | involuntary switches |");
    println!("|---|---|");
    println!("| {} | {} |", after.0 - before.0, after.1 - before.1);

    let (mut with_agent, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        with_agent.push(Sleeper::start(script, Some(host)).rss_kib());
        plain.push(Sleeper::start(script, None).rss_kib());
    }
    with_agent.sort();
    plain.sort();
    let (with_median, plain_median) = (with_agent[rounds / 2], plain[rounds / 2]);
    println!(
        "\nVmRSS of a sleeping Python 3.14 target (agent ready), median of {rounds}, in turns"
    );
    println!("| with the agent KiB | without KiB | added KiB |");
    println!("|---|---|---|");
    println!(
        "| {with_median} | {plain_median} | {} |",
        with_median as i64 - plain_median as i64
    );
}

/// A controller on `examples/target.py`, with `--agent always` or without
/// (the ptrace grant), its sockets and agent files in a directory of its
/// own.
struct Controller {
    child: Child,
    dir: tempfile::TempDir,
}

impl Controller {
    fn start(agent: bool) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--name", "bench"];
        if agent {
            args.extend(["--agent", "always"]);
        }
        args.push("examples/target.py");
        let child = Command::new(example_exe("controller"))
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("TMPDIR", dir.path())
            .env("HELI_PYTHON", python())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let controller = Controller { child, dir };
        // pdb -p needs the target's __main__ running; the agent its hello.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stack = controller.output(&["stack"]);
            let status = controller.output(&["status"]);
            let agent_ready = status.contains("agent") && status.contains("ready");
            if stack.contains("in work_loop") && agent_ready == agent {
                break;
            }
            assert!(Instant::now() < deadline, "not ready: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
        controller
    }

    fn client(&self) -> Command {
        let mut command = Command::new(example_exe("client"));
        command
            .args(["--session", "bench"])
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("HELI_PYTHON", python())
            .env_remove("RUST_LOG");
        command
    }

    fn output(&self, args: &[&str]) -> String {
        let out = self
            .client()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `client attach` in a pseudo-terminal of its own: how long from its
    /// start to pdb's prompt; then `q`, and the client's end.
    fn attach(&self) -> Duration {
        let mut command = self.client();
        command.arg("attach");
        let start = Instant::now();
        let process = PtyProcess::new(command).unwrap();
        let mut pty = process.get_file_handle().unwrap();
        let mut seen = Vec::new();
        read_until(&mut pty, &mut seen, Some("(Pdb) "));
        let took = start.elapsed();
        pty.write_all(b"q\n").unwrap();
        read_until(&mut pty, &mut seen, None);
        let status = process.wait().unwrap();
        assert!(
            matches!(status, rexpect::process::WaitStatus::Exited(_, 0)),
            "{status:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        took
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the terminal `pty` into `seen` until its text without escape
/// sequences holds `needle`, or (`None`) until its end.
fn read_until(pty: &mut File, seen: &mut Vec<u8>, needle: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buffer = [0; 4096];
    loop {
        if let Some(needle) = needle {
            if plain_text(seen).contains(needle) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in 30 s: {}",
            String::from_utf8_lossy(seen)
        );
        let mut fds = [PollFd::new(pty.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(err) => panic!("poll: {err}"),
        }
        match pty.read(&mut buffer) {
            // Linux says EIO once the terminal's other side is closed.
            Ok(0) => break,
            Err(err) if err.raw_os_error() == Some(libc::EIO) => break,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => panic!("read: {err}"),
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
    }
    assert!(
        needle.is_none(),
        "the client ended before {needle:?}: {}",
        String::from_utf8_lossy(seen)
    );
}

/// `bytes` as text without the terminal's escape sequences (`ESC [ ... final`).
fn plain_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&c) {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn attach(rounds: usize) {
    let through_agent = Controller::start(true);
    let through_ptrace = Controller::start(false);
    let (mut agent, mut ptrace) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            agent.push(through_agent.attach());
            ptrace.push(through_ptrace.attach());
        } else {
            ptrace.push(through_ptrace.attach());
            agent.push(through_agent.attach());
        }
    }
    let profile = if common::profile_dir().ends_with("release") {
        "release"
    } else {
        "debug"
    };
    println!(
        "\n`client attach` ({profile} build) in a pseudo-terminal, start to `(Pdb) `, \
         examples/target.py, in turns (kernel ptrace_scope: {})",
        heli::grant::PtraceScope::current()
            .map(|scope| scope.to_string())
            .unwrap_or_else(|err| err.to_string())
    );
    println!("| path | runs | median ms | p90 ms |");
    println!("|---|---|---|---|");
    let (median, p90) = median_p90(agent);
    println!("| through the agent (`--agent always`) | {rounds} | {median:.1} | {p90:.1} |");
    let (median, p90) = median_p90(ptrace);
    println!("| through the ptrace grant (`pdb -p`) | {rounds} | {median:.1} | {p90:.1} |");
}

fn main() {
    let bench = benchmarking();
    let dir = tempfile::tempdir().unwrap();
    let host = AgentHost::in_dir(dir.path()).unwrap();
    let uncached = AgentHost::in_dir(dir.path()).unwrap();
    let script = dir.path().join("sleeper.py");
    std::fs::write(&script, SLEEPER).unwrap();
    start_up(&host, &uncached, if bench { 100 } else { 2 });
    idle_and_memory(
        &host,
        &script,
        Duration::from_secs(if bench { 10 } else { 1 }),
        if bench { 5 } else { 1 },
    );
    attach(if bench { 20 } else { 1 });
    let _ = std::io::stdout().flush();
}
