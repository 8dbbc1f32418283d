//! A real gunicorn (from PyPI, installed by scripts/test.sh into a private
//! directory, run by Python 3.14) with sync workers serving HTTP on
//! 127.0.0.1 while the tree is listed, stacked and attached to; and the
//! same under churn (`--max-requests 5`).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rexpect::session::{spawn_with_options, Options};
use serde_json::Value;

use crate::tree::{
    client_ok, grants, listed, parent_of, pids, processes, ps, stack_sections, wait_announced,
    Leftovers,
};
use crate::util::{alive, python314, serial, temp_script, wait_for, Controller, Kind, SOON};
use crate::with_tool::py_spy;

/// The app (`/` answers its worker's pid, `/slow` hangs in `slow_handler`
/// after saying `slow PID`), shared with the Yama VM suite.
const APP: &str = include_str!("gunicorn_app.py");

/// Where scripts/test.sh installed gunicorn: `$HELI_GUNICORN_PATH`, else
/// its default directory.
fn gunicorn_path() -> PathBuf {
    let path = std::env::var_os("HELI_GUNICORN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::util::deps_dir().join("tools/gunicorn"));
    assert!(
        path.join("gunicorn/__init__.py").is_file(),
        "gunicorn not found in {}: run scripts/test.sh (it installs it) or set HELI_GUNICORN_PATH",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (free when asked).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:`port`, its body (`None` if no answer).
fn get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}

/// The worker pid a `GET /` was served by.
fn served_by(port: u16) -> Option<u32> {
    get(port, "/")?.trim().parse().ok()
}

/// gunicorn with `workers` sync workers and options `more` on a free port,
/// under a controller (socket) with `options`, and the port.
fn gunicorn(
    options: &[&str],
    workers: usize,
    more: &[&str],
) -> (Controller, u16, tempfile::TempDir) {
    let (dir, _) = temp_script("app.py", APP);
    let port = free_port();
    let python = python314();
    let bind = format!("127.0.0.1:{port}");
    let workers = workers.to_string();
    let mut args = options.to_vec();
    args.extend([
        "--",
        python.to_str().unwrap(),
        "-m",
        "gunicorn",
        "--workers",
        &workers,
        "--bind",
        &bind,
        // No arbiter timeout: a worker in pdb or in /slow is not killed,
        // and an idle worker wakes every 0.5 s.
        "--timeout",
        "0",
        "--no-control-socket",
        "--chdir",
        dir.path().to_str().unwrap(),
    ]);
    args.extend_from_slice(more);
    args.push("app:app");
    let path = gunicorn_path();
    let controller = Controller::start_with_env(
        Kind::Socket,
        &args,
        &[("PYTHONPATH", path.to_str().unwrap())],
    );
    (controller, port, dir)
}

/// The children of the target (the arbiter) that `ps --json` lists as
/// Python 3.14 processes.
fn workers_in(tree: &Value, arbiter: u32) -> Vec<u32> {
    processes(tree)
        .iter()
        .filter(|p| {
            p["parent"].as_u64() == Some(arbiter.into())
                && p["python"].as_str().is_some_and(|v| v.starts_with("3.14"))
        })
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect()
}

/// One gunicorn, three workers: listed, a hanging request's handler seen
/// in the worker serving it, py-spy and pdb reaching workers through their
/// grants while the others serve.
#[test]
fn gunicorn_workers_are_listed_stacked_and_attached_while_serving() {
    let _serial = serial();
    let (controller, port, _dir) = gunicorn(&[], 3, &[]);
    let mut leftovers = Leftovers::default();
    let arbiter = controller.target_pid();
    let mut tree = Value::Null;
    wait_for("gunicorn's 3 workers in ps, serving", SOON, || {
        tree = ps(&controller);
        workers_in(&tree, arbiter).len() == 3 && served_by(port).is_some()
    });
    leftovers.note(&tree);
    let workers = workers_in(&tree, arbiter);
    assert_eq!(pids(&tree)[0], arbiter, "{tree:#}");
    let first = &processes(&tree)[0];
    assert!(
        first["command"].as_str().unwrap().contains("gunicorn"),
        "{tree:#}"
    );
    assert!(
        first["python"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.14"),
        "{tree:#}"
    );
    for &worker in &workers {
        let process = listed(&tree, worker).unwrap();
        assert!(
            process["command"].as_str().unwrap().contains("gunicorn"),
            "{process}"
        );
        assert_eq!(parent_of(worker), Some(arbiter));
    }
    let text = client_ok(&controller, &["ps"]);
    for pid in std::iter::once(arbiter).chain(workers.iter().copied()) {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(pid.to_string().as_str())),
            "no row for {pid}:\n{text}"
        );
    }

    // A request hangs in slow_handler; the other workers go on serving.
    let mut slow_request = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(slow_request, "GET /slow HTTP/1.0\r\n\r\n").unwrap();
    let slow = wait_announced(&controller, "slow", 1)[0];
    assert!(workers.contains(&slow), "{slow} not among {workers:?}");
    for _ in 0..6 {
        let by = served_by(port).expect("a request not served while /slow hangs");
        assert!(workers.contains(&by) && by != slow, "served by {by}");
    }

    // stack --all: the hanging handler in the worker serving it only.
    let mut sections = Default::default();
    wait_for("slow_handler in stack --all", SOON, || {
        sections = stack_sections(&client_ok(&controller, &["stack", "--all"]));
        sections
            .get(&slow)
            .is_some_and(|(_, body)| body.contains("in slow_handler"))
    });
    for pid in std::iter::once(arbiter).chain(workers.iter().copied()) {
        let (header, body) = sections
            .get(&pid)
            .unwrap_or_else(|| panic!("{pid} not in stack --all: {sections:#?}"));
        assert!(header.contains("Python 3.14"), "{header}");
        assert_eq!(
            body.contains("in slow_handler"),
            pid == slow,
            "{pid}:\n{body}"
        );
        if pid == arbiter {
            assert!(
                header.starts_with(&format!("Process {arbiter} (target)")),
                "{header}"
            );
            assert!(body.contains("gunicorn/arbiter.py"), "{body}");
        } else {
            assert!(
                header.starts_with(&format!("Process {pid} (child of {arbiter})")),
                "{header}"
            );
            assert!(body.contains("gunicorn/workers/"), "{body}");
        }
    }
    // Source lines from the app's file, read by the client.
    assert!(
        sections[&slow].1.contains("    time.sleep(0.05)")
            || sections[&slow]
                .1
                .contains("    while os.getppid() == parent:"),
        "{}",
        sections[&slow].1
    );

    // py-spy through a grant on the hanging worker: it dumps that worker.
    let tool = format!("{} dump --pid {{pid}}", py_spy().display());
    let out = client_ok(
        &controller,
        &["attach", "--pid", &slow.to_string(), "--with", &tool],
    );
    assert!(out.contains(&format!("Process {slow}:")), "{out}");
    assert!(out.contains("slow_handler (app.py:"), "{out}");
    assert_eq!(grants(&controller), vec![]);

    // Real pdb in an idle worker, in a terminal: STATUS names the grant on
    // that worker, pdb runs in it (its pid), detaching withdraws the grant.
    let idle = *workers.iter().find(|&&w| w != slow).unwrap();
    let mut command = controller.client();
    command.args(["attach", "--pid", &idle.to_string()]);
    let options = Options::new()
        .timeout_ms(Some(30_000))
        .strip_ansi_escape_codes(true);
    let mut session = spawn_with_options(command, options).unwrap();
    if let Err(err) = session.exp_string("(Pdb) ") {
        panic!("no pdb prompt: {err}\n{}", controller.log_text());
    }
    // One grant, on that worker, held by this client (pdb's parent).
    let held = grants(&controller);
    assert_eq!(held.len(), 1, "{held:?}");
    let (process, client) = held[0];
    assert_eq!(process, idle, "{held:?}");
    let exe = std::fs::read_link(format!("/proc/{client}/exe")).unwrap();
    assert!(
        exe.ends_with("examples/client"),
        "the grant is held by {}",
        exe.display()
    );
    let tree = ps(&controller);
    assert_eq!(
        listed(&tree, idle).unwrap()["holder"].as_u64(),
        Some(client.into()),
        "{tree:#}"
    );
    assert!(
        listed(&tree, arbiter).unwrap()["holder"].is_null(),
        "{tree:#}"
    );
    session
        .send_line("p ('pid', __import__('os').getpid())")
        .unwrap();
    session.exp_string(&format!("('pid', {idle})")).unwrap();
    session.exp_string("(Pdb) ").unwrap();
    // The other workers serve while this one is stopped in pdb.
    let by = served_by(port).expect("no answer while a worker is in pdb");
    assert!(by != idle && by != slow, "served by {by}");
    session.send_line("q").unwrap();
    session.exp_string("Debugger detached").unwrap();
    session.exp_eof().unwrap();
    assert_eq!(grants(&controller), vec![]);
    // The worker serves again.
    wait_for("the detached worker serving", SOON, || {
        served_by(port) == Some(idle)
    });
    drop(slow_request);
}

/// gunicorn recycles its workers (`--max-requests 5`) under a request loop
/// while `ps`, `stack --all` and grants run: every failure says the worker
/// has gone, every grant is on a worker of this arbiter, and the controller
/// answers throughout. The granter the controller chooses (no-op on a
/// kernel without Yama): the grants' bookkeeping, and the tool run.
#[test]
fn gunicorn_workers_recycled_under_ps_stack_and_grants() {
    churn(&[]);
}

/// The same with the Yama granter, whose grant is a ptrace injection into
/// the worker: on a kernel without Yama the injected `prctl` fails with
/// EINVAL, and its error names the process it ran in, which must be the
/// worker asked for (or the worker had gone).
#[test]
fn gunicorn_workers_recycled_under_injected_grants() {
    churn(&["--granter", "yama"]);
}

/// The process a Yama grant's injected `prctl` ran in, from its error.
fn injected_into(reply: &str) -> Option<u32> {
    let (_, rest) = reply.split_once(") in PID ")?;
    rest.split_whitespace().next()?.parse().ok()
}

fn churn(options: &[&str]) {
    let _serial = serial();
    let (controller, port, _dir) = gunicorn(options, 2, &["--max-requests", "5"]);
    let leftovers = Arc::new(Mutex::new(Leftovers::default()));
    let arbiter = controller.target_pid();
    wait_for("gunicorn serving", SOON, || served_by(port).is_some());

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(Mutex::new(BTreeSet::new()));
    let requests = {
        let (stop, served, leftovers) = (stop.clone(), served.clone(), leftovers.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(by) = served_by(port) {
                    if served.lock().unwrap().insert(by) {
                        leftovers.lock().unwrap().note_pid(by);
                    }
                }
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };

    let me = std::process::id();
    let mut session = controller.session();
    let gone = |message: &str| {
        ["not running", "has exited", "gone", "exited"]
            .iter()
            .any(|word| message.contains(word))
    };
    let (mut granted, mut injected, mut refused, mut rounds, mut tools) = (0, 0, 0, 0, 0);
    let mut slowest_status = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        rounds += 1;
        let start = Instant::now();
        let status = session.ask("STATUS\n");
        slowest_status = slowest_status.max(start.elapsed());
        assert!(status.contains(" grants="), "{status}");

        let tree = ps(&controller);
        leftovers.lock().unwrap().note(&tree);
        assert_eq!(pids(&tree)[0], arbiter, "{tree:#}");
        let workers = workers_in(&tree, arbiter);

        let (status, out, err) = controller.run_client(&["stack", "--all"]);
        if status.success() {
            let sections = stack_sections(&out);
            assert!(sections.contains_key(&arbiter), "{out}");
        } else {
            assert_eq!(status.code(), Some(1), "{out}{err}");
            assert!(
                gone(&err),
                "stack --all failed, not for a gone worker: {err}"
            );
        }

        // A grant through the protocol on the newest worker listed.
        let Some(&worker) = workers.last() else {
            continue;
        };
        let reply = session.ask(&format!("GRANT_ACCESS {me} TARGET {worker}\n"));
        if reply.trim() == "READY" {
            granted += 1;
            // Granted on a worker of this arbiter, or on one gone since.
            let parent = parent_of(worker);
            assert!(
                parent.is_none() || parent == Some(arbiter),
                "granted {worker}, parent {parent:?}"
            );
            // Listed unless it exited meanwhile (its grant then dropped).
            let status = session.ask("STATUS\n");
            assert!(
                status.contains(&format!("{worker}:{me}")) || !alive(worker),
                "{status}"
            );
            let reply = session.ask(&format!("REVOKE {me} TARGET {worker}\n"));
            assert!(reply.trim() == "READY" || gone(&reply), "{reply}");
        } else if reply.contains("EINVAL") {
            // The injection ran: in that worker.
            injected += 1;
            assert_eq!(injected_into(&reply), Some(worker), "{reply}");
        } else {
            refused += 1;
            assert!(reply.starts_with("ERROR"), "{reply}");
            assert!(
                gone(&reply),
                "a grant refused, not for a gone worker: {reply}"
            );
        }

        // The same through the client, with a tool that reads the granted
        // process's parent.
        let (status, out, err) = controller.run_client(&[
            "attach",
            "--pid",
            &worker.to_string(),
            "--with",
            "sh -c 'grep PPid: /proc/$0/status || echo gone' {pid}",
        ]);
        if status.success() {
            tools += 1;
            assert!(
                out.contains(&format!("PPid:\t{arbiter}")) || out.contains("gone"),
                "{out}"
            );
        } else if err.contains("EINVAL") {
            assert_eq!(status.code(), Some(1), "{out}{err}");
            assert_eq!(injected_into(&err), Some(worker), "{err}");
        } else {
            assert_eq!(status.code(), Some(1), "{out}{err}");
            assert!(gone(&err), "attach refused, not for a gone worker: {err}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    requests.join().unwrap();
    let served = served.lock().unwrap().len();
    eprintln!(
        "churn {options:?}: {rounds} rounds, {served} workers served, {granted} grants, \
         {injected} injected (EINVAL: no Yama), {refused} refused (gone), {tools} tools run, \
         slowest STATUS {slowest_status:?}"
    );
    assert!(
        served >= 6,
        "workers were not recycled: {served} served requests"
    );
    assert!(
        granted + injected >= 3,
        "{granted} grants, {injected} injected in {rounds} rounds"
    );
    assert!(slowest_status < SOON);
    // Our grants were revoked or dropped with their workers.
    wait_for("no grant left", SOON, || grants(&controller).is_empty());
    assert_eq!(controller.target_pid(), arbiter);
}

/// With the agent (`--agent always`; at Yama scope 2/3 `auto` does the
/// same): each forked worker has an agent of its own, and pdb reaches a
/// worker through it, in that worker, while the others serve.
#[test]
fn gunicorn_workers_are_attached_through_their_own_agents() {
    let _serial = serial();
    let (controller, port, _dir) = gunicorn(&["--agent", "always"], 2, &[]);
    let arbiter = controller.target_pid();
    let mut workers = Vec::new();
    wait_for("gunicorn's 2 workers in ps, serving", SOON, || {
        workers = workers_in(&ps(&controller), arbiter);
        workers.len() == 2 && served_by(port).is_some()
    });
    let worker = workers[0];
    let mut command = controller.client();
    command.args(["attach", &worker.to_string()]);
    let options = Options::new()
        .timeout_ms(Some(30_000))
        .strip_ansi_escape_codes(true);
    let mut session = spawn_with_options(command, options).unwrap();
    session
        .exp_string(&format!("Attached through the agent in PID {worker}"))
        .unwrap_or_else(|err| panic!("{err}\n{}", controller.log_text()));
    session.exp_string("(Pdb) ").unwrap();
    // pdb stopped that worker: the other one serves meanwhile.
    let other = workers[1];
    wait_for("the other worker serving", SOON, || {
        served_by(port) == Some(other)
    });
    session
        .send_line("p ('pid', __import__('os').getpid())")
        .unwrap();
    session.exp_string(&format!("('pid', {worker})")).unwrap();
    session.exp_string("(Pdb) ").unwrap();
    session.send_line("q").unwrap();
    session.exp_string("Debugger detached").unwrap();
    session.exp_eof().unwrap();
    assert!(alive(worker) && alive(arbiter));
}
