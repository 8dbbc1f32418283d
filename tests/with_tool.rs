//! `attach --with`: real ptrace tools (gdb, py-spy) as the debugger against
//! the real target, a tool that is not installed, and the other attach
//! failures the client explains (no controller, no Python 3.14, remote
//! debugging disabled in the target, target gone).

use std::path::PathBuf;
use std::process::Command;

use crate::util::{alive, python314, run, serial, wait_for, Controller, Kind, SOON};

crate::per_transport!(gdb_attaches_through_the_grant_and_the_target_carries_on);

/// py-spy: `$HELI_PY_SPY`, else scripts/test.sh's install, else `PATH`.
pub fn py_spy() -> PathBuf {
    let candidates = std::env::var_os("HELI_PY_SPY")
        .map(PathBuf::from)
        .into_iter()
        .chain([crate::util::deps_dir().join("tools/bin/py-spy")])
        .chain(
            std::env::var_os("PATH")
                .map(|path| {
                    std::env::split_paths(&path)
                        .map(|dir| dir.join("py-spy"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("py-spy not found: run scripts/test.sh (it installs it) or set HELI_PY_SPY");
}

fn holder(controller: &Controller) -> serde_json::Value {
    let (status, out, err) = controller.run_client(&["status", "--json"]);
    assert!(status.success(), "{err}");
    serde_json::from_str::<serde_json::Value>(&out).unwrap()["holder"].clone()
}

fn gdb_attaches_through_the_grant_and_the_target_carries_on(kind: Kind) {
    let _serial = serial();
    let controller = Controller::demo(kind);
    let target = controller.target_pid();
    let (status, out, err) = controller.run_client(&[
        "attach",
        "--with",
        "gdb -nx -batch -iex 'set debuginfod enabled off' -p {pid} -ex 'info inferiors'",
    ]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains("Permission granted"), "{out}");
    assert!(out.contains("Running gdb -nx -batch"), "{out}");
    // `info inferiors` names the process gdb attached to: the target.
    let inferior = out
        .lines()
        .find(|line| line.starts_with("* 1"))
        .unwrap_or_else(|| panic!("no inferior listed:\n{out}\n{err}"));
    assert!(
        inferior.contains(&format!("process {target} ")),
        "{inferior}"
    );
    assert!(
        out.contains(&format!("[Inferior 1 (process {target}) detached]")),
        "{out}"
    );
    assert!(out.contains("gdb exited"), "{out}");
    // gdb detached: the target carries on, and the grant is withdrawn.
    assert!(alive(target));
    let before = controller.iterations();
    wait_for("the target to carry on", SOON, || {
        controller.iterations() > before
    });
    assert!(holder(&controller).is_null());
}

#[test]
fn py_spy_dumps_the_target_s_python_stack() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Socket);
    let target = controller.target_pid();
    // Past its imports: in its work loop.
    wait_for("the target's first iteration", SOON, || {
        controller.iterations() > 0
    });
    let tool = format!("{} dump --pid {{pid}}", py_spy().display());
    let (status, out, err) = controller.run_client(&["attach", "--with", &tool]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains(&format!("Process {target}:")), "{out}{err}");
    assert!(out.contains("Python v3.14"), "{out}");
    assert!(out.contains("work_loop (target.py:"), "{out}");
    assert!(out.contains("<module> (target.py:"), "{out}");
    assert!(out.contains("py-spy exited"), "{out}");
    assert!(holder(&controller).is_null());
}

#[test]
fn a_missing_tool_is_named_with_how_to_install_it() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Socket);
    let empty = tempfile::tempdir().unwrap();
    let attach_with = |tool: &str| {
        let mut command = controller.client();
        command
            .env("PATH", empty.path())
            .args(["attach", "--with", tool]);
        run(command)
    };
    let (status, out, err) = attach_with("gdb -p {pid}");
    assert_eq!(status.code(), Some(5), "{out}{err}");
    assert!(
        err.contains("gdb not found: install it, e.g. apt-get install gdb"),
        "{err}"
    );
    // Nothing was asked of the controller.
    assert!(!out.contains("Requesting"), "{out}");
    assert!(holder(&controller).is_null());

    let (status, _, err) = attach_with("/nonexistent/heli-debugger {pid}");
    assert_eq!(status.code(), Some(5), "{err}");
    assert!(
        err.contains("/nonexistent/heli-debugger not found or not executable"),
        "{err}"
    );
    let (status, _, err) = attach_with("gdb -p '{pid}");
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("unmatched quote"), "{err}");
}

#[test]
fn remote_debugging_disabled_in_the_target_is_explained() {
    let _serial = serial();
    let python = python314();
    let controller = Controller::start_on(
        Kind::Socket,
        &[
            "--",
            python.to_str().unwrap(),
            "-X",
            "disable-remote-debug",
            "examples/target.py",
        ],
    );
    let target = controller.target_pid();
    let (status, out, err) = controller.run_client(&["attach"]);
    assert_eq!(status.code(), Some(5), "{out}{err}");
    // pdb's own words still reach the user, then what they mean.
    assert!(err.contains("Remote debugging is not enabled"), "{err}");
    assert!(
        err.contains(&format!(
            "Remote debugging is disabled in target PID {target}"
        )),
        "{err}"
    );
    assert!(err.contains("PYTHON_DISABLE_REMOTE_DEBUG"), "{err}");
    assert!(err.contains("-X disable-remote-debug"), "{err}");
    assert!(alive(target));
}

#[test]
fn no_python_no_controller_and_a_gone_target_are_explained() {
    let _serial = serial();
    // No Python 3.14 for pdb (the target is no Python): refused before
    // any grant, with what to do.
    let controller = Controller::start_on(Kind::Socket, &["--", "sleep", "600"]);
    let mut command = controller.client();
    command
        .env("HELI_PYTHON", "/nonexistent/python3.14")
        .arg("attach");
    let (status, out, err) = run(command);
    assert_eq!(status.code(), Some(5), "{out}{err}");
    assert!(err.contains("Python 3.14+ required"), "{err}");
    assert!(err.contains("HELI_PYTHON"), "{err}");
    assert!(err.contains("attach --with 'gdb -p {pid}'"), "{err}");
    assert!(!out.contains("Requesting"), "{out}");
    drop(controller);

    // No controller at all.
    let empty = tempfile::tempdir().unwrap();
    let mut command = Command::new(crate::util::example("client"));
    command.env("XDG_RUNTIME_DIR", empty.path()).arg("attach");
    let (status, _, err) = run(command);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(err.contains("Controller not running"), "{err}");
    assert!(err.contains("Start the controller first"), "{err}");

    // The target keeps exiting; between restarts there is nothing to
    // attach to, and the client says so.
    let controller = Controller::start_on(Kind::Socket, &["--restart", "always", "--", "false"]);
    let mut last = String::new();
    wait_for("an attach between restarts", SOON, || {
        let (status, _, err) = controller.run_client(&["attach"]);
        last = err;
        status.code() == Some(1) && last.contains("The target is not running")
    });
    assert!(last.contains("(restarting in"), "{last}");
    assert!(last.contains("it exited, nothing to attach to"), "{last}");
}
