//! The client on a tree of processes: `ps`, `stack all` with the source
//! lines of a child's relative paths (found in the child's working
//! directory), `attach PID` on a child (its role in `status` while the
//! grant is held), and `revoke PID` when nothing is held.

use std::time::Duration;

use serde_json::Value;

use crate::util::{example, serial, wait_for, Controller, Kind};

/// A target that starts a Python child in `dir`, running `child.py` as
/// code compiled under that relative name (Python makes a script's or a
/// module's path absolute), and waits.
fn parent_script(dir: &std::path::Path) -> String {
    format!(
        "import subprocess, sys, time\n\
         code = \"exec(compile(open('child.py').read(), 'child.py', 'exec'))\"\n\
         child = subprocess.Popen([sys.executable, '-c', code], cwd={dir:?})\n\
         while True:\n    time.sleep(0.05)\n",
        dir = dir.display().to_string()
    )
}

/// Ends when its parent does (the controller ends only the target): a
/// leftover would run for ever.
const CHILD: &str = "import os, time\nparent = os.getppid()\ndef spin():\n    while os.getppid() == parent:\n        time.sleep(0.05)  # the child waits\n\nspin()\n";

/// The tree's (pid, parent) pairs, in `ps --json` order.
fn tree(controller: &Controller) -> (Vec<(u64, u64)>, Value) {
    let (status, out, err) = controller.run_client(&["ps", "--json"]);
    assert!(status.success(), "{out}{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    let pids = json["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pid"].as_u64().unwrap(),
                p["parent"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    (pids, json)
}

#[test]
fn a_child_of_the_target_through_the_client() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("child.py"), CHILD).unwrap();
    let parent = dir.path().join("parent.py");
    std::fs::write(&parent, parent_script(dir.path())).unwrap();
    let controller = Controller::start_on(Kind::Socket, &[parent.to_str().unwrap()]);
    let target = u64::from(controller.target_pid());
    wait_for("the child in the tree", Duration::from_secs(20), || {
        tree(&controller).0.len() == 2
    });
    let (pids, json) = tree(&controller);
    let child = pids[1].0;
    assert_eq!(pids, [(target, pids[0].1), (child, target)]);
    assert_eq!(json["forked"], true);

    // ps: the child's command indented under the target's; the note.
    let (status, out, err) = controller.run_client(&["ps"]);
    assert!(status.success(), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    let column = lines[0].find("COMMAND").unwrap();
    let (target_command, child_command) = (&lines[1][column..], &lines[2][column..]);
    assert!(target_command.ends_with("/parent.py"), "{out}");
    assert!(!target_command.starts_with(' '), "{out}");
    assert!(
        child_command.starts_with("  ") && !child_command.starts_with("   "),
        "{out}"
    );
    assert!(child_command.contains("child.py"), "{out}");
    assert!(
        lines[3].starts_with("note: the controller is not a subreaper"),
        "{out}"
    );

    // stack all (and the same with a PID): the child's relative file is
    // read in its working directory, not the client's.
    wait_for("the child in its loop", Duration::from_secs(20), || {
        let (_, out, _) = controller.run_client(&["stack", &child.to_string()]);
        out.contains("time.sleep(0.05)  # the child waits")
    });
    let (status, out, err) = controller.run_client(&["stack", "all"]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains(&format!("Process {target} (target) Python 3.14")),
        "{out}"
    );
    assert!(
        out.contains(&format!("Process {child} (child of {target}) Python 3.14")),
        "{out}"
    );
    assert!(
        out.contains(
            "  File \"child.py\", line 5, in spin\n    time.sleep(0.05)  # the child waits\n"
        ),
        "{out}"
    );

    // revoke PID when this client holds nothing there: it says so.
    let (status, out, err) = controller.run_client(&["revoke", &child.to_string()]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains(&format!(
            "holds no grant on PID {child}: nothing to withdraw"
        )),
        "{out}"
    );

    // attach PID: while the tool runs (a client of its own), status names
    // the child's role and the granted client; afterwards, no grant.
    let tool = format!("{} status", example("client").display());
    let (status, out, err) =
        controller.run_client(&["attach", &child.to_string(), "--with", &tool]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains(&format!("on PID {child} (child of {target})...")),
        "{out}"
    );
    let granted = out
        .lines()
        .find_map(|line| line.strip_prefix("Requesting ptrace permission for client PID "))
        .and_then(|rest| rest.strip_suffix("..."))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        out.contains(&format!(
            "  PID {child} (child of {target}): client PID {granted}\n"
        )),
        "{out}"
    );
    let (status, out, err) = controller.run_client(&["status"]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("grants: none"), "{out}");
}

/// A target whose names carry terminal escapes and line breaks: its
/// child's argv, a thread's name (its `comm`), a function's name, a file's
/// name and a source line. Run as `hostile.py DIR`. The child ends once
/// orphaned.
const HOSTILE: &str = r#"import subprocess, sys, threading, time
EVIL = "\x1b]0;TITLE\x07\x1b[2J\x1b[31mRED\nFAKE LINE\r\x9b0m\x7f"
src = sys.argv[1] + "/evil" + EVIL + ".py"
with open(src, "w") as f:
    f.write("def f():\n    while True:\n        time.sleep(0.05)  # \x1b[5mBLINK\x9b2J\x7f\n")
ns = {"time": time}
exec(compile(open(src).read(), src, "exec"), ns)
f = ns["f"]
f.__code__ = f.__code__.replace(co_name="fn" + EVIL, co_qualname="fn" + EVIL)
def run():
    with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as comm:
        comm.write("t\x1b[2J\n\r\x9bx")
    f()
threading.Thread(target=run, daemon=True).start()
child = "import os, time\nparent = os.getppid()\nwhile os.getppid() == parent: time.sleep(0.05)"
subprocess.Popen([sys.executable, "-c", child, "arg" + EVIL])
while True:
    time.sleep(0.05)
"#;

/// [`HOSTILE`]'s `EVIL`, as the client shows it.
const EVIL_SHOWN: &str = "\\x1b]0;TITLE\\x07\\x1b[2J\\x1b[31mRED\\nFAKE LINE\\r\\u{9b}0m\\x7f";

/// The control characters of `text` (C0, DEL, C1) but its newlines.
fn controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| c != '\n' && (c.is_ascii_control() || ('\u{80}'..='\u{9f}').contains(&c)))
        .collect()
}

#[test]
fn names_with_control_characters_are_escaped() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hostile.py");
    std::fs::write(&script, HOSTILE).unwrap();
    let controller = Controller::start_on(
        Kind::Socket,
        &[script.to_str().unwrap(), dir.path().to_str().unwrap()],
    );
    wait_for("the child in the tree", Duration::from_secs(20), || {
        tree(&controller).0.len() == 2
    });
    wait_for("the thread in f", Duration::from_secs(20), || {
        let (_, out, _) = controller.run_client(&["stack"]);
        out.contains("BLINK")
    });

    // ps: the child's argv, escaped, on its one line.
    let (status, out, err) = controller.run_client(&["ps"]);
    assert!(status.success(), "{out}{err}");
    assert_eq!(controls(&out), [], "{out:?}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        out.lines()
            .nth(2)
            .unwrap()
            .ends_with(&format!(" arg{EVIL_SHOWN}")),
        "{out}"
    );

    // stack (the target's threads) and stack all: every field escaped,
    // each line one of the layout's own.
    for args in [&["stack"][..], &["stack", "all"]] {
        let (status, out, err) = controller.run_client(args);
        assert!(status.success(), "{args:?}: {out}{err}");
        assert_eq!(controls(&out), [], "{args:?}: {out:?}");
        for line in out.lines() {
            assert!(
                ["Process ", "Thread ", "  File ", "    ", "  ("]
                    .iter()
                    .any(|start| line.starts_with(start))
                    || line.is_empty(),
                "{args:?}: a line of no layout: {line:?} in\n{out}"
            );
        }
        assert!(out.contains("Thread "), "{out}");
        assert!(
            out.contains(r#" "t\x1b[2J\n\r\u{9b}x" ["#),
            "{args:?}: thread name: {out}"
        );
        assert!(
            out.contains(&format!(
                "/evil{EVIL_SHOWN}.py\", line 3, in fn{EVIL_SHOWN}\n"
            )),
            "{args:?}: file and function: {out}"
        );
        assert!(
            out.contains("\n    time.sleep(0.05)  # \\x1b[5mBLINK\\u{9b}2J\\x7f\n"),
            "{args:?}: source line: {out}"
        );
    }
    let (_, out, _) = controller.run_client(&["stack", "all"]);
    assert!(out.contains(&format!(" arg{EVIL_SHOWN}\n")), "{out}");

    // JSON keeps the data as it is: serde escapes C0 controls (DEL and
    // C1 pass through as they are).
    let (status, out, err) = controller.run_client(&["stack", "--json"]);
    assert!(status.success(), "{out}{err}");
    assert!(!out.contains(|c: char| c != '\n' && c < ' '), "{out:?}");
    let json: Value = serde_json::from_str(&out).unwrap();
    let evil = "\x1b]0;TITLE\x07\x1b[2J\x1b[31mRED\nFAKE LINE\r\u{9b}0m\x7f";
    let functions: Vec<&str> = json[0]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|thread| thread["frames"].as_array().unwrap())
        .map(|frame| frame["function"].as_str().unwrap())
        .collect();
    assert!(
        functions.contains(&format!("fn{evil}").as_str()),
        "{functions:?}"
    );
}
