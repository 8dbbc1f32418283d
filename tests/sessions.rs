//! The Unix socket transport end to end: sessions and their listing, grants
//! tied to connections, take-over, spoofed grants, a killed controller.

use std::process::{Command, Stdio};

use heli::core::Processes;
use nix::sys::signal::Signal;

use crate::util::{
    alive, end, example, python314, python_saying, run, saying, serial, wait_for, Controller, Kind,
    SOON,
};

/// A Python process that connects to the session socket, asks for a grant
/// for itself, is granted (`READY`) and then does what `then` says: `hold`
/// keeps the connection until killed, `close` closes it and stays alive.
fn grant_holder(controller: &Controller, then: &str) -> std::process::Child {
    let socket = controller.fifo_dir.join("test.sock");
    let code = format!(
        r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect({socket:?})
s.sendall(f"GRANT_ACCESS {{os.getpid()}}\n".encode())
print(s.makefile().readline().strip(), flush=True)
if {then:?} == "close":
    s.close()
time.sleep(600)
"#,
        socket = socket.to_str().unwrap(),
    );
    let (holder, reply) = python_saying(&code);
    assert_eq!(reply, "READY");
    holder
}

/// `STATUS` over the socket, as (holder, whole line).
fn status(controller: &Controller) -> (Option<u32>, String) {
    let line = controller.session().ask("STATUS\n");
    let holder = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("holder="))
        .and_then(|h| h.parse().ok());
    (holder, line)
}

fn holder_becomes(controller: &Controller, expected: Option<u32>) {
    wait_for(&format!("grant holder {expected:?}"), SOON, || {
        status(controller).0 == expected
    });
}

#[test]
fn a_grant_ends_when_its_connection_closes_or_its_client_dies() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Socket);

    let holder = grant_holder(&controller, "hold");
    holder_becomes(&controller, Some(holder.id()));
    // The client crashes: its connection closes, the grant is revoked.
    end(holder);
    holder_becomes(&controller, None);
    wait_for("the revocation", SOON, || {
        controller.log_text().contains("closed: revoking its grant")
    });

    // The client closes its connection but lives on: revoked all the same.
    let closer = grant_holder(&controller, "close");
    holder_becomes(&controller, None);
    assert!(alive(closer.id()));
    end(closer);
}

#[test]
fn a_second_client_is_refused_unless_it_takes_over() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Socket);
    let holder = grant_holder(&controller, "hold");

    let (status_code, _, stderr) = controller.run_client(&["attach"]);
    assert_eq!(status_code.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "target is being debugged by client PID {}",
            holder.id()
        )),
        "{stderr}"
    );
    // --force takes it over; pdb runs (and ends at once: stdin is empty).
    let (status_code, stdout, stderr) = controller.run_client(&["attach", "--force"]);
    assert!(stdout.contains("Permission granted"), "{stdout}{stderr}");
    assert!(stdout.contains("Debugger detached"), "{stdout}{stderr}");
    let _ = status_code;
    // The take-over is in the log; the old holder's grant is gone.
    assert!(
        controller.log_text().contains("taking it over from PID"),
        "{}",
        controller.log_text()
    );
    assert_ne!(status(&controller).0, Some(holder.id()));
    end(holder);
}

#[test]
fn grants_for_processes_other_than_the_client_or_its_descendants_are_refused() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Socket);
    let mut session = controller.session();
    let child = Command::new("sleep").arg("100").spawn().unwrap();
    let mut ask = |request: String| session.ask(&format!("{request}\n"));
    // Not ours: init, our parent. (The controller and its target are this
    // test's descendants: the transport's own tests cover unrelated pids.)
    for pid in [1, std::os::unix::process::parent_id()] {
        let reply = ask(format!("GRANT_ACCESS {pid} FORCE"));
        assert!(
            reply.starts_with(&format!("ERROR: GRANT_ACCESS {pid} refused")),
            "{pid}: {reply}"
        );
    }
    // Ours: ourselves and our child.
    assert_eq!(
        ask(format!("GRANT_ACCESS {}", std::process::id())),
        "READY\n"
    );
    assert_eq!(ask(format!("GRANT_ACCESS {} FORCE", child.id())), "READY\n");
    end(child);
}

/// The controller's rule against a hundred processes that are not the
/// client's: init, the test's parent, an orphan that was its descendant, a
/// reaped child, live processes older than the test, and pids above
/// `pid_max`. Each gets the same exact refusal, in the request's dialect;
/// the connection goes on, and nobody holds the grant.
#[test]
fn a_hundred_grants_for_processes_not_the_clients_are_refused() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Socket);
    let me = std::process::id();
    let my_start = start_time(me).unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);

    // Our parent, init, and a process that was our descendant until its
    // parent exited (it is init's, or a subreaper's, now).
    let mut pids = vec![1, std::os::unix::process::parent_id()];
    let mut orphaner = Command::new("sh");
    orphaner.args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"]);
    let (mut orphaner, line) = saying(orphaner);
    orphaner.wait().unwrap();
    let orphan: u32 = line.parse().unwrap();
    pids.push(orphan);
    // A child of ours that ended and was reaped.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    pids.push(gone_pid);
    // Live processes older than us: none of them can descend from us.
    let older: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid: &u32| pid != me && start_time(pid).is_some_and(|start| start < my_start))
        .collect();
    let mut shuffled: Vec<(u64, u32)> = older.into_iter().map(|pid| (rng.next(), pid)).collect();
    shuffled.sort_unstable();
    pids.extend(shuffled.into_iter().take(40).map(|(_, pid)| pid));
    // Pids that no process can have (above pid_max).
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    while pids.len() < 100 {
        let span = u64::from(i32::MAX as u32 - pid_max);
        pids.push(pid_max + 1 + (rng.next() % span) as u32);
    }
    assert_eq!(pids.len(), 100);

    let mut session = controller.session();
    let mut ask = |request: &str| session.ask(request);
    let refusal = |pid: u32| {
        format!(
            "ERROR: GRANT_ACCESS {pid} refused: it must be your own process or one of its \
             descendants (you are PID {me})\n"
        )
    };
    for (n, pid) in pids.iter().enumerate() {
        let (line, expected) = if n % 2 == 0 {
            (format!("GRANT_ACCESS {pid}\n"), refusal(*pid))
        } else {
            (
                format!("grant_access {pid} force\n"),
                refusal(*pid).replacen("ERROR:", "error :", 1),
            )
        };
        assert_eq!(ask(&line), expected, "pid {pid} (seed {seed})");
    }
    let _ = Command::new("kill").arg(orphan.to_string()).status();
    // The connection still works, and nobody holds the grant.
    assert!(ask("GET_TARGET_PID\n").starts_with("TARGET_PID "));
    assert_eq!(status(&controller).0, None, "seed {seed}");
    // A peer's refusals (and its bad requests) log a few lines, then are
    // only counted: 100 refused grants and 1,000 bad lines do not become
    // 1,100 warnings.
    for n in 0..1000 {
        assert!(ask(&format!("NO_SUCH_REQUEST {n}\n")).starts_with("ERROR: "));
    }
    warned_up_to_the_limit(&controller, |line| {
        line.contains("refused GRANT_ACCESS") || line.contains("bad request")
    });
}

/// The controller's log has as many of the warnings `is_warning` picks as
/// one key may log ([`heli::core::log_limit::PER_KEY`]), the last saying
/// that more are held back.
fn warned_up_to_the_limit(controller: &Controller, is_warning: impl Fn(&str) -> bool) {
    let log = controller.log_text();
    let warned = log
        .lines()
        .filter(|line| is_warning(line))
        .collect::<Vec<_>>();
    assert_eq!(
        warned.len(),
        heli::core::log_limit::PER_KEY as usize,
        "{log}"
    );
    assert!(warned.last().unwrap().contains("held back"), "{log}");
}

/// When process `pid` started, in clock ticks after boot.
fn start_time(pid: u32) -> Option<u64> {
    let pid = heli::core::Pid::new(pid)?;
    heli::proc::ProcFs
        .identity(pid)
        .ok()
        .flatten()
        .map(|id| id.start_time)
}

/// A small xorshift generator: no dependency, seed printed on failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn sessions_are_listed_chosen_and_cleaned() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        Command::new(example("controller"))
            .args(["--name", name])
            .arg("examples/target.py")
            .current_dir(crate::util::repo())
            .env("XDG_RUNTIME_DIR", dir.path())
            .env("HELI_PYTHON", python314())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let client = |args: &[&str]| {
        let mut client = Command::new(example("client"));
        client.args(args).env("XDG_RUNTIME_DIR", dir.path());
        let (status, out, err) = run(client);
        (status.code(), out, err)
    };
    let runtime = dir.path().join("heli");
    let web = start("web");
    wait_for("session web", SOON, || runtime.join("web.sock").exists());
    // One session: picked without --session.
    let (code, out, err) = client(&["pid"]);
    assert_eq!(code, Some(0), "{err}");
    let web_target: u32 = out.trim().parse().unwrap();

    let worker = start("worker");
    wait_for("session worker", SOON, || {
        runtime.join("worker.sock").exists()
    });
    // Two: the client asks which.
    let (code, _, err) = client(&["pid"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("Several sessions are running (web, worker)") || err.contains("(worker, web)"),
        "{err}"
    );
    assert!(err.contains("--session NAME"), "{err}");
    let (code, out, _) = client(&["--session", "web", "pid"]);
    assert_eq!(
        (code, out.trim().parse::<u32>().unwrap()),
        (Some(0), web_target)
    );

    // A dead controller's socket, and a file that is no session.
    end(worker);
    std::fs::write(runtime.join("notes.sock"), "not a socket").unwrap();
    let (code, out, err) = client(&["--list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("web"), "{out}");
    assert!(out.contains("examples/target.py"), "{out}");
    assert!(out.contains("running"), "{out}");
    assert!(!out.contains("worker"), "{out}");
    assert!(
        err.contains("removed the stale socket of session worker"),
        "{err}"
    );
    assert!(err.contains("notes.sock"), "{err}");
    assert!(!runtime.join("worker.sock").exists());
    assert!(runtime.join("notes.sock").exists());

    // Status in words.
    let (code, out, err) = client(&["status"]);
    assert_eq!(code, Some(0), "{err}");
    for field in [
        "session",
        "target PID",
        "command",
        "uptime",
        "granter",
        "ptrace_scope",
        "grant holder",
    ] {
        assert!(out.contains(field), "{field}: {out}");
    }
    end(web);
}

#[test]
fn a_killed_controller_takes_its_target_along_and_its_session_is_replaced() {
    let _serial = serial();
    let mut controller = Controller::demo(Kind::Socket);
    let target = controller.target_pid();
    controller.signal(Signal::SIGKILL as i32);
    controller.wait();
    wait_for("target killed with its controller", SOON, || !alive(target));
    assert!(
        controller.fifo_dir.join("test.sock").exists(),
        "the stale socket is left"
    );
    let (code, _, stderr) = controller.run_client(&["pid"]);
    assert_eq!(code.code(), Some(3), "{stderr}");
    // The next controller with that name replaces the stale socket.
    let next = Command::new(example("controller"))
        .args(["--name", "test", "--", "sleep", "100"])
        .env("XDG_RUNTIME_DIR", controller.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the new controller serves", SOON, || {
        controller.run_client(&["pid"]).0.success()
    });
    end(next);
}

#[test]
fn failed_grants_a_peer_asks_for_log_a_few_warnings_only() {
    let _serial = serial();
    // Remote exec into a program that is not Python: every grant fails,
    // with or without Yama.
    let controller = Controller::start_on(
        Kind::Socket,
        &[
            "--granter",
            "yama",
            "--grant-method",
            "remote-exec",
            "--",
            "sleep",
            "600",
        ],
    );
    let me = std::process::id();
    let mut session = controller.session();
    for _ in 0..30 {
        let reply = session.ask(&format!("GRANT_ACCESS {me}\n"));
        assert!(reply.starts_with("ERROR: Grant failed: "), "{reply}");
    }
    warned_up_to_the_limit(&controller, |line| line.contains("grant for PID"));
}
