//! The client as people use it: the `>>> ` prompt in a pseudo-terminal
//! (history, completion, Ctrl-C, help, unknown commands, end of input),
//! piped input, colours, and the output for scripts (`--json`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rexpect::process::WaitStatus;
use rexpect::session::{spawn_with_options, Options, PtySession};
use serde_json::Value;

use crate::util::{command, goodbye, run_with_input, serial, wait_exit, Controller, Kind, SOON};

crate::per_transport!(status_json_has_the_fields);

fn prompt_session(command: Command, strip_colours: bool) -> PtySession {
    let options = Options::new()
        .timeout_ms(Some(30_000))
        .strip_ansi_escape_codes(strip_colours);
    let mut session = spawn_with_options(command, options).unwrap();
    session.exp_string(">>> ").unwrap();
    session
}

/// Sends keys without a newline.
fn keys(session: &mut PtySession, keys: &str) {
    session.send(keys).unwrap();
    session.flush().unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn history_is_recalled_with_up_arrow_and_kept_per_user() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Socket);
    let target = controller.target_pid();
    let state = tempfile::tempdir().unwrap();
    let xdg_state = state.path().join("state");
    let client = || {
        let mut command = controller.client();
        command.env("XDG_STATE_HOME", &xdg_state);
        command
    };

    let pid_shown = format!("\n{target}\r\n");
    let mut session = prompt_session(client(), true);
    command(&mut session, "pid", &[&pid_shown]);
    // Up-arrow brings `pid` back; Enter runs it again.
    keys(&mut session, "\x1b[A");
    command(&mut session, "", &[&pid_shown]);
    session.send_line("quit").unwrap();
    goodbye(&mut session);

    let history = xdg_state.join("heli").join("history");
    let text = std::fs::read_to_string(&history).unwrap();
    assert!(text.lines().any(|l| l == "pid"), "{text:?}");
    assert_eq!(mode(&xdg_state.join("heli")), 0o700);
    assert_eq!(mode(&history), 0o600);

    // A new client finds it: two Up-arrows pass `quit` and reach `pid`.
    let mut session = prompt_session(client(), true);
    keys(&mut session, "\x1b[A\x1b[A");
    command(&mut session, "", &[&pid_shown]);
    session.send_control('d').unwrap();
    goodbye(&mut session);
}

#[test]
fn tab_completes_ctrl_c_clears_help_unknown_and_eof() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Socket);
    let target = controller.target_pid();
    let mut session = prompt_session(controller.client(), true);

    // `att<TAB>` becomes `attach`: the line then runs as attach --with, and
    // the missing tool is reported (an uncompleted `att` would be unknown).
    keys(&mut session, "att\t");
    session.exp_string("attach").unwrap();
    session
        .send_line(" --with 'no-such-debugger-heli -p {pid}'")
        .unwrap();
    let before = session
        .exp_string("no-such-debugger-heli not found")
        .unwrap();
    assert!(!before.contains("Unknown command"), "{before}");
    session.exp_string(">>> ").unwrap();
    keys(&mut session, "status --j\t");
    session.exp_string("--json").unwrap();
    command(&mut session, "", &["\"uptime_secs\""]);

    // Ctrl-C drops the line typed so far and keeps the client.
    keys(&mut session, "frob");
    session.exp_string("frob").unwrap();
    session.send_control('c').unwrap();
    session.exp_string(">>> ").unwrap();
    session.send_line("pid").unwrap();
    let before = session.exp_string(&format!("\n{target}\r\n")).unwrap();
    assert!(!before.contains("Unknown command"), "{before}");
    session.exp_string(">>> ").unwrap();

    command(
        &mut session,
        "help",
        &["attach --with 'CMD'", "quit, exit, Ctrl-D"],
    );
    let unknown = "Unknown command: frobnicate now. Type 'help'";
    command(&mut session, "frobnicate now", &[unknown]);
    session.send_control('d').unwrap();
    goodbye(&mut session);
    let status = session.process().wait().unwrap();
    assert!(matches!(status, WaitStatus::Exited(_, 0)), "{status:?}");
    // The controller was not disturbed.
    assert_eq!(controller.target_pid(), target);
}

#[test]
fn piped_commands_run_without_prompt_or_history() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Socket);
    let target = controller.target_pid();
    let (status, out, _) = run_with_input(controller.client(), b"pid\n\nstatus\nnonsense\n");
    assert!(status.success(), "{out}");
    assert!(out.lines().any(|l| l == target.to_string()), "{out}");
    assert!(out.contains("grant holder"), "{out}");
    assert!(out.contains("Unknown command: nonsense"), "{out}");
    assert!(out.trim_end().ends_with("Goodbye!"), "{out}");
    assert!(!out.contains(">>>"), "{out}");
    assert!(!out.contains('\x1b'), "no colours into a pipe: {out:?}");
    assert!(!controller.dir.path().join("state/heli").exists());
}

#[test]
fn colours_only_on_a_terminal_without_no_color() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Socket);
    let bold_heading = "\x1b[1mtarget PID";

    let mut session = prompt_session(controller.client(), false);
    session.send_line("status").unwrap();
    session.exp_string(bold_heading).unwrap();
    session.exp_string(">>> ").unwrap();
    session.send_line("quit").unwrap();
    session.exp_eof().unwrap();

    let mut command = controller.client();
    command.env("NO_COLOR", "1");
    let mut session = prompt_session(command, false);
    session.send_line("status").unwrap();
    let shown = session.exp_string("grant holder").unwrap();
    assert!(shown.contains("target PID"), "{shown:?}");
    assert!(!shown.contains("\x1b[1m"), "{shown:?}");
    session.send_line("quit").unwrap();
    session.exp_eof().unwrap();

    let (status, out, _) = controller.run_client(&["status"]);
    assert!(status.success());
    assert!(
        out.contains("target PID") && !out.contains('\x1b'),
        "{out:?}"
    );
}

fn status_json_has_the_fields(kind: Kind) {
    let _serial = serial();
    let controller = Controller::demo(kind);
    let target = controller.target_pid();
    let (status, out, err) = controller.run_client(&["status", "--json"]);
    assert!(status.success(), "{err}");
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["pid"], target, "{json}");
    assert_eq!(json["state"], "running", "{json}");
    assert!(json["uptime_secs"].is_u64(), "{json}");
    assert!(json["granter"].is_string(), "{json}");
    assert!(json["holder"].is_null(), "{json}");
    assert!(
        json["command"]
            .as_str()
            .unwrap()
            .ends_with("examples/target.py"),
        "{json}"
    );
    assert!(json.get("ptrace_scope").is_some(), "{json}");
    if kind == Kind::Socket {
        assert_eq!(json["session"], "test", "{json}");
        assert_eq!(json["clients"], "authenticated", "{json}");
    } else {
        // Named pipes cannot tell who asks: STATUS says so.
        assert_eq!(json["clients"], "unauthenticated", "{json}");
    }
    // --json only goes with status and --list.
    let (status, _, err) = controller.run_client(&["pid", "--json"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--json goes with status or --list"), "{err}");
}

#[test]
fn list_in_columns_and_as_json() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Socket);
    let target = controller.target_pid();

    let (status, out, err) = controller.run_client(&["--list", "--json"]);
    assert!(status.success(), "{err}");
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let sessions = json.as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{json}");
    assert_eq!(sessions[0]["name"], "test");
    assert_eq!(sessions[0]["pid"], target);
    assert_eq!(sessions[0]["state"], "running");
    assert!(sessions[0]["uptime_secs"].is_u64(), "{json}");
    assert!(
        sessions[0]["socket"]
            .as_str()
            .unwrap()
            .ends_with("test.sock"),
        "{json}"
    );

    // Columns: each heading's edge lines up with its values.
    let (status, out, _) = controller.run_client(&["--list"]);
    assert!(status.success());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let (heading, row) = (lines[0], lines[1]);
    assert!(heading.starts_with("NAME"), "{out}");
    let pid_end = heading.find("PID").unwrap() + 3;
    assert_eq!(
        row.find(&target.to_string()).unwrap() + target.to_string().len(),
        pid_end,
        "PID not right-aligned under its heading:\n{out}"
    );
    let command_at = heading.find("COMMAND").unwrap();
    assert!(
        row[command_at..].ends_with("examples/target.py"),
        "COMMAND not under its heading:\n{out}"
    );
    let state_at = heading.find("STATE").unwrap();
    assert!(row[state_at..].starts_with("running"), "{out}");

    // No session: a sentence, or an empty JSON list.
    let empty = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut child = controller
            .client()
            .args(args)
            .env("XDG_RUNTIME_DIR", empty.path())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(wait_exit(&mut child, SOON).success());
        let output = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(run(&["--list"]).starts_with("No heli session is running"));
    assert_eq!(run(&["--list", "--json"]).trim(), "[]");
}
