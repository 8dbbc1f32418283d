//! What the client prints: `status`, `--list` and `stack`, as text for
//! people (coloured on a terminal) and as JSON for scripts. Each renderer
//! returns the exact text to print, newlines included.

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::core::protocol::Status;

/// ANSI colours for one output stream: only on a terminal, and only when
/// `NO_COLOR` is unset or empty (<https://no-color.org>).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Paint(pub(crate) bool);

impl Paint {
    /// Colours for a stream, from whether it is a terminal and `NO_COLOR`.
    pub(crate) fn choose(is_terminal: bool, no_color: Option<&OsStr>) -> Paint {
        Paint(is_terminal && no_color.is_none_or(|v| v.is_empty()))
    }

    pub(crate) fn stdout() -> Paint {
        Paint::choose(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        )
    }

    pub(crate) fn stderr() -> Paint {
        Paint::choose(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        )
    }

    fn paint(self, sgr: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// Green: it worked.
    pub(crate) fn good(self, text: &str) -> String {
        self.paint("32", text)
    }

    /// Red: it failed.
    pub(crate) fn bad(self, text: &str) -> String {
        self.paint("31", text)
    }

    /// Bold: a heading or a key.
    pub(crate) fn heading(self, text: &str) -> String {
        self.paint("1", text)
    }
}

/// `status`: one fact a line, the keys in a column.
pub(crate) fn status_text(status: &Status, out: Paint) -> String {
    let mut rows = Vec::new();
    if let Some(session) = status.get("session") {
        rows.push(("session", session.to_owned()));
    }
    rows.extend([
        ("target PID", status.pid.to_string()),
        ("command", status.command.clone()),
        ("state", status.state.clone()),
        ("uptime", uptime(status.uptime_secs)),
        ("granter", status.granter.clone()),
        (
            "ptrace_scope",
            status.get("ptrace_scope").unwrap_or("?").to_owned(),
        ),
        (
            "grant holder",
            status
                .holder
                .map_or("none".to_owned(), |p| format!("PID {p}")),
        ),
    ]);
    for (key, value) in &status.extra {
        if key != "session" && key != "ptrace_scope" {
            rows.push((key.as_str(), value.clone()));
        }
    }
    let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (key, value) in rows {
        text.push_str(&format!(
            "{} {value}\n",
            out.heading(&format!("{key:<width$}"))
        ));
    }
    text
}

/// `status --json`.
pub(crate) fn status_json_text(status: &Status) -> String {
    format!("{}\n", pretty(&Value::Object(status_json(status))))
}

/// A `STATUS` reply as a JSON object: the protocol's fields, then the
/// controller's extra facts (numbers as numbers, `none` as null).
fn status_json(status: &Status) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("pid".into(), status.pid.get().into());
    object.insert("state".into(), status.state.clone().into());
    object.insert("uptime_secs".into(), status.uptime_secs.into());
    object.insert("granter".into(), status.granter.clone().into());
    object.insert("holder".into(), status.holder.map(|pid| pid.get()).into());
    object.insert("command".into(), status.command.clone().into());
    for (key, value) in &status.extra {
        let value = match value.parse::<u64>() {
            Ok(number) => Value::from(number),
            Err(_) if value == "none" && key != "session" => Value::Null,
            Err(_) => Value::from(value.clone()),
        };
        object.entry(key.clone()).or_insert(value);
    }
    object
}

/// A live session of `--list`, and what its controller answered.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    /// The session's name.
    pub(crate) name: String,
    /// Its socket's path.
    pub(crate) socket: String,
    /// Its controller's `STATUS`, or why there was none.
    pub(crate) answer: Result<Status, String>,
}

/// `--list`: a table, numbers to the right.
pub(crate) fn list_table(sessions: &[Listed], out: Paint) -> String {
    let rows: Vec<[String; 6]> = sessions
        .iter()
        .map(|session| match &session.answer {
            Ok(status) => [
                session.name.clone(),
                status.pid.to_string(),
                uptime(status.uptime_secs),
                status.state.clone(),
                status.holder.map_or("-".to_owned(), |p| p.to_string()),
                status.command.clone(),
            ],
            Err(error) => [
                session.name.clone(),
                "-".into(),
                "-".into(),
                "no answer".into(),
                "-".into(),
                format!("({error})"),
            ],
        })
        .collect();
    table(
        ["NAME", "PID", "UPTIME", "STATE", "HOLDER", "COMMAND"],
        &rows,
        out,
    )
}

/// `--list` when no session runs; `dir` is where they would be.
pub(crate) fn no_sessions(dir: &Path) -> String {
    format!("No heli session is running (none in {}).\n", dir.display())
}

/// `--list --json`: an array of the sessions' `status --json` objects, with
/// their `name` and `socket`.
pub(crate) fn list_json_text(sessions: &[Listed]) -> String {
    let objects = sessions
        .iter()
        .map(|session| match &session.answer {
            Ok(status) => {
                let mut object = status_json(status);
                object.insert("name".into(), session.name.clone().into());
                object.insert("socket".into(), session.socket.clone().into());
                Value::Object(object)
            }
            Err(error) => json!({
                "name": session.name,
                "socket": session.socket,
                "state": "no answer",
                "error": error,
            }),
        })
        .collect();
    format!("{}\n", pretty(&Value::Array(objects)))
}

/// `stack`: the controller's text as it came.
pub(crate) fn stack_text(stack: &str) -> String {
    format!("{stack}\n")
}

/// Rows in columns as wide as their widest cell; numbers to the right, the
/// last column unpadded.
fn table<const N: usize>(headings: [&str; N], rows: &[[String; N]], out: Paint) -> String {
    let right = |column: usize| matches!(headings[column], "PID" | "UPTIME" | "HOLDER");
    let widths: Vec<usize> = (0..N)
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .chain([headings[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| -> String {
        let mut text = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if c + 1 == N {
                text.push_str(cell);
            } else if right(c) {
                text.push_str(&format!("{cell:>width$}  ", width = widths[c]));
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        text.trim_end().to_owned()
    };
    let mut text = format!("{}\n", out.heading(&line(headings.to_vec())));
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
        text.push('\n');
    }
    text
}

/// `3725` -> `1h02m05s`.
pub(crate) fn uptime(secs: u64) -> String {
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::Reply;

    fn pid(raw: u32) -> crate::core::Pid {
        crate::core::Pid::new(raw).unwrap()
    }

    /// A target's status, as the controller reports it.
    fn status() -> Status {
        let line = "STATUS pid=42 state=running uptime=65 granter=yama holder=7 ptrace_scope=1 \
                    session=target-9 grant_method=ptrace command=python3.14 examples/target.py\n";
        match Reply::parse(line).unwrap() {
            Reply::Status(status) => status,
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert_eq!(Paint::choose(true, None), Paint(true));
        assert_eq!(Paint::choose(true, Some(OsStr::new(""))), Paint(true));
        assert_eq!(Paint::choose(true, Some(OsStr::new("1"))), Paint(false));
        assert_eq!(Paint::choose(false, None), Paint(false));
        assert_eq!(Paint(true).good("ok"), "\x1b[32mok\x1b[0m");
        assert_eq!(Paint(true).bad("no"), "\x1b[31mno\x1b[0m");
        assert_eq!(Paint(true).heading("H"), "\x1b[1mH\x1b[0m");
        assert_eq!(Paint(false).good("ok"), "ok");
        assert_eq!(Paint(false).bad("no"), "no");
        assert_eq!(Paint(false).heading("H"), "H");
    }

    #[test]
    fn uptimes() {
        let expected = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (65, "1m05s"),
            (3599, "59m59s"),
            (3600, "1h00m00s"),
            (3725, "1h02m05s"),
            (100 * 3600 + 1, "100h00m01s"),
        ];
        for (secs, text) in expected {
            assert_eq!(uptime(secs), text, "{secs}");
        }
    }

    #[test]
    fn status_as_text() {
        assert_eq!(
            status_text(&status(), Paint(false)),
            "session      target-9\n\
             target PID   42\n\
             command      python3.14 examples/target.py\n\
             state        running\n\
             uptime       1m05s\n\
             granter      yama\n\
             ptrace_scope 1\n\
             grant holder PID 7\n\
             grant_method ptrace\n"
        );
    }

    #[test]
    fn status_as_text_with_little_to_say() {
        let status = Status {
            holder: None,
            extra: Vec::new(),
            ..status()
        };
        assert_eq!(
            status_text(&status, Paint(false)),
            "target PID   42\n\
             command      python3.14 examples/target.py\n\
             state        running\n\
             uptime       1m05s\n\
             granter      yama\n\
             ptrace_scope ?\n\
             grant holder none\n"
        );
    }

    #[test]
    fn status_keys_are_bold_on_a_terminal() {
        let text = status_text(&status(), Paint(true));
        assert!(
            text.starts_with(
                "\x1b[1msession     \x1b[0m target-9\n\x1b[1mtarget PID  \x1b[0m 42\n"
            ),
            "{text:?}"
        );
    }

    #[test]
    fn status_as_json() {
        let facts = Status {
            extra: vec![
                ("ptrace_scope".into(), "1".into()),
                ("session".into(), "none".into()),
                ("grant_method".into(), "none".into()),
                // An extra fact cannot replace one of the protocol's.
                ("pid".into(), "99".into()),
            ],
            ..status()
        };
        assert_eq!(
            status_json_text(&facts),
            r#"{
  "command": "python3.14 examples/target.py",
  "grant_method": null,
  "granter": "yama",
  "holder": 7,
  "pid": 42,
  "ptrace_scope": 1,
  "session": "none",
  "state": "running",
  "uptime_secs": 65
}
"#
        );
        let nobody = Status {
            holder: None,
            ..status()
        };
        let json: Value = serde_json::from_str(&status_json_text(&nobody)).unwrap();
        assert_eq!(json["holder"], Value::Null);
        assert_eq!(json["session"], "target-9");
        assert_eq!(json["grant_method"], "ptrace");
    }

    fn sessions() -> Vec<Listed> {
        vec![
            Listed {
                name: "target-1234".into(),
                socket: "/run/user/1000/heli/target-1234.sock".into(),
                answer: Ok(Status {
                    pid: pid(1240),
                    uptime_secs: 3725,
                    holder: Some(pid(99)),
                    ..status()
                }),
            },
            Listed {
                name: "web-77".into(),
                socket: "/run/user/1000/heli/web-77.sock".into(),
                answer: Err("Timed out".into()),
            },
        ]
    }

    #[test]
    fn list_as_a_table() {
        assert_eq!(
            list_table(&sessions(), Paint(false)),
            "NAME          PID    UPTIME  STATE      HOLDER  COMMAND\n\
             target-1234  1240  1h02m05s  running        99  python3.14 examples/target.py\n\
             web-77          -         -  no answer       -  (Timed out)\n"
        );
        let painted = list_table(&sessions(), Paint(true));
        assert!(
            painted.starts_with("\x1b[1mNAME          PID    UPTIME  STATE      HOLDER  COMMAND\x1b[0m\ntarget-1234  1240"),
            "{painted:?}"
        );
    }

    #[test]
    fn list_as_json() {
        let json: Value = serde_json::from_str(&list_json_text(&sessions())).unwrap();
        let sessions = json.as_array().unwrap();
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions[0]["name"], "target-1234");
        assert_eq!(
            sessions[0]["socket"],
            "/run/user/1000/heli/target-1234.sock"
        );
        assert_eq!(sessions[0]["pid"], 1240);
        assert_eq!(sessions[0]["holder"], 99);
        assert_eq!(sessions[0]["ptrace_scope"], 1);
        assert_eq!(sessions[0]["command"], "python3.14 examples/target.py");
        assert_eq!(
            sessions[1],
            serde_json::json!({
                "name": "web-77",
                "socket": "/run/user/1000/heli/web-77.sock",
                "state": "no answer",
                "error": "Timed out",
            })
        );
        assert_eq!(list_json_text(&[]), "[]\n");
    }

    #[test]
    fn list_without_sessions() {
        assert_eq!(
            no_sessions(Path::new("/run/user/1000/heli")),
            "No heli session is running (none in /run/user/1000/heli).\n"
        );
    }

    #[test]
    fn stacks_are_printed_as_they_came() {
        let stack = "Thread 12 (main):\n  File \"target.py\", line 43, in work_loop";
        assert_eq!(stack_text(stack), format!("{stack}\n"));
        assert_eq!(stack_text(""), "\n");
    }
}
