//! The supervised tree, end to end with the client program (issue 14):
//!
//! - `client ps` on a tree of 100 processes (the target and 99 forked
//!   Python children);
//! - `client stack --all` on a target with 8 Python workers, in turns with
//!   `py-spy dump --subprocesses --pid TARGET` on the same tree in the same
//!   run (py-spy as users run it, which stops each process while it reads
//!   it, and with `--nonblocking`, which reads without stopping as heli
//!   does); the ratio of the medians;
//! - a verified grant (`GRANT_ACCESS <client> TARGET <pid>`, yama granter:
//!   the ptrace injection and its check) into a worker and into the target,
//!   in turns.
//!
//! `cargo bench --bench tree` prints the tables (the issue's aims: `ps`
//! <= 5 ms, `stack --all` <= 10 ms, a grant into a worker of the same order
//! as into the target, <= 1 ms at the median; never asserted). py-spy comes
//! from `$HELI_PY_SPY` or scripts/test.sh's install. Under `cargo test` it
//! runs a few rounds of each, to keep the bench code working.
//!
//! On a kernel without Yama the injected `prctl(PR_SET_PTRACER)` fails with
//! EINVAL: the grant rows then end in an `ERROR` reply instead of `READY`
//! after the same work (see `benches/grant.rs`).

#![allow(missing_docs)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{benchmarking, example_exe, percentiles, py_spy, python, spawn_controller, time_each};

/// A target that forks `argv[1]` Python children, each asleep in
/// `worker_sleeps` until its parent goes, then sleeps in `main_sleeps`.
const TREE: &str = r#"
import os, sys, time

def worker_sleeps():
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(0)

def main_sleeps():
    while True:
        time.sleep(0.5)

for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        worker_sleeps()
main_sleeps()
"#;

/// A controller (socket, yama granter) on [`TREE`] with `children`.
struct Running {
    child: Child,
    dir: tempfile::TempDir,
    target: u32,
    /// The target's children, as PS lists them.
    workers: Vec<u32>,
}

impl Running {
    fn start(children: usize) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("tree.py");
        std::fs::write(&script, TREE).unwrap();
        let count = children.to_string();
        let child = spawn_controller(
            &example_exe("controller"),
            &[
                "--name",
                "bench",
                "--granter",
                "yama",
                script.to_str().unwrap(),
                &count,
            ],
            dir.path(),
            "warn",
        );
        let mut running = Running {
            child,
            dir,
            target: 0,
            workers: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(tree) = running.ps() {
                let processes = tree["processes"].as_array().unwrap();
                let python = processes.iter().filter(|p| p["python"].is_string()).count();
                if processes.len() == children + 1 && python == children + 1 {
                    running.target = processes[0]["pid"].as_u64().unwrap() as u32;
                    running.workers = processes[1..]
                        .iter()
                        .map(|p| p["pid"].as_u64().unwrap() as u32)
                        .collect();
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the tree never grew to {children} children"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let every interpreter reach its sleep.
        std::thread::sleep(Duration::from_millis(500));
        running
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("heli/bench.sock")
    }

    /// A connection for requests line by line.
    fn connect(&self) -> Option<Connection> {
        let stream = UnixStream::connect(self.socket()).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .ok()?;
        Some(Connection(BufReader::new(stream)))
    }

    /// The PS reply's tree, once the controller answers.
    fn ps(&self) -> Option<serde_json::Value> {
        let reply = self.connect()?.ask("PS");
        serde_json::from_str(reply.strip_prefix("PS ")?).ok()
    }

    /// `client ARGS` against this controller, its stdout (it must succeed).
    fn client(&self, args: &[&str]) -> String {
        let out = Command::new(example_exe("client"))
            .args(["--session", "bench"])
            .args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .env("HELI_PYTHON", python())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "client {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The target dies with the controller (PR_SET_PDEATHSIG), its
        // children once they see their parent gone.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Connection(BufReader<UnixStream>);

impl Connection {
    fn ask(&mut self, request: &str) -> String {
        self.0
            .get_mut()
            .write_all(format!("{request}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }
}

fn row(what: &str, samples: Vec<Duration>) -> f64 {
    let n = samples.len();
    let (median, p99, max) = percentiles(samples);
    println!("| {what} | {n} | {median:.3} | {p99:.3} | {max:.3} |");
    median
}

fn ps_of_100(rounds: usize) {
    let running = Running::start(99);
    println!("\n`client ps`, a tree of 100 processes (the target and 99 Python children)");
    println!("| what | runs | median ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    let samples = time_each(
        rounds,
        || running.client(&["ps"]),
        |out| assert!(out.lines().count() >= 101, "{out}"),
    );
    row("`client ps` (text), end to end", samples);
    let samples = time_each(
        rounds,
        || running.client(&["ps", "--json"]),
        |out| assert!(out.contains(&running.workers[98].to_string())),
    );
    row("`client ps --json`, end to end", samples);
    let samples = time_each(
        rounds,
        || running.client(&["pid"]),
        |out| assert_eq!(out.trim(), running.target.to_string()),
    );
    row(
        "`client pid` (the client's start and one request), end to end",
        samples,
    );
    let samples = time_each(
        rounds,
        || running.connect().unwrap().ask("PS"),
        |reply| assert!(reply.starts_with("PS ")),
    );
    row("`PS` request alone (connect, reply)", samples);
}

fn stacks_of_8(rounds: usize) {
    let running = Running::start(8);
    let target = running.target.to_string();
    let py_spy = py_spy();
    let dump = |nonblocking: bool| {
        let mut command = Command::new(&py_spy);
        command.args(["dump", "--subprocesses", "--pid", &target]);
        if nonblocking {
            command.arg("--nonblocking");
        }
        let out = command.stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (mut heli, mut blocking, mut nonblocking) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        let out = running.client(&["stack", "--all"]);
        heli.push(start.elapsed());
        assert_eq!(out.matches("in worker_sleeps").count(), 8, "{out}");
        assert!(out.contains("in main_sleeps"), "{out}");
        for (samples, flag) in [(&mut blocking, false), (&mut nonblocking, true)] {
            let start = Instant::now();
            let out = dump(flag);
            samples.push(start.elapsed());
            assert_eq!(out.matches("worker_sleeps (tree.py").count(), 8, "{out}");
        }
    }
    println!("\n`stack --all`, a target with 8 Python workers (9 processes), in turns with py-spy");
    println!("| what | runs | median ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    let heli = row("`client stack --all`, end to end", heli);
    let blocking = row("`py-spy dump --subprocesses --pid TARGET`", blocking);
    let nonblocking = row(
        "`py-spy dump --subprocesses --nonblocking --pid TARGET`",
        nonblocking,
    );
    println!(
        "\npy-spy / heli, medians: {:.1} (py-spy stopping each process), {:.1} (--nonblocking)",
        blocking / heli,
        nonblocking / heli
    );
}

fn grants(rounds: usize) {
    let running = Running::start(8);
    let me = std::process::id();
    let mut connection = running.connect().unwrap();
    let worker = running.workers[3];
    let mut grant = |pid: u32| {
        let start = Instant::now();
        let reply = connection.ask(&format!("GRANT_ACCESS {me} TARGET {pid}"));
        let took = start.elapsed();
        // READY on a Yama kernel, the injected prctl's EINVAL without Yama.
        assert!(reply == "READY" || reply.contains("EINVAL"), "{reply}");
        // The same for withdrawing it (on the target, the granter always
        // clears the target's ptracer).
        let reply = connection.ask(&format!("REVOKE {me} TARGET {pid}"));
        assert!(reply == "READY" || reply.contains("EINVAL"), "{reply}");
        took
    };
    let (mut into_worker, mut into_target) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        into_worker.push(grant(worker));
        into_target.push(grant(running.target));
    }
    println!(
        "\nVerified grant, yama granter (kernel ptrace_scope: {}), in turns",
        heli::grant::PtraceScope::current().unwrap()
    );
    println!("| what | runs | median ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    row(
        "`GRANT_ACCESS <client> TARGET <worker>` -> reply",
        into_worker,
    );
    row(
        "`GRANT_ACCESS <client> TARGET <target>` -> reply",
        into_target,
    );
}

fn main() {
    let rounds = if benchmarking() { 200 } else { 2 };
    ps_of_100(rounds);
    stacks_of_8(if benchmarking() { 50 } else { 1 });
    grants(if benchmarking() { 1000 } else { 3 });
    let _ = std::io::stdout().flush();
}
