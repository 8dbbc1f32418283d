//! The audit trail of the real controller (`--audit-log`): a real `client
//! attach` with real pdb, then `client audit --json` and the file both show
//! the grant (the attach's start, with the grantee's executable) and the
//! revoke (its end, with its duration), by the verified peer on the socket
//! and as unverified on named pipes; a refusal with its reason; a path
//! refused at start (exit 125); a full disk during the run, in `STATUS` and
//! on stderr, while the controller serves on; a file size limit
//! (`RLIMIT_FSIZE`) fails records and does not kill the controller.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use heli::core::{Connection, Transport};
use heli::transport::FifoTransport;
use rexpect::session::{spawn_with_options, Options};

use crate::util::{example, python314, repo, serial, wait_for, Controller, Kind, SOON};

crate::per_transport!(an_attach_with_pdb_is_in_the_audit_trail);

/// `request` sent as it is, the reply line back.
fn ask(controller: &Controller, request: &str) -> String {
    match controller.kind {
        Kind::Socket => controller.session().ask(&format!("{request}\n")),
        Kind::Fifo => {
            let transport = FifoTransport::new(&controller.fifo_dir);
            let mut connection = transport.connect(SOON).unwrap();
            let reply = connection
                .round_trip(format!("{request}\n").as_bytes(), Instant::now() + SOON)
                .unwrap();
            String::from_utf8(reply).unwrap()
        }
    }
}

/// The records of `client audit --json`.
fn audited(controller: &Controller) -> Vec<serde_json::Value> {
    let (status, out, err) = controller.run_client(&["audit", "--json"]);
    assert!(status.success(), "{out}{err}");
    out.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The records of the file at `path`.
fn in_file(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn an_attach_with_pdb_is_in_the_audit_trail(kind: Kind) {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let path_text = path.to_str().unwrap();
    let controller = Controller::start_on(kind, &["--audit-log", path_text, "examples/target.py"]);
    controller.wait_for_work_loop();
    let mut attach = controller.client();
    attach.arg("attach");
    let options = Options::new()
        .timeout_ms(Some(30_000))
        .strip_ansi_escape_codes(true);
    let mut session = spawn_with_options(attach, options).unwrap();
    if let Err(err) = session.exp_string("(Pdb) ") {
        panic!("no pdb prompt: {err}\n{}", controller.log_text());
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    session.send_line("q").unwrap();
    session.exp_string("Debugger detached").unwrap();
    session.exp_eof().unwrap();
    // PID 1 is never a debugger: refused, with why.
    let refused = ask(&controller, "GRANT_ACCESS 1");
    let why = refused
        .trim_end()
        .strip_prefix("ERROR: ")
        .unwrap_or_else(|| panic!("not refused: {refused}"))
        .to_owned();
    assert!(why.starts_with("GRANT_ACCESS 1 refused: "), "{why}");

    let me = nix::unistd::getuid().as_raw();
    let target = controller.target_pid();
    wait_for("the revoke and the refusal recorded", SOON, || {
        let records = audited(&controller);
        records.iter().any(|r| r["event"] == "revoke")
            && records.iter().any(|r| r["event"] == "refusal")
    });
    for records in [audited(&controller), in_file(&path)] {
        let grant = records
            .iter()
            .find(|r| r["event"] == "grant" && r["result"] == "ok")
            .unwrap_or_else(|| panic!("no grant in {records:#?}"));
        let grantee = &grant["grantee"];
        let grantee_pid = grantee["pid"].as_u64().unwrap();
        assert_eq!(grant["process"]["pid"].as_u64(), Some(u64::from(target)));
        assert!(grant["process"]["start_time"].is_u64(), "{grant}");
        assert!(grant["method"].is_string(), "{grant}");
        assert!(grant["session"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}@", controller.child.id())));
        match kind {
            Kind::Socket => {
                let peer = &grant["peer"];
                assert_eq!(peer["verified"], true, "{grant}");
                assert_eq!(peer["uid"].as_u64(), Some(u64::from(me)));
                assert!(
                    peer["pid"].is_u64() && peer["start_time"].is_u64(),
                    "{grant}"
                );
                assert!(
                    peer["exe"].as_str().unwrap().ends_with("/client"),
                    "{grant}"
                );
                assert!(
                    peer["cmdline"].as_str().unwrap().contains("attach"),
                    "{grant}"
                );
                // The debugger granted: its executable and command line.
                assert!(grantee["exe"].is_string(), "{grant}");
                assert!(grantee["cmdline"].is_string(), "{grant}");
                assert!(grantee["start_time"].is_u64(), "{grant}");
            }
            Kind::Fifo => {
                assert_eq!(
                    grant["peer"],
                    serde_json::json!({"verified": false, "claimed_pid": grantee_pid}),
                    "{grant}"
                );
            }
        }
        let revoke = records
            .iter()
            .find(|r| r["event"] == "revoke")
            .unwrap_or_else(|| panic!("no revoke in {records:#?}"));
        assert_eq!(
            revoke["grantee"]["pid"].as_u64(),
            Some(grantee_pid),
            "{revoke}"
        );
        assert!(
            ["request", "disconnect"].contains(&revoke["cause"].as_str().unwrap()),
            "{revoke}"
        );
        assert!(revoke["duration_ms"].as_u64().unwrap() >= 300, "{revoke}");
        let refusal = records
            .iter()
            .find(|r| r["event"] == "refusal")
            .unwrap_or_else(|| panic!("no refusal in {records:#?}"));
        assert_eq!(refusal["result"], "refused");
        assert_eq!(refusal["reason"].as_str(), Some(why.as_str()), "{refusal}");
        assert_eq!(refusal["request"], "GRANT_ACCESS 1");
        assert!(records.iter().any(|r| r["event"] == "stack_dump"));
    }
    // The readable table says the same.
    let (status, out, _) = controller.run_client(&["audit", "--since", "1h"]);
    assert!(status.success());
    assert!(out.starts_with("TIME"), "{out}");
    assert!(
        out.contains(" grant ")
            && out.contains(" revoke ")
            && out.contains("GRANT_ACCESS 1 refused"),
        "{out}"
    );
    let (_, status_out, _) = controller.run_client(&["status", "--json"]);
    assert!(status_out.contains("\"audit\""), "{status_out}");
    assert!(ask(&controller, "STATUS").contains(" audit=ok"));
}

/// Runs the controller with `--audit-log path`: it must refuse to start,
/// exit 125 and say `why`.
fn refused_at_start(path: &Path, why: &str) {
    let marker = path.with_extension("started");
    let output = Command::new(example("controller"))
        .args(["--transport", "fifo", "--fifo-dir"])
        .arg(path.with_extension("pipes"))
        .arg("--audit-log")
        .arg(path)
        .args(["--", "touch"])
        .arg(&marker)
        .current_dir(repo())
        .env("HELI_PYTHON", python314())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains(why), "{stderr}");
    assert!(!marker.exists(), "the target was started");
}

#[test]
fn an_audit_log_that_cannot_be_trusted_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.jsonl");
    fs::write(&real, b"").unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    refused_at_start(&link, "link.jsonl: is a symlink");
    let hard = dir.path().join("hard.jsonl");
    fs::hard_link(&real, &hard).unwrap();
    refused_at_start(&hard, "has 2 links");
    fs::remove_file(&hard).unwrap();
    refused_at_start(dir.path(), "is not a regular file");
    let writable = dir.path().join("writable.jsonl");
    fs::write(&writable, b"").unwrap();
    fs::set_permissions(&writable, fs::Permissions::from_mode(0o666)).unwrap();
    refused_at_start(&writable, "others can write to it (mode 666)");
    let open = dir.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    refused_at_start(
        &open.join("audit.jsonl"),
        "anyone can write to its directory",
    );
    refused_at_start(
        &dir.path().join("missing/audit.jsonl"),
        "its directory cannot be read",
    );
    // As root: a directory and a file of another user's.
    assert!(nix::unistd::geteuid().is_root(), "run this test as root");
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let theirs = dir.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    nix::unistd::chown(&theirs, Some(nobody.uid), Some(nobody.gid)).unwrap();
    refused_at_start(&theirs.join("audit.jsonl"), "belongs to another user");
    let their_file = dir.path().join("their.jsonl");
    fs::write(&their_file, b"").unwrap();
    nix::unistd::chown(&their_file, Some(nobody.uid), Some(nobody.gid)).unwrap();
    refused_at_start(&their_file, "belongs to another user");
}

#[test]
fn a_full_disk_during_the_run_is_in_status_and_stderr_and_serving_goes_on() {
    let _serial = serial();
    assert!(
        nix::unistd::geteuid().is_root(),
        "run this test as root (a tmpfs in a mount namespace)"
    );
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    fs::create_dir(&small).unwrap();
    let log = dir.path().join("controller.log");
    // A 12 KiB tmpfs, in a mount namespace of the controller's own.
    let controller = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=12k tmpfs \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg(&small)
        .arg(example("controller"))
        .args(["--transport", "socket", "--name", "test", "--audit-log"])
        .arg(small.join("audit.jsonl"))
        .args(["--", "sleep", "600"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // Killed should the test fail half-way (its target dies with it).
    let mut controller = KilledOnDrop(controller);
    let socket = dir.path().join("heli/test.sock");
    wait_for("the controller listening", SOON, || socket.exists());
    let ask = |request: &str| {
        let stream = UnixStream::connect(&socket).unwrap();
        stream.set_read_timeout(Some(SOON)).unwrap();
        let mut reader = BufReader::new(stream);
        reader
            .get_mut()
            .write_all(format!("{request}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    };
    // Each STATUS is a record of some 400 bytes: 12 KiB fill up.
    wait_for("audit=failing in STATUS", SOON, || {
        ask("STATUS").contains(" audit=failing:")
    });
    let status = ask("STATUS");
    assert!(
        status.contains("No_space_left_on_device") || status.contains("disk_full"),
        "{status}"
    );
    assert!(status.contains(" audit_unrecorded="), "{status}");
    // Still serving, and the records are still there for `AUDIT`.
    assert!(ask("GET_TARGET_PID").starts_with("TARGET_PID "));
    let audit = ask("AUDIT 3600");
    assert!(
        audit.starts_with("AUDIT [") && audit.contains("\"status\""),
        "{}",
        &audit[..200.min(audit.len())]
    );
    let stderr = fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("audit: cannot record"), "{stderr}");
    assert!(ask("TERMINATE").starts_with("READY"));
    let deadline = Instant::now() + SOON;
    while controller.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "controller did not end");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_file_size_limit_fails_records_and_does_not_kill_the_controller() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = dir.path().join("controller.log");
    // RLIMIT_FSIZE of 8 KiB (systemd's LimitFSIZE=, `ulimit -f`): a write
    // past it raises SIGXFSZ, which kills a process that does not catch it.
    let controller = Command::new("prlimit")
        .arg("--fsize=8192:8192")
        .arg("--")
        .arg(example("controller"))
        .args(["--transport", "socket", "--name", "test", "--audit-log"])
        .arg(&path)
        .args(["--", "sleep", "600"])
        .env("XDG_RUNTIME_DIR", dir.path())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut controller = KilledOnDrop(controller);
    let socket = dir.path().join("heli/test.sock");
    wait_for("the controller listening", SOON, || socket.exists());
    let ask = |request: &str| -> String {
        let Ok(stream) = UnixStream::connect(&socket) else {
            return String::new();
        };
        stream.set_read_timeout(Some(SOON)).unwrap();
        let mut reader = BufReader::new(stream);
        let _ = reader
            .get_mut()
            .write_all(format!("{request}\n").as_bytes());
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        line
    };
    // Each STATUS is a record of some 400 bytes: 8 KiB fill up.
    let deadline = Instant::now() + SOON;
    let status = loop {
        let status = ask("STATUS");
        if let Ok(Some(ended)) = controller.0.try_wait() {
            panic!(
                "the controller ended ({ended}) at the file size limit: {}",
                fs::read_to_string(&log).unwrap()
            );
        }
        if status.contains(" audit=failing:") {
            break status;
        }
        assert!(Instant::now() < deadline, "no audit=failing: {status}");
    };
    assert!(status.contains("File_too_large"), "{status}");
    assert!(ask("GET_TARGET_PID").starts_with("TARGET_PID "));
    // The records before the limit are in the file (the last line may be
    // cut short, as on a full disk).
    let text = fs::read_to_string(&path).unwrap();
    let whole = text
        .lines()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).is_ok())
        .count();
    assert!(whole >= 10, "{text}");
    assert!(fs::metadata(&path).unwrap().len() <= 8192);
    assert!(ask("TERMINATE").starts_with("READY"));
    let deadline = Instant::now() + SOON;
    while controller.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "controller did not end");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A child killed and reaped when dropped, unless it ended.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
