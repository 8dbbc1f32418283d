//! The controller's footprint: start to ready, memory, idle wake-ups.
//!
//! `cargo bench --bench footprint` runs the release controller example on
//! `examples/target.py` (Unix socket transport) and prints a table:
//!
//! - start to ready: from spawning the controller until its socket answers a
//!   `STATUS` request (median, 90th percentile and max of 20 starts; on two
//!   cores the times cluster around 2-3 ms, and a start that had to wait for
//!   a CPU beside its busy Python target takes a 4 ms scheduler tick more);
//! - RSS of the controller once ready and after 1,000 requests;
//! - context switches of all the controller's threads over 10 s without a
//!   request (no periodic wake-ups: 0 expected).
//!
//! Under `cargo test` it checks the same things briefly (1 start, 1 s idle).

#![allow(missing_docs)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{benchmarking, controller_exe, profile_dir, spawn_controller};

struct Running {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status(socket: &PathBuf) -> Option<String> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"STATUS\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.starts_with("STATUS").then_some(line)
}

/// Starts a controller and returns it with the time it took to answer.
fn start(target: &[&str]) -> (Running, Duration) {
    let exe = controller_exe();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("heli/bench.sock");
    let args = [&["--name", "bench"][..], target].concat();
    let started = Instant::now();
    let child = spawn_controller(&exe, &args, dir.path(), "warn");
    let running = Running {
        child,
        socket,
        _dir: dir,
    };
    loop {
        if status(&running.socket).is_some() {
            return (running, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "controller never ready"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn rss_kib(pid: u32) -> u64 {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Voluntary plus involuntary context switches of every thread of `pid`.
fn switches(pid: u32) -> u64 {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|task| {
            let text = fs::read_to_string(task.path().join("status")).unwrap_or_default();
            text.lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches")
                        || l.starts_with("nonvoluntary_ctxt_switches")
                })
                .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn main() {
    let (starts, idle) = if benchmarking() {
        (20, Duration::from_secs(10))
    } else {
        (1, Duration::from_secs(1))
    };
    let spread = |target: &[&str]| {
        let mut times: Vec<Duration> = (0..starts).map(|_| start(target).1).collect();
        times.sort();
        let p90 = times[(times.len() - 1) * 9 / 10];
        (times[times.len() / 2], p90, *times.last().unwrap())
    };
    let python_target = spread(&["examples/target.py"]);
    let sleep_target = spread(&["--", "sleep", "600"]);
    let (running, _) = start(&["examples/target.py"]);
    let pid = running.child.id();
    let rss_ready = rss_kib(pid);
    for _ in 0..1000 {
        status(&running.socket).unwrap();
    }
    let rss_served = rss_kib(pid);
    // Settle, then watch it idle.
    std::thread::sleep(Duration::from_millis(200));
    let before = switches(pid);
    std::thread::sleep(idle);
    let idle_switches = switches(pid) - before;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "\ncontroller footprint ({} build, {starts} starts)",
        if profile_dir().ends_with("release") {
            "release"
        } else {
            "debug"
        }
    );
    println!("| measure | heli | target |");
    println!("|---|---|---|");
    println!(
        "| start to ready, target.py, median / p90 / max | {:.2} / {:.2} / {:.2} ms | <= 5 ms |",
        ms(python_target.0),
        ms(python_target.1),
        ms(python_target.2)
    );
    println!(
        "| start to ready, `sleep`, median / p90 / max | {:.2} / {:.2} / {:.2} ms | <= 5 ms |",
        ms(sleep_target.0),
        ms(sleep_target.1),
        ms(sleep_target.2)
    );
    println!(
        "| RSS when ready | {:.2} MB | <= 3 MB |",
        rss_ready as f64 / 1024.0
    );
    println!(
        "| RSS after 1,000 requests | {:.2} MB | <= 3 MB |",
        rss_served as f64 / 1024.0
    );
    println!(
        "| context switches idle over {} s | {idle_switches} | 0 |",
        idle.as_secs()
    );
}
