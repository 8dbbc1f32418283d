//! The longest `STATUS` answer time while a grant waits on a frozen target
//! (issue 13: a grant used to block the whole controller).
//!
//! `cargo bench --bench frozen` runs the release controller example with
//! `--granter yama --transport socket` on `examples/target.py`; one client
//! connection asks `STATUS` every 10-20 ms, and the bench times each answer:
//!
//! - idle: 5 s of a controller with nothing else to do;
//! - frozen grant: the target's cgroup is frozen (as `docker pause` does),
//!   another connection asks for a grant, and the asking goes on until the
//!   grant is answered and 0.5 s after. The group is thawed 0.5 s after the
//!   grant's answer, or 6 s after it was asked for if no answer came by then
//!   (as the issue reproduced it).
//!
//! It prints, for each, the median, 99th percentile and maximum answer time,
//! how many answers took longer than a client waits (2 s), and how long the
//! grant took to be answered, over 5 rounds (`HELI_BENCH_FROZEN_ROUNDS`).
//!
//! Side by side with a peer, another build of the controller example, run in
//! turns with heli's in the same rounds: its path comes from
//! `HELI_BENCH_PEER_CONTROLLER`. For the previous release (before the fix):
//!
//! ```text
//! git worktree add /tmp/heli-prev b72d773
//! (cd /tmp/heli-prev && cargo build --release --example controller)
//! HELI_BENCH_PEER_CONTROLLER=/tmp/heli-prev/target/release/examples/controller \
//!     cargo bench --bench frozen
//! ```
//!
//! Since the supervised-tree work, heli refuses a grant on a process that is
//! frozen when asked at once ("is frozen (cgroup freezer)"): its grant time
//! here is that refusal's, and the frozen window the 0.5 s after it.
//!
//! Without it, the peer is skipped. It needs root and a cgroup freezer (v1,
//! else v2); without one it fails, saying so. On a kernel
//! without Yama the injected `prctl` fails with EINVAL: the grant then ends
//! in an error reply once it runs, after the thaw.
//!
//! Under `cargo test` it makes one short round against heli alone (the
//! group thawed after 0.3 s), to keep the bench code working.

#![allow(missing_docs)]

mod common;
#[allow(dead_code)]
#[path = "../tests/freezer.rs"]
mod freezer;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{benchmarking, controller_exe, percentiles, spawn_controller};
use freezer::Freezer;

/// How long a client waits for an answer: one that takes longer is a
/// timeout to the person asking.
const CLIENT_WAIT: Duration = Duration::from_secs(2);

/// How long the bench waits for any answer before it gives up on it.
const GIVE_UP: Duration = Duration::from_secs(30);

/// How the rounds go.
struct Plan {
    rounds: usize,
    /// The idle phase's length.
    idle: Duration,
    /// The frozen group is thawed this long after the grant was asked for,
    /// if it has not been answered by then.
    thaw_after: Duration,
    /// How long the asking goes on after the grant's answer (the group
    /// still frozen for that long, if it was).
    after: Duration,
}

impl Plan {
    fn choose() -> Plan {
        if benchmarking() {
            let rounds = std::env::var("HELI_BENCH_FROZEN_ROUNDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(5);
            Plan {
                rounds,
                idle: Duration::from_secs(5),
                thaw_after: Duration::from_secs(6),
                after: Duration::from_millis(500),
            }
        } else {
            Plan {
                rounds: 1,
                idle: Duration::from_millis(300),
                thaw_after: Duration::from_millis(300),
                after: Duration::from_millis(100),
            }
        }
    }
}

/// A controller on `examples/target.py`, on a session socket of its own.
struct Running {
    child: Child,
    socket: PathBuf,
    target: u32,
    /// The process grants go to: a child of the bench's (never the
    /// controller's own).
    grantee: Child,
    _dir: tempfile::TempDir,
}

impl Running {
    fn start(exe: &Path) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("heli/bench.sock");
        let child = spawn_controller(
            exe,
            &[
                "--granter",
                "yama",
                "--transport",
                "socket",
                "--name",
                "bench",
                "examples/target.py",
            ],
            dir.path(),
            "error",
        );
        let grantee = Command::new("sleep")
            .arg("600")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut running = Running {
            child,
            socket,
            target: 0,
            grantee,
            _dir: dir,
        };
        let started = Instant::now();
        let reply = loop {
            if let Some(reply) = running
                .connect()
                .and_then(|mut c| c.ask("GET_TARGET_PID").0)
            {
                break reply;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{} never answered",
                exe.display()
            );
            thread::sleep(Duration::from_millis(5));
        };
        running.target = reply
            .trim()
            .strip_prefix("TARGET_PID ")
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("GET_TARGET_PID: {reply}"));
        // Let the interpreter reach its steady state.
        thread::sleep(Duration::from_millis(300));
        running
    }

    fn connect(&self) -> Option<Connection> {
        let stream = UnixStream::connect(&self.socket).ok()?;
        stream.set_read_timeout(Some(GIVE_UP)).unwrap();
        Some(Connection(BufReader::new(stream)))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in [&mut self.child, &mut self.grantee] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One client connection, a request at a time.
struct Connection(BufReader<UnixStream>);

impl Connection {
    /// Sends `request` and returns its answer (`None`: none within
    /// [`GIVE_UP`], or the connection broke) and how long it took.
    fn ask(&mut self, request: &str) -> (Option<String>, Duration) {
        let asked = Instant::now();
        if self
            .0
            .get_mut()
            .write_all(format!("{request}\n").as_bytes())
            .is_err()
        {
            return (None, asked.elapsed());
        }
        let mut line = String::new();
        let answer = match self.0.read_line(&mut line) {
            Ok(n) if n > 0 => Some(line),
            _ => None,
        };
        (answer, asked.elapsed())
    }
}

/// What one connection's `STATUS` requests saw.
#[derive(Default)]
struct Answers {
    /// How long each answered request took.
    times: Vec<Duration>,
    /// Requests given up on without an answer.
    unanswered: usize,
}

impl Answers {
    /// Asks `STATUS` on `connection` to `running` every 10-20 ms until
    /// `done()`; a request given up on costs the connection (its answer
    /// could still come): the next goes on a new one.
    fn ask_until(
        &mut self,
        running: &Running,
        connection: &mut Connection,
        mut done: impl FnMut() -> bool,
    ) {
        let mut n = 0u64;
        while !done() {
            let (answer, took) = connection.ask("STATUS");
            match answer {
                Some(line) => {
                    assert!(line.starts_with("STATUS "), "STATUS: {line}");
                    self.times.push(took);
                }
                None => {
                    self.unanswered += 1;
                    *connection = running.connect().expect("connect");
                }
            }
            // 10 to 20 ms apart, spread evenly.
            n += 1;
            thread::sleep(Duration::from_millis(10 + (n * 7) % 11));
        }
    }

    fn over_client_wait(&self) -> usize {
        self.times.iter().filter(|&&t| t > CLIENT_WAIT).count() + self.unanswered
    }
}

/// One controller's figures over all rounds.
#[derive(Default)]
struct Figures {
    idle: Answers,
    frozen: Answers,
    /// How long each grant took to be answered, and the answer (`None`:
    /// none within [`GIVE_UP`]).
    grants: Vec<(Duration, Option<String>)>,
}

/// One round on `exe`: idle, then a grant on the frozen target.
fn round(exe: &Path, plan: &Plan, figures: &mut Figures) -> Result<(), String> {
    let running = Running::start(exe);
    let mut asking = running.connect().expect("connect");

    let idle_until = Instant::now() + plan.idle;
    figures
        .idle
        .ask_until(&running, &mut asking, || Instant::now() >= idle_until);

    let freezer = Freezer::new("bench-frozen");
    freezer.add(running.target);
    freezer.set(true);
    // The grant, on a connection of its own; it thaws the group after its
    // answer (or at `thaw_after` without one), then reports.
    let (done_tx, done) = mpsc::channel();
    let mut granting = running.connect().expect("connect");
    let request = format!("GRANT_ACCESS {}", running.grantee.id());
    let (thaw_after, after) = (plan.thaw_after, plan.after);
    let freezer_ref = &freezer;
    let (grant, finished) = thread::scope(|scope| {
        let grant = scope.spawn(move || {
            let asked = Instant::now();
            {
                let mut stream = granting.0.get_ref();
                stream.set_read_timeout(Some(thaw_after)).unwrap();
                stream
                    .write_all(format!("{request}\n").as_bytes())
                    .expect("send the grant");
            }
            let mut line = String::new();
            let mut thawed = false;
            let answer = loop {
                match granting.0.read_line(&mut line) {
                    Ok(n) if n > 0 => break Some(line),
                    Ok(_) => break None,
                    Err(_) if !thawed => {
                        // No answer by `thaw_after`: thaw, then wait on.
                        freezer_ref.set(false);
                        thawed = true;
                        let left = GIVE_UP.saturating_sub(asked.elapsed());
                        granting.0.get_ref().set_read_timeout(Some(left)).unwrap();
                    }
                    Err(_) => break None,
                }
            };
            let took = asked.elapsed();
            if !thawed {
                thread::sleep(after);
                freezer_ref.set(false);
            }
            let _ = done_tx.send(());
            (took, answer)
        });
        let mut finished: Option<Instant> = None;
        figures.frozen.ask_until(&running, &mut asking, || {
            if finished.is_none() && done.try_recv().is_ok() {
                finished = Some(Instant::now());
            }
            finished.is_some_and(|at| at.elapsed() >= after)
        });
        (grant.join().unwrap(), finished)
    });
    assert!(finished.is_some());
    figures.grants.push(grant);
    drop(freezer);
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// The table rows of one controller's figures.
fn rows(name: &str, figures: &Figures) {
    for (phase, answers) in [
        ("idle", &figures.idle),
        ("grant waiting on a frozen target", &figures.frozen),
    ] {
        let (median, p99, _) = percentiles(answers.times.clone());
        let max = answers.times.iter().max().copied().unwrap_or_default();
        let max = if answers.unanswered > 0 {
            format!("no answer within {} s", GIVE_UP.as_secs())
        } else {
            ms(max)
        };
        let grant = if phase == "idle" {
            "-".to_owned()
        } else {
            grant_times(&figures.grants)
        };
        println!(
            "| {name} | {phase} | {} | {median:.3} | {p99:.3} | {max} | {} | {grant} |",
            answers.times.len() + answers.unanswered,
            answers.over_client_wait()
        );
    }
}

/// The grants' answer times (median, and range) and what they said.
fn grant_times(grants: &[(Duration, Option<String>)]) -> String {
    let mut times: Vec<Duration> = grants.iter().map(|(took, _)| *took).collect();
    times.sort();
    let s = |d: &Duration| format!("{:.2}", d.as_secs_f64());
    let said: Vec<&str> = grants
        .iter()
        .map(|(_, answer)| match answer.as_deref() {
            None => "no answer",
            Some(a) if a.contains("frozen") => "error: frozen",
            Some(a) if a.contains("EINVAL") => "error: EINVAL (no Yama)",
            Some(a) if a.starts_with("READY") => "READY",
            Some(_) => "another error",
        })
        .collect();
    let mut kinds = said.clone();
    kinds.sort();
    kinds.dedup();
    format!(
        "{} s ({}-{} s), {}",
        s(&times[times.len() / 2]),
        s(&times[0]),
        s(times.last().unwrap()),
        kinds.join(", ")
    )
}

fn main() {
    let plan = Plan::choose();
    let heli = controller_exe();
    let peer = std::env::var_os("HELI_BENCH_PEER_CONTROLLER")
        .filter(|_| benchmarking())
        .map(PathBuf::from);
    let mut sides = vec![("heli", heli, Figures::default())];
    if let Some(peer) = peer {
        assert!(peer.exists(), "{} is missing", peer.display());
        sides.push(("peer", peer, Figures::default()));
    }
    for _ in 0..plan.rounds {
        for (_, exe, figures) in &mut sides {
            if let Err(why) = round(exe, &plan, figures) {
                println!("frozen bench skipped: {why} (it needs root and a cgroup freezer)");
                return;
            }
        }
    }

    println!(
        "\nSTATUS answer times, one request every 10-20 ms, {} round(s) of {} s idle and of a \
         grant on a frozen target ({} build)",
        plan.rounds,
        plan.idle.as_secs_f64(),
        if common::profile_dir().ends_with("release") {
            "release"
        } else {
            "debug"
        }
    );
    println!(
        "| controller | while | STATUS requests | median ms | p99 ms | max ms | over 2 s | grant \
         answered after |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, exe, figures) in &sides {
        rows(&format!("{name} ({})", exe.display()), figures);
    }
    if sides.len() == 1 {
        println!(
            "(peer skipped: set HELI_BENCH_PEER_CONTROLLER to a controller example to compare)"
        );
    }
    if !benchmarking() {
        // The smoke run's checks: heli answered everything, promptly.
        let heli = &sides[0].2;
        assert_eq!(heli.idle.over_client_wait(), 0);
        assert_eq!(heli.frozen.over_client_wait(), 0);
        assert!(heli.grants.iter().all(|(_, answer)| answer.is_some()));
    }
    let _ = std::io::stdout().flush();
}
