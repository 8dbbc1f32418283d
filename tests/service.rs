//! The controller under a service manager and as a container's entrypoint:
//! systemd's `Type=notify` datagrams, read from a real `AF_UNIX` datagram
//! socket standing in for systemd's (a path and an abstract name), and a
//! client that attaches from inside the PID namespace of a controller that
//! is its PID 1 (`unshare`, then `nsenter`, as `docker exec` does).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    children_of, example, python314, repo, script, serial, wait_exit, wait_for, Controller, Kind,
    SOON,
};

/// A datagram socket standing in for systemd's notification socket.
struct Systemd {
    socket: UnixDatagram,
    /// What to put in `NOTIFY_SOCKET`.
    address: String,
}

/// A message, and when it came.
struct Message {
    text: String,
    at: Instant,
}

impl Systemd {
    /// Bound to a path in `dir`.
    fn at_path(dir: &Path) -> Systemd {
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        Systemd::with(socket, path.to_str().unwrap().to_owned())
    }

    /// Bound to an abstract name (`@name` in `NOTIFY_SOCKET`).
    fn abstract_named(name: &str) -> Systemd {
        let name = format!("heli-test-{name}-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        Systemd::with(socket, format!("@{name}"))
    }

    fn with(socket: UnixDatagram, address: String) -> Systemd {
        socket.set_read_timeout(Some(SOON)).unwrap();
        Systemd { socket, address }
    }

    /// The next message; fails the test after [`SOON`].
    fn next(&self) -> Message {
        let mut buffer = [0; 4096];
        let len = self
            .socket
            .recv(&mut buffer)
            .unwrap_or_else(|err| panic!("no message on {}: {err}", self.address));
        Message {
            text: String::from_utf8(buffer[..len].to_vec()).unwrap(),
            at: Instant::now(),
        }
    }

    /// The messages up to and with `last`, which the test waits for.
    fn until(&self, last: &str) -> Vec<Message> {
        let mut messages = Vec::new();
        loop {
            let message = self.next();
            let done = message.text == last;
            messages.push(message);
            if done {
                return messages;
            }
        }
    }
}

/// The messages' texts, the watchdog's pings left out.
fn told(messages: &[Message]) -> Vec<&str> {
    messages
        .iter()
        .map(|message| message.text.as_str())
        .filter(|text| *text != "WATCHDOG=1\n")
        .collect()
}

/// A target that prints which of systemd's variables it inherited, then
/// waits.
fn inheritance_printer(dir: &Path) -> String {
    let path = script(
        dir,
        "env.py",
        "import os, time\n\
         print(sorted(k for k in os.environ if k in ('NOTIFY_SOCKET', 'WATCHDOG_USEC', 'WATCHDOG_PID')), flush=True)\n\
         time.sleep(600)\n",
    );
    path.to_str().unwrap().to_owned()
}

fn type_notify(systemd: &Systemd, dir: &Path) {
    let _serial = serial();
    let target = inheritance_printer(dir);
    let mut controller = Controller::start_with_env(
        Kind::Socket,
        &[&target],
        &[
            ("NOTIFY_SOCKET", &systemd.address),
            // Pings every 150 ms.
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    let pid = controller.target_pid();
    let running = format!("STATUS=target PID {pid} running; restarts: 0; grants: none\n");
    let mut messages = systemd.until(&running);
    assert_eq!(told(&messages), ["READY=1\n", running.as_str()]);

    // A grant, held as long as its connection: the status line says who
    // holds it, and when it is gone.
    let me = std::process::id();
    let mut session = controller.session();
    assert_eq!(session.ask(&format!("GRANT_ACCESS {me}\n")), "READY\n");
    let granted =
        format!("STATUS=target PID {pid} running; restarts: 0; grants: client {me} on PID {pid}\n");
    messages.extend(systemd.until(&granted));
    drop(session);
    messages.extend(systemd.until(&running));
    assert_eq!(
        told(&messages),
        ["READY=1\n", &running, &granted, &running],
        "{}",
        controller.log_text()
    );

    // The watchdog: pinged every half of WATCHDOG_USEC.
    let first = messages[0].at;
    while messages.last().unwrap().at < first + Duration::from_millis(1200) {
        messages.push(systemd.next());
    }
    let pings: Vec<Instant> = messages
        .iter()
        .filter(|message| message.text == "WATCHDOG=1\n")
        .map(|message| message.at)
        .collect();
    assert!(pings.len() >= 5, "{} pings in 1.2 s", pings.len());
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        // Sent at 150 ms apart at the least; received a little later or
        // sooner than sent.
        assert!(gap >= Duration::from_millis(120), "pings {gap:?} apart");
    }
    assert!(
        controller.log_text().contains(&format!(
            "service manager at {} (watchdog: 300ms)",
            systemd.address
        )),
        "{}",
        controller.log_text()
    );

    // The target inherited none of systemd's variables.
    assert_eq!(controller.target_output(), "[]\n");

    // Stopping: said at once, then how it went.
    controller.signal(libc::SIGTERM);
    let ended = format!("STATUS=target PID {pid} ended (signal 15); restarts: 0; grants: none\n");
    let stopping = systemd.until(&ended);
    assert_eq!(
        told(&stopping),
        [
            "STOPPING=1\n",
            &format!("STATUS=target PID {pid} stopping; restarts: 0; grants: none\n"),
            &ended
        ]
    );
    controller.wait();
}

#[test]
fn under_type_notify_the_controller_tells_a_path_socket_its_life() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = Systemd::at_path(dir.path());
    type_notify(&systemd, dir.path());
}

#[test]
fn under_type_notify_the_controller_tells_an_abstract_socket_its_life() {
    let dir = tempfile::tempdir().unwrap();
    let systemd = Systemd::abstract_named("notify");
    type_notify(&systemd, dir.path());
}

#[test]
fn a_watchdog_meant_for_another_process_is_not_pinged() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let systemd = Systemd::at_path(dir.path());
    let target = inheritance_printer(dir.path());
    let mut controller = Controller::start_with_env(
        Kind::Socket,
        &[&target],
        &[
            ("NOTIFY_SOCKET", &systemd.address),
            ("WATCHDOG_USEC", "100000"),
            // systemd's variable for another process (PID 1).
            ("WATCHDOG_PID", "1"),
        ],
    );
    assert_eq!(systemd.next().text, "READY=1\n");
    let pid = controller.target_pid();
    std::thread::sleep(Duration::from_millis(500));
    controller.signal(libc::SIGTERM);
    let ended = format!("STATUS=target PID {pid} ended (signal 15); restarts: 0; grants: none\n");
    let messages = systemd.until(&ended);
    assert!(
        messages
            .iter()
            .all(|message| message.text != "WATCHDOG=1\n"),
        "{:?}",
        told(&messages)
    );
    controller.wait();
    let log = controller.log_text();
    assert!(log.contains("(watchdog: none)"), "{log}");
    assert_eq!(controller.target_output(), "[]\n");
}

#[test]
fn a_notify_socket_pointing_nowhere_is_warned_about_and_the_controller_runs_on() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("nobody-listens");
    let nowhere = nowhere.to_str().unwrap();
    for (address, warning) in [
        (
            nowhere.to_owned(),
            format!(
                "cannot tell the service manager that the controller is ready: {nowhere}: \
                 No such file or directory (os error 2) (the controller runs on)"
            ),
        ),
        (
            "vsock:2:9999".to_owned(),
            "NOTIFY_SOCKET=vsock:2:9999: not an AF_UNIX socket (a path, or @ and an abstract \
             name): the service manager will not hear from the controller"
                .to_owned(),
        ),
    ] {
        let controller = Controller::start_with_env(
            Kind::Socket,
            &["examples/target.py"],
            // Pings every 50 ms, each of which fails.
            &[("NOTIFY_SOCKET", &address), ("WATCHDOG_USEC", "100000")],
        );
        controller.target_pid();
        std::thread::sleep(Duration::from_millis(400));
        let (status, out, err) = controller.run_client(&["status"]);
        assert!(status.success(), "{out}{err}");
        let log = controller.log_text();
        // Warned about once, not at every ping.
        assert_eq!(log.matches(warning.as_str()).count(), 1, "{log}");
        assert_eq!(
            log.matches("cannot tell the service manager").count(),
            usize::from(address == nowhere),
            "{log}"
        );
    }
}

/// The pids of process `pid` in each PID namespace it is in, outermost
/// first (`NSpid` of `/proc/PID/status`).
fn ns_pids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("NSpid:"))
        .unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|pid| pid.parse().unwrap())
        .collect()
}

/// `unshare`, killed with everything in its namespace when dropped.
struct Namespace(Child);

impl Drop for Namespace {
    fn drop(&mut self) {
        // --kill-child: the controller (PID 1 there) dies, and the kernel
        // kills the rest of its namespace.
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The controller as PID 1 of a PID namespace, as a container's
/// entrypoint is, told by podman's `--sdnotify=container` where to say it
/// is ready; a client started inside that namespace with `nsenter` (as
/// `docker exec` and `kubectl exec` start it) attaches pdb to the target.
#[test]
fn as_a_containers_entrypoint_the_controller_is_attached_to_from_inside() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let systemd = Systemd::at_path(dir.path());
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(example("controller"))
        .args([
            "--transport",
            "socket",
            "--name",
            "box",
            "examples/target.py",
        ])
        .current_dir(repo())
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("HELI_PYTHON", python314())
        .env("NOTIFY_SOCKET", &systemd.address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("controller.log")).unwrap());
    let mut namespace = Namespace(unshare.spawn().unwrap());
    let log = || std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();

    // The status names the target by its pid inside the namespace.
    assert_eq!(systemd.next().text, "READY=1\n", "{}", log());
    let running = systemd.next().text;
    let inside: u32 = running
        .strip_prefix("STATUS=target PID ")
        .and_then(|rest| rest.strip_suffix(" running; restarts: 0; grants: none\n"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{running}"));
    let mut controller = 0;
    wait_for("the controller under unshare", SOON, || {
        controller = children_of(namespace.0.id()).first().copied().unwrap_or(0);
        controller != 0
    });
    // PID 1 there, and its target's pid there is the one it told.
    assert_eq!(ns_pids(controller).last(), Some(&1));
    let target = children_of(controller)[0];
    assert_eq!(ns_pids(target), [target, inside]);
    assert!(log().contains("reaping every child"), "{}", log());

    // `docker exec -it CONTAINER client attach`: a client in the
    // container's PID and mount namespaces.
    let mut exec = Command::new("nsenter");
    exec.arg("--target")
        .arg(controller.to_string())
        .args(["--pid", "--mount", "--"])
        .arg(example("client"))
        .args(["--session", "box", "attach"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("HELI_PYTHON", python314())
        .env("XDG_STATE_HOME", dir.path().join("state"))
        .env_remove("RUST_LOG");
    // Once the app runs its loop (pdb attaches at its next Python line).
    wait_for("the app started", SOON, || {
        log().contains("target: started")
    });
    let input = dir.path().join("pdb-input");
    std::fs::write(&input, "p ('counter', counter)\nq\n").unwrap();
    let (out, err) = (dir.path().join("client.out"), dir.path().join("client.err"));
    let mut client = exec
        .stdin(std::fs::File::open(&input).unwrap())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let deadline = Instant::now() + SOON;
    let status = loop {
        if let Some(status) = client.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            let _ = client.wait();
            panic!(
                "client attach still running after {SOON:?}\nstdout: {}\nstderr: {}\ncontroller: {}",
                read(&out),
                read(&err),
                log()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (out, err) = (read(&out), read(&err));
    assert!(status.success(), "{out}{err}\n{}", log());
    assert!(out.contains("('counter', "), "{out}{err}");

    // `docker stop`: SIGTERM to PID 1. The grant was on the target, to a
    // client named by its pid in the namespace.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(controller as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let ended =
        &format!("STATUS=target PID {inside} ended (signal 15); restarts: 0; grants: none\n");
    let messages = systemd.until(ended);
    let told = told(&messages);
    assert!(
        told.iter().any(|text| text.starts_with(&format!(
            "STATUS=target PID {inside} running; restarts: 0; grants: client "
        )) && text.ends_with(&format!(" on PID {inside}\n"))),
        "{told:?}"
    );
    assert_eq!(
        told[told.len() - 3..],
        [
            "STOPPING=1\n",
            &format!("STATUS=target PID {inside} stopping; restarts: 0; grants: none\n"),
            ended
        ],
        "{told:?}"
    );
    let status = wait_exit(&mut namespace.0, SOON);
    assert!(status.code().is_some(), "{status}\n{}", log());
}

/// `contrib/heli-app.service`, with `ExecStart=` the controller built
/// here, is a unit systemd accepts without a word (`systemd-analyze
/// verify`).
#[test]
fn the_contrib_unit_file_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo().join("contrib/heli-app.service")).unwrap();
    assert!(unit.contains("\nType=notify\n"), "{unit}");
    let controller = example("controller");
    let unit = unit.replace("/usr/local/bin/controller", controller.to_str().unwrap());
    let path = dir.path().join("heli-app.service");
    std::fs::write(&path, unit).unwrap();
    let mut verify = Command::new("systemd-analyze");
    verify.args(["verify", "--man=no"]).arg(&path);
    let (status, out, err) = crate::util::run(verify);
    assert!(status.success(), "{out}{err}");
    assert_eq!(format!("{out}{err}"), "");
}

/// What `contrib/Containerfile` copies from the repository is there, and
/// its entrypoint is the controller (the image itself is not built here:
/// that needs a registry's images).
#[test]
fn the_contrib_containerfile_copies_what_is_there() {
    let text = std::fs::read_to_string(repo().join("contrib/Containerfile")).unwrap();
    for line in text.lines().filter(|line| line.starts_with("COPY ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[1].starts_with("--from=") {
            continue;
        }
        let source = words[1];
        assert!(repo().join(source).exists(), "{line}");
    }
    assert!(text.contains("\nENTRYPOINT [\"controller\", "), "{text}");
    assert!(
        text.contains("cargo build --release --locked --examples"),
        "{text}"
    );
}
