//! Native PEP 768: read-only stack dumps and grants by remote exec.
//!
//! `cargo bench --bench pep768` prints a table: the time to dump every
//! thread's stack of a Python 3.14 target with 1 thread (20 frames deep), 10
//! and 100 threads (the issue's target: < 1 ms for one thread of depth 20),
//! and the latency of a `prctl` run in a busy target by `sys.remote_exec`
//! (the fallback grant when ptrace injection is impossible). Under
//! `cargo test` it makes a few rounds only.

#![allow(missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use heli::grant::{remote_prctl, stack_dump};

use common::{benchmarking, percentiles, python, time_each};

/// A target with `threads` threads (the main one included), each `depth`
/// frames deep, sleeping in short steps; killed when dropped.
struct Target(Child);

impl Target {
    fn start(threads: usize, depth: usize, busy: bool) -> Target {
        let code = format!(
            r#"
import sys, threading, time
sys.setrecursionlimit(10000)
def leaf():
    while True:
        if {busy}:
            sum(range(100))
        else:
            time.sleep(0.05)
def nest(n):
    if n <= 1:
        leaf()
    nest(n - 1)
for _ in range({threads} - 1):
    threading.Thread(target=nest, args=({depth},), daemon=True).start()
print("ready", flush=True)
nest({depth})
"#,
            busy = if busy { "True" } else { "False" }
        );
        let mut child = Command::new(python())
            .args(["-c", &code])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        std::thread::sleep(Duration::from_millis(200));
        Target(child)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let rounds = if benchmarking() { 1000 } else { 5 };
    println!("\n{rounds} rounds per case");
    println!("| case | median ms | p99 ms |");
    println!("|---|---|---|");
    for threads in [1, 10, 100] {
        let target = Target::start(threads, 20, false);
        let pid = heli::core::Pid::new(target.0.id()).unwrap();
        let samples = time_each(
            rounds,
            || stack_dump(pid).unwrap(),
            |stacks| assert_eq!(stacks.len(), threads),
        );
        let (median, p99, _) = percentiles(samples);
        println!("| stack dump, {threads} thread(s), 20 frames each | {median:.3} | {p99:.3} |");
    }
    let target = Target::start(1, 5, true);
    let grants = if benchmarking() { 200 } else { 3 };
    let pid = heli::core::Pid::new(target.0.id()).unwrap();
    // PR_GET_DUMPABLE: a prctl that works without Yama, run by the target
    // itself, reported back: the same path as the grant.
    let samples = time_each(
        grants,
        || remote_prctl(pid, libc::PR_GET_DUMPABLE, 0, Duration::from_secs(5)).unwrap(),
        |dumpable| assert_eq!(dumpable, 1),
    );
    let (median, p99, _) = percentiles(samples);
    println!(
        "| prctl by remote exec in a busy target ({grants} rounds) | {median:.3} | {p99:.3} |"
    );
}
