//! `client profile` on real Python targets: the shares of a known
//! target's functions in the folded stacks, the flame graph and the
//! speedscope file; threads apart; idle threads left out or kept; a
//! target that exits mid-profile; Ctrl-C; a target that is not Python;
//! the FIFO transport.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use rexpect::session::{spawn_with_options, Options};
use serde_json::Value;

use crate::util::{python314, serial, temp_script, wait_exit, wait_for, Controller, Kind, SOON};

/// A directory for the profiles written, and `tests/shares.py`: a
/// target whose main thread spends 70% of its CPU time in `seventy` and
/// 30% in `thirty` by construction (the one `client top`'s tests read).
fn shares() -> (tempfile::TempDir, PathBuf) {
    (
        tempfile::tempdir().unwrap(),
        PathBuf::from("tests/shares.py"),
    )
}

/// A controller (socket transport) of `script`, once the target has
/// printed `ready` (its imports done, its threads started).
fn started(script: &Path) -> Controller {
    let controller = Controller::start_on(Kind::Socket, &[script.to_str().unwrap()]);
    wait_for("the target to be ready", SOON, || {
        controller.target_output().contains("ready")
    });
    controller
}

/// Runs `client profile ARGS` on `controller` to its end (bounded by
/// `limit`): (status, stdout, stderr).
fn profile(
    controller: &Controller,
    args: &[&str],
    limit: Duration,
) -> (ExitStatus, String, String) {
    let mut client = controller.client();
    client
        .arg("profile")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = client.spawn().unwrap();
    finish(child, limit)
}

/// Waits for `child` (bounded by `limit`) and reads what it printed.
fn finish(mut child: Child, limit: Duration) -> (ExitStatus, String, String) {
    fn drain(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    }
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let status = wait_exit(&mut child, limit);
    (status, out.join().unwrap(), err.join().unwrap())
}

fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// The folded stacks of `text`: (frames, count).
fn folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            let frames = stack.split(';').map(str::to_owned).collect();
            (frames, count.parse().unwrap_or_else(|_| panic!("{line:?}")))
        })
        .collect()
}

/// The share, in percent, of the samples whose stack has a frame of
/// `function`.
fn share(stacks: &[(Vec<String>, u64)], function: &str) -> f64 {
    let prefix = format!("{function} (");
    let total: u64 = stacks.iter().map(|(_, count)| count).sum();
    let with: u64 = stacks
        .iter()
        .filter(|(frames, _)| frames.iter().any(|frame| frame.starts_with(&prefix)))
        .map(|(_, count)| count)
        .sum();
    assert!(total > 0, "no samples");
    100.0 * with as f64 / total as f64
}

fn assert_near(share: f64, expected: f64, what: &str) {
    assert!(
        (share - expected).abs() <= 5.0,
        "{what}: {share:.1}% where {expected}% ± 5 was expected"
    );
}

/// The frames of an SVG flame graph, from their titles: (name, percent).
fn svg_frames(svg: &str) -> Vec<(String, f64)> {
    svg.split("<title>")
        .skip(1)
        .filter_map(|rest| {
            let title = &rest[..rest.find("</title>")?];
            let (name, counts) = title.rsplit_once(" (")?;
            let percent = counts.rsplit_once(", ")?.1.strip_suffix("%)")?;
            Some((name.to_owned(), percent.parse().ok()?))
        })
        .collect()
}

/// Checks that `file` is well-formed XML, with Python's parser.
fn assert_well_formed_xml(file: &Path) {
    let output = Command::new(python314())
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1])",
        ])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The known target, profiled for 5 s at 500 samples a second: in the
/// folded stacks and in the flame graph, `seventy` and `thirty` have their
/// shares within 5 points; the speedscope file is well-formed and names
/// them. (5 s rather than 3: on a loaded machine the target may lose the
/// CPU for tens of milliseconds at a time, all sampled in one function;
/// the longer profile evens these out.)
#[test]
fn a_known_target_s_shares_in_every_format() {
    let _serial = serial();
    let (dir, script) = shares();
    let controller = started(&script);
    let limit = Duration::from_secs(5) + SOON;
    let common = ["--duration", "5s", "--rate", "500"];

    let txt = path(dir.path(), "p.txt");
    let (status, out, err) = profile(
        &controller,
        &[
            &common[..],
            &["--format", "collapsed", "-o", txt.to_str().unwrap()],
        ]
        .concat(),
        limit,
    );
    assert!(status.success(), "{out}{err}\n{}", controller.log_text());
    assert!(
        err.starts_with(&format!("Wrote {}: ", txt.display())),
        "{err}"
    );
    assert!(
        err.contains("; the profile ended: the 5 s asked for are over"),
        "{err}"
    );
    let stacks = folded(&std::fs::read_to_string(&txt).unwrap());
    for (frames, _) in &stacks {
        assert!(frames[0].starts_with("<module> ("), "{frames:?}");
    }
    assert_near(share(&stacks, "seventy"), 70.0, "seventy (folded)");
    assert_near(share(&stacks, "thirty"), 30.0, "thirty (folded)");

    let svg = path(dir.path(), "p.svg");
    let (status, out, err) = profile(
        &controller,
        &[&common[..], &["-o", svg.to_str().unwrap()]].concat(),
        limit,
    );
    assert!(status.success(), "{out}{err}");
    assert_well_formed_xml(&svg);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("Profile of target PID"), "{text}");
    let frames = svg_frames(&text);
    let percent = |function: &str| -> f64 {
        frames
            .iter()
            .filter(|(name, _)| name.starts_with(&format!("{function} (")))
            .map(|(_, percent)| percent)
            .sum()
    };
    assert_near(percent("seventy"), 70.0, "seventy (SVG)");
    assert_near(percent("thirty"), 30.0, "thirty (SVG)");

    let json = path(dir.path(), "p.json");
    let (status, out, err) = profile(
        &controller,
        &[
            "--duration",
            "1s",
            "--rate",
            "500",
            "--format",
            "speedscope",
            "-o",
            json.to_str().unwrap(),
        ],
        limit,
    );
    assert!(status.success(), "{out}{err}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        json["$schema"],
        "https://www.speedscope.app/file-format-schema.json"
    );
    let names: Vec<&str> = json["shared"]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|frame| frame["name"].as_str().unwrap())
        .collect();
    for function in ["<module>", "main", "seventy", "thirty"] {
        assert!(names.contains(&function), "{names:?}");
    }
    let profile = &json["profiles"][0];
    assert_eq!(profile["type"], "sampled");
    let weights: f64 = profile["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_f64().unwrap())
        .sum();
    // Seconds: a sample weighs 1/500 s; at most 1 s of them.
    assert!(weights > 0.1 && weights <= 1.01, "{weights}");
}

/// `--threads`: a root frame per thread, each with its own functions
/// under it and no other's.
#[test]
fn threads_apart() {
    let _serial = serial();
    let (dir, script) = temp_script(
        "threads.py",
        "import threading, time\n\
         def spin():\n    end = time.process_time() + 0.01\n    while time.process_time() < end: pass\n\
         def alpha_work():\n    while True: spin()\n\
         def beta_work():\n    while True: spin()\n\
         threading.Thread(target=alpha_work, name='alpha').start()\n\
         threading.Thread(target=beta_work, name='beta').start()\n\
         print('ready', flush=True)\n",
    );
    let controller = started(&script);
    let txt = path(dir.path(), "t.txt");
    let (status, out, err) = profile(
        &controller,
        &[
            "--duration",
            "2s",
            "--rate",
            "200",
            "--threads",
            "--format",
            "collapsed",
            "-o",
            txt.to_str().unwrap(),
        ],
        SOON,
    );
    assert!(status.success(), "{out}{err}");
    let stacks = folded(&std::fs::read_to_string(&txt).unwrap());
    for (thread, mine, other) in [
        ("alpha", "alpha_work", "beta_work"),
        ("beta", "beta_work", "alpha_work"),
    ] {
        let under: Vec<&Vec<String>> = stacks
            .iter()
            .filter(|(frames, _)| {
                frames[0].starts_with("thread ") && frames[0].ends_with(&format!(" \"{thread}\""))
            })
            .map(|(frames, _)| frames)
            .collect();
        let has = |frames: &Vec<String>, function: &str| {
            frames
                .iter()
                .any(|frame| frame.starts_with(&format!("{function} (")))
        };
        // Its own function, never the other's.
        assert!(
            under.iter().any(|frames| has(frames, mine)),
            "{thread}: {stacks:?}"
        );
        assert!(
            !under.iter().any(|frames| has(frames, other)),
            "{thread}: {under:?}"
        );
    }
    // Every stack has its thread at the root.
    assert!(
        stacks
            .iter()
            .all(|(frames, _)| frames[0].starts_with("thread ")),
        "{stacks:?}"
    );
}

/// A thread asleep in `time.sleep` is left out, unless `--idle`.
#[test]
fn idle_threads_left_out_unless_asked_for() {
    let _serial = serial();
    let (dir, script) = temp_script(
        "idle.py",
        "import threading, time\n\
         def napper():\n    while True: time.sleep(100)\n\
         def busy():\n    while True: sum(range(1000))\n\
         threading.Thread(target=napper).start()\n\
         print('ready', flush=True)\n\
         busy()\n",
    );
    let controller = started(&script);
    let txt = path(dir.path(), "i.txt");
    let args = [
        "--duration",
        "1s",
        "--format",
        "collapsed",
        "-o",
        txt.to_str().unwrap(),
    ];
    let (status, out, err) = profile(&controller, &args, SOON);
    assert!(status.success(), "{out}{err}");
    let text = std::fs::read_to_string(&txt).unwrap();
    assert!(text.contains(";busy ("), "{text}");
    assert!(!text.contains("napper ("), "{text}");

    let (status, out, err) = profile(&controller, &[&args[..], &["--idle"]].concat(), SOON);
    assert!(status.success(), "{out}{err}");
    let text = std::fs::read_to_string(&txt).unwrap();
    assert!(text.contains(";busy ("), "{text}");
    assert!(text.contains("napper ("), "{text}");
}

/// A target that exits mid-profile: the profile ends with what it has,
/// says why, and the client succeeds.
#[test]
fn a_target_that_exits_mid_profile() {
    let _serial = serial();
    let (dir, script) = temp_script(
        "brief.py",
        "import time\n\
         def work():\n    end = time.monotonic() + 2.5\n    while time.monotonic() < end: pass\n\
         print('ready', flush=True)\n\
         work()\n",
    );
    let controller = started(&script);
    let txt = path(dir.path(), "e.txt");
    let (status, out, err) = profile(
        &controller,
        &[
            "--duration",
            "10s",
            "--format",
            "collapsed",
            "-o",
            txt.to_str().unwrap(),
        ],
        SOON,
    );
    assert!(status.success(), "{out}{err}\n{}", controller.log_text());
    assert!(err.contains("the profile ended: target PID"), "{err}");
    // `target PID 4242 exited`, or as the controller saw it end: `target
    // PID 4242 ended (exit code 0): the controller stops`.
    assert!(err.contains("exit"), "{err}");
    let text = std::fs::read_to_string(&txt).unwrap();
    assert!(text.contains(";work ("), "{text}");
}

/// Ctrl-C (SIGINT to the client): it stops the profile, writes what it
/// has and says so.
#[test]
fn sigint_stops_and_writes() {
    let _serial = serial();
    let (dir, script) = shares();
    let controller = started(&script);
    let txt = path(dir.path(), "c.txt");
    let mut client = controller.client();
    client
        .args([
            "profile",
            "--format",
            "collapsed",
            "-o",
            txt.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = client.spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::sleep(Duration::from_millis(1500));
    kill(pid, Signal::SIGINT).unwrap();
    let (status, out, err) = finish(child, SOON);
    assert!(status.success(), "{status}: {out}{err}");
    assert!(err.contains("the profile ended: stopped (Ctrl-C)"), "{err}");
    let text = std::fs::read_to_string(&txt).unwrap();
    assert!(text.contains(";seventy ("), "{text}");
}

/// On a terminal: the progress line, then Ctrl-C stops and writes.
#[test]
fn progress_and_ctrl_c_on_a_terminal() {
    let _serial = serial();
    let (dir, script) = shares();
    let controller = started(&script);
    let svg = path(dir.path(), "tty.svg");
    let mut client = controller.client();
    client.args(["profile", "-o", svg.to_str().unwrap()]);
    let mut session = spawn_with_options(
        client,
        Options::new()
            .timeout_ms(Some(SOON.as_millis() as u64))
            .strip_ansi_escape_codes(true),
    )
    .unwrap();
    session.exp_string("samples taken").unwrap();
    session.exp_string("(Ctrl-C stops)").unwrap();
    session.send_control('c').unwrap();
    session
        .exp_string(&format!("Wrote {}: ", svg.display()))
        .unwrap();
    let rest = session.exp_eof().unwrap();
    assert!(
        rest.contains("the profile ended: stopped (Ctrl-C)"),
        "{rest}"
    );
    let status = session.process().wait().unwrap();
    assert!(
        matches!(status, rexpect::process::WaitStatus::Exited(_, 0)),
        "{status:?}"
    );
    assert_well_formed_xml(&svg);
}

/// A target that is not Python: a clear error, nothing written.
#[test]
fn a_target_that_is_not_python() {
    let _serial = serial();
    let controller = Controller::start_on(Kind::Socket, &["--", "sleep", "100"]);
    let dir = tempfile::tempdir().unwrap();
    let svg = path(dir.path(), "n.svg");
    let (status, out, err) = profile(
        &controller,
        &["--duration", "2s", "-o", svg.to_str().unwrap()],
        SOON,
    );
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("Nothing to profile: cannot read the stacks of target PID"),
        "{err}"
    );
    assert!(!svg.exists());
}

/// The FIFO transport cannot profile: the controller's refusal, nothing
/// written.
#[test]
fn the_fifo_transport_refuses() {
    let _serial = serial();
    let (dir, script) = shares();
    let controller = Controller::start_on(Kind::Fifo, &[script.to_str().unwrap()]);
    let svg = path(dir.path(), "f.svg");
    let (status, out, err) = profile(
        &controller,
        &["--duration", "1s", "-o", svg.to_str().unwrap()],
        SOON,
    );
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(err.contains("FIFO transport"), "{err}");
    assert!(!svg.exists());
}

/// `all`: every Python process of the tree, each under its own root
/// frame.
#[test]
fn every_process_of_the_tree_under_its_own_root() {
    let _serial = serial();
    let (dir, script) = temp_script(
        "parent.py",
        // The child ends when its parent does (the controller ends only
        // the target): a leftover would burn a CPU for ever.
        "import os, subprocess, sys, time\n\
         code = f'import os\\ndef child_work():\\n    while os.getppid() == {os.getpid()}: sum(range(1000))\\nchild_work()\\n'\n\
         child = subprocess.Popen([sys.executable, '-c', code])\n\
         def parent_work():\n    while True: sum(range(1000))\n\
         time.sleep(0.5)\n\
         print('ready', flush=True)\n\
         parent_work()\n",
    );
    let controller = started(&script);
    let target = controller.target_pid();
    let txt = path(dir.path(), "a.txt");
    let (status, out, err) = profile(
        &controller,
        &[
            "all",
            "--duration",
            "1s",
            "--format",
            "collapsed",
            "-o",
            txt.to_str().unwrap(),
        ],
        SOON,
    );
    assert!(status.success(), "{out}{err}");
    let stacks = folded(&std::fs::read_to_string(&txt).unwrap());
    let parent = format!("process {target}");
    assert!(
        stacks
            .iter()
            .all(|(frames, _)| frames[0].starts_with("process ")),
        "{stacks:?}"
    );
    assert!(
        stacks.iter().any(|(frames, _)| frames[0] == parent
            && frames.iter().any(|f| f.starts_with("parent_work ("))),
        "{stacks:?}"
    );
    assert!(
        stacks.iter().any(|(frames, _)| frames[0] != parent
            && frames.iter().any(|f| f.starts_with("child_work ("))),
        "{stacks:?}"
    );
    assert!(
        !stacks.iter().any(|(frames, _)| frames[0] == parent
            && frames.iter().any(|f| f.starts_with("child_work ("))),
        "{stacks:?}"
    );
}
