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

const CHILD: &str = "import time\n\ndef spin():\n    while True:\n        time.sleep(0.05)  # the child waits\n\nspin()\n";

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
