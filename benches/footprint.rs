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
//! - the controller's threads, idle.
//!
//! Side by side with a peer, another build of the controller example, whose
//! starts are run in turns with heli's: its path comes from
//! `HELI_BENCH_PEER_CONTROLLER` (see `benches/frozen.rs` for building the
//! previous release). Without it, the peer is skipped.
//!
//! Under `cargo test` it checks the same things briefly (1 start, 1 s idle,
//! no peer).

#![allow(missing_docs)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
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

/// Starts the controller `exe` and returns it with the time it took to
/// answer.
fn start(exe: &Path, target: &[&str]) -> (Running, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("heli/bench.sock");
    let args = [&["--name", "bench"][..], target].concat();
    let started = Instant::now();
    let child = spawn_controller(exe, &args, dir.path(), "warn");
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

/// Median, 90th percentile and max.
type Spread = (Duration, Duration, Duration);

fn spread(mut times: Vec<Duration>) -> Spread {
    times.sort();
    let p90 = times[(times.len() - 1) * 9 / 10];
    (times[times.len() / 2], p90, *times.last().unwrap())
}

/// What one controller build measured.
struct Figures {
    python_target: Spread,
    sleep_target: Spread,
    rss_ready: u64,
    rss_served: u64,
    idle_switches: u64,
    threads: usize,
}

/// Starts `exe` once more, serves 1,000 requests and watches it idle.
fn resident(exe: &Path, idle: Duration) -> (u64, u64, u64, usize) {
    let (running, _) = start(exe, &["examples/target.py"]);
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
    let threads = fs::read_dir(format!("/proc/{pid}/task")).unwrap().count();
    (rss_ready, rss_served, idle_switches, threads)
}

fn main() {
    let (starts, idle) = if benchmarking() {
        (20, Duration::from_secs(10))
    } else {
        (1, Duration::from_secs(1))
    };
    let peer = std::env::var_os("HELI_BENCH_PEER_CONTROLLER")
        .filter(|_| benchmarking())
        .map(PathBuf::from);
    let mut exes = vec![("heli", controller_exe())];
    if let Some(peer) = peer {
        assert!(peer.exists(), "{} is missing", peer.display());
        exes.push(("peer", peer));
    }
    // Starts in turns, so that both sides meet the same machine.
    let times = |target: &[&str]| {
        let mut times = vec![Vec::new(); exes.len()];
        for _ in 0..starts {
            for (side, (_, exe)) in exes.iter().enumerate() {
                times[side].push(start(exe, target).1);
            }
        }
        times.into_iter().map(spread).collect::<Vec<_>>()
    };
    let python_target = times(&["examples/target.py"]);
    let sleep_target = times(&["--", "sleep", "600"]);
    let figures: Vec<Figures> = exes
        .iter()
        .enumerate()
        .map(|(side, (_, exe))| {
            let (rss_ready, rss_served, idle_switches, threads) = resident(exe, idle);
            Figures {
                python_target: python_target[side],
                sleep_target: sleep_target[side],
                rss_ready,
                rss_served,
                idle_switches,
                threads,
            }
        })
        .collect();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let times = |(median, p90, max): Spread| {
        format!("{:.2} / {:.2} / {:.2} ms", ms(median), ms(p90), ms(max))
    };
    let mb = |kib: u64| format!("{:.2} MB", kib as f64 / 1024.0);
    println!(
        "\ncontroller footprint ({} build, {starts} starts)",
        if profile_dir().ends_with("release") {
            "release"
        } else {
            "debug"
        }
    );
    let names: Vec<&str> = exes.iter().map(|(name, _)| *name).collect();
    println!("| measure | {} | target |", names.join(" | "));
    println!("|---|{}---|", "---|".repeat(names.len()));
    let row = |measure: &str, cell: &dyn Fn(&Figures) -> String, target: &str| {
        let cells: Vec<String> = figures.iter().map(cell).collect();
        println!("| {measure} | {} | {target} |", cells.join(" | "));
    };
    row(
        "start to ready, target.py, median / p90 / max",
        &|f| times(f.python_target),
        "<= 5 ms",
    );
    row(
        "start to ready, `sleep`, median / p90 / max",
        &|f| times(f.sleep_target),
        "<= 5 ms",
    );
    row("RSS when ready", &|f| mb(f.rss_ready), "<= 3 MB");
    row("RSS after 1,000 requests", &|f| mb(f.rss_served), "<= 3 MB");
    row(
        &format!("context switches idle over {} s", idle.as_secs()),
        &|f| f.idle_switches.to_string(),
        "0",
    );
    row("threads, idle", &|f| f.threads.to_string(), "");
    if exes.len() == 1 && benchmarking() {
        println!(
            "(peer skipped: set HELI_BENCH_PEER_CONTROLLER to a controller example to compare)"
        );
    }
}
