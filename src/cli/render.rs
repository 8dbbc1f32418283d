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
    object.insert("pid".into(), status.pid.into());
    object.insert("state".into(), status.state.clone().into());
    object.insert("uptime_secs".into(), status.uptime_secs.into());
    object.insert("granter".into(), status.granter.clone().into());
    object.insert("holder".into(), status.holder.into());
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
