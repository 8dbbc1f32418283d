//! `client top` on real targets: the shares of a target that spends 70%
//! and 30% of its time in two functions by construction
//! (`tests/shares.py`), printed and as JSON; the full screen in a
//! terminal, left with q or Ctrl-C and the terminal given back; a profile
//! that ends while `top` runs; and what cannot be profiled.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rexpect::session::{spawn_with_options, Options, PtySession};

use crate::util::{children_of, serial, temp_script, wait_for, Controller, Kind, SOON};

/// A controller on `tests/shares.py` (with `args`), on the socket, once
/// the target spins in its two functions.
fn shares(args: &[&str]) -> Controller {
    let controller = Controller::start_on(Kind::Socket, &[&["tests/shares.py"], args].concat());
    wait_for("the target's loop", SOON, || {
        let (_, out, _) = controller.run_client(&["stack"]);
        out.contains("in seventy") || out.contains("in thirty")
    });
    controller
}

/// The tables `client top` printed, one a refresh.
fn tables(out: &str) -> Vec<String> {
    let mut tables: Vec<String> = Vec::new();
    for line in out.lines() {
        if line.starts_with("Collecting samples from ") || line.starts_with("Profile of ") {
            tables.push(String::new());
        }
        let table = tables.last_mut().unwrap_or_else(|| panic!("{out}"));
        table.push_str(line);
        table.push('\n');
    }
    tables
}

/// The `%Own` of `function` in a table of `client top`'s text.
fn own_share(table: &str, function: &str) -> f64 {
    let row = table
        .lines()
        .find(|line| line.ends_with(&format!(" {function} (shares.py)")))
        .unwrap_or_else(|| panic!("no row for {function}:\n{table}"));
    let own = row.split_whitespace().next().unwrap();
    own.trim_end_matches('%').parse().unwrap()
}

#[test]
fn top_shows_the_shares_of_a_70_30_target() {
    let _serial = serial();
    let controller = shares(&[]);
    // 500 samples a second: about 1500 in the 3 s, so the sampling error
    // of a share is below 1.5 points (at 100, 300 samples: 2.6).
    let (status, out, err) = controller.run_client(&[
        "top",
        "--iterations",
        "3",
        "--interval",
        "1s",
        "--cumulative",
        "--rate",
        "500",
    ]);
    assert!(status.success(), "{out}{err}");
    let tables = tables(&out);
    assert_eq!(tables.len(), 3, "{out}");
    for table in &tables {
        assert!(
            table.starts_with("Collecting samples from target PID ")
                && table.contains("\n% of the samples since the start\n")
                && table.contains("1 thread, 1 process"),
            "{out}"
        );
    }
    let last = &tables[2];
    let (seventy, thirty) = (own_share(last, "seventy"), own_share(last, "thirty"));
    assert!((seventy - 70.0).abs() <= 5.0, "seventy {seventy}:\n{out}");
    assert!((thirty - 30.0).abs() <= 5.0, "thirty {thirty}:\n{out}");
    // main is under both, once a sample: all of them.
    let main = last
        .lines()
        .find(|line| line.ends_with(" main (shares.py)"))
        .unwrap();
    let total: f64 = main
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(total > 99.0, "{out}");

    // The same as JSON: the counts since the start.
    let (status, out, err) = controller.run_client(&[
        "top",
        "--once",
        "--json",
        "--rate",
        "500",
        "--interval",
        "2s",
    ]);
    assert!(status.success(), "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let taken = json["taken"].as_f64().unwrap();
    assert!(taken > 500.0, "{out}");
    let own = |name: &str| {
        let function = json["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["function"] == name)
            .unwrap_or_else(|| panic!("no {name}: {out}"));
        assert!(function["file"]
            .as_str()
            .unwrap()
            .ends_with("tests/shares.py"));
        function["own_since_start"].as_f64().unwrap() * 100.0 / taken
    };
    assert!((own("seventy") - 70.0).abs() <= 5.0, "{out}");
    assert!((own("thirty") - 30.0).abs() <= 5.0, "{out}");
}

/// `client ARGS` run by a shell (which says `shell PID` first) in a 100x30
/// terminal, as a user runs it;
/// the shell then says how it ended and whether the terminal's modes are
/// as they were (`stty -g`: raw mode undone), and waits.
fn in_terminal(controller: &Controller, args: &[&str]) -> PtySession {
    let client = controller.client();
    let mut command = Command::new("sh");
    command
        .args([
            "-c",
            "echo \"shell $$\"; stty cols 100 rows 30; before=$(stty -g); \"$@\"; echo \"client ended: $?\"; \
             [ \"$(stty -g)\" = \"$before\" ] && echo 'terminal as before'; exec sleep 600",
            "sh",
        ])
        .arg(client.get_program())
        .args(client.get_args())
        .args(args);
    for (key, value) in client.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let options = Options::new().timeout_ms(Some(SOON.as_millis() as u64));
    spawn_with_options(command, options).unwrap()
}

/// Waits for `text` in `session`'s output; returns what came before it.
fn expect(session: &mut PtySession, text: &str) -> String {
    session
        .exp_string(text)
        .unwrap_or_else(|err| panic!("waiting for {text:?}: {err}"))
}

/// After `top` left the screen: it ended with 0, and the terminal's modes
/// are as before.
fn terminal_given_back(session: &mut PtySession) {
    // Leaving the alternate screen.
    expect(session, "\x1b[?1049l");
    expect(session, "client ended: 0");
    expect(session, "terminal as before");
}

#[test]
fn top_draws_full_screen_and_q_ctrl_c_or_sigterm_give_the_terminal_back() {
    let _serial = serial();
    let controller = shares(&[]);
    // q, Ctrl-C, SIGTERM.
    for quit in ['q', 'c', 't'] {
        let mut session = in_terminal(&controller, &["top"]);
        let (_, shell) = session.exp_regex(r"shell \d+").unwrap();
        let shell: u32 = shell["shell ".len()..].parse().unwrap();
        // The alternate screen, then the header and the rows.
        expect(&mut session, "\x1b[?1049h");
        expect(&mut session, "Collecting samples from target PID");
        expect(&mut session, "q: quit");
        expect(&mut session, "seventy (shares.py)");
        // A key that sorts: the choice is marked.
        session.send("2").unwrap();
        session.flush().unwrap();
        expect(&mut session, "[2 %Total]");
        match quit {
            'q' => {
                session.send("q").unwrap();
                session.flush().unwrap();
            }
            'c' => session.send_control('c').unwrap(),
            _ => {
                let [client] = children_of(shell)[..] else {
                    panic!("not one child of the shell: {:?}", children_of(shell));
                };
                kill(Pid::from_raw(client as i32), Signal::SIGTERM).unwrap();
            }
        }
        terminal_given_back(&mut session);
    }
}

/// The target's pid in the first line `client top` printed.
fn target_pid_in(out: &str) -> &str {
    out.strip_prefix("Collecting samples from target PID ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{out}"))
}

#[test]
fn the_end_of_the_profile_is_shown() {
    let _serial = serial();
    // Printed: the target exits after 2 s, the controller with it; the
    // last table says so, and top stops there.
    let controller = shares(&["2"]);
    let started = Instant::now();
    let (status, out, err) = controller.run_client(&["top", "--iterations", "10"]);
    assert!(status.success(), "{out}{err}");
    assert!(started.elapsed() < Duration::from_secs(8), "{out}");
    // The controller says its target ended; or its sampler saw the target
    // go first; or it went away before the last collection.
    let pid = target_pid_in(&out);
    let ended = out
        .lines()
        .find_map(|line| line.strip_prefix(&format!("Profile of target PID {pid} ended: ")))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        [
            format!("target PID {pid} ended (exit code 0): the controller stops"),
            format!("target PID {pid} exited"),
            "the controller went away (its target exited, or it was stopped)".into(),
        ]
        .contains(&ended.to_owned()),
        "{out}"
    );
    let tables = tables(&out);
    let last = tables.last().unwrap();
    assert!(last.contains("% of the samples since the start\n"), "{out}");
    assert!(last.contains("seventy (shares.py)"), "{out}");

    // On the screen: the end is shown and the view stays until q.
    let controller = shares(&["3"]);
    let mut session = in_terminal(&controller, &["top"]);
    expect(&mut session, "seventy (shares.py)");
    session
        .exp_regex(r"ended: (target PID \d+ (exited|ended)|the controller went away)")
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    session.send("q").unwrap();
    session.flush().unwrap();
    terminal_given_back(&mut session);
}

#[test]
fn a_process_of_the_tree_that_exits_ends_its_profile() {
    let _serial = serial();
    // The target starts a child that spins for 2 s, and stays.
    let parent = "import subprocess, sys, time\n\
                  child = subprocess.Popen([sys.executable, 'tests/shares.py', '2'])\n\
                  print(child.pid, flush=True)\n\
                  child.wait()\n\
                  while True:\n    time.sleep(0.1)\n";
    let (_dir, path) = temp_script("parent.py", parent);
    let controller = Controller::start_on(Kind::Socket, &[path.to_str().unwrap()]);
    let mut child = String::new();
    wait_for("the child's pid", SOON, || {
        child = controller.target_output().trim().to_owned();
        !child.is_empty()
    });
    wait_for("the child's loop", SOON, || {
        let (_, out, _) = controller.run_client(&["stack", &child]);
        out.contains("in seventy") || out.contains("in thirty")
    });
    let (status, out, err) = controller.run_client(&["top", "--pid", &child, "--iterations", "10"]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.starts_with(&format!("Collecting samples from PID {child}")),
        "{out}"
    );
    let ended = out
        .lines()
        .find(|line| line.starts_with(&format!("Profile of PID {child} ended: ")))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(ended.ends_with(" exited"), "{out}");
    // The controller still serves.
    assert!(controller.target_pid() > 0);
}

#[test]
fn what_cannot_be_profiled_is_a_failure() {
    let _serial = serial();
    // No Python in the target.
    let controller = Controller::start_on(Kind::Socket, &["sleep", "600"]);
    let pid = controller.target_pid();
    for args in [
        &["top", "--once"][..],
        &["top"],
        &["top", "--all", "--json"],
    ] {
        let (status, out, err) = controller.run_client(args);
        assert_eq!(status.code(), Some(1), "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(
            err.contains(&format!(
                "Cannot profile target PID {pid}: cannot read the stacks"
            )) || err.contains(&format!(
                "Cannot profile the tree of target PID {pid}: no process of the tree"
            )),
            "{args:?}: {err}"
        );
    }
    drop(controller);
    // The FIFO transport: the controller's refusal.
    let controller = Controller::start_on(Kind::Fifo, &["sleep", "600"]);
    let (status, out, err) = controller.run_client(&["top", "--once"]);
    assert_eq!(status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("PROFILE needs a connection that stays open"),
        "{err}"
    );
    // Bad usage.
    for args in [
        &["top", "--rate", "0"][..],
        &["top", "--rate", "10001"],
        &["top", "--interval", "50ms"],
        &["top", "--once", "--iterations", "2"],
        &["top", "--iterations", "0"],
        &["top", "--pid", "1", "--all"],
    ] {
        let (status, out, err) = controller.run_client(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {out}{err}");
    }
}

#[test]
fn top_at_the_prompt() {
    let _serial = serial();
    let controller = shares(&[]);
    let mut session = in_terminal(&controller, &[]);
    expect(&mut session, ">>> ");
    // Full screen, then back at the prompt.
    session.send_line("top").unwrap();
    expect(&mut session, "\x1b[?1049h");
    expect(&mut session, "seventy (shares.py)");
    session.send("q").unwrap();
    session.flush().unwrap();
    expect(&mut session, "\x1b[?1049l");
    expect(&mut session, ">>> ");
    // Printed once.
    session.send_line("top --once").unwrap();
    expect(&mut session, "Collecting samples from target PID");
    expect(&mut session, "seventy (shares.py)");
    expect(&mut session, ">>> ");
    session.send_line("quit").unwrap();
    expect(&mut session, "client ended: 0");
    expect(&mut session, "terminal as before");
}
