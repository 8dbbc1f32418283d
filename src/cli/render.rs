//! What the client prints: `status`, `--list`, `ps` and `stack`, as text
//! for people (coloured on a terminal) and as JSON for scripts. Each
//! renderer returns the exact text to print, newlines included. The text
//! renderers escape the control characters of every field first (see
//! [`sanitize`](super::sanitize)): what the target controls cannot act on
//! the terminal or fake a line.

use std::ffi::OsStr;
use std::io::{self, IsTerminal, Write};
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::core::protocol::Status;
use crate::core::stacks::{threads_text, ProcessStacks};
use crate::core::tasks::{self, AsyncTasks};
use crate::core::tree::{Role, Tree, TreeProcess};
use crate::core::Pid;

use super::sanitize::{self, escape};

/// Writes what a command prints to `out` (standard output), flushed. A
/// reader that went away (`client stack --all | head -3`) is no failure:
/// it has what it wanted, and the command ends as if all was read.
pub(crate) fn emit(out: &mut impl Write, text: &[u8]) -> io::Result<()> {
    match out.write_all(text).and_then(|()| out.flush()) {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        written => written,
    }
}

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

/// `status`: one fact a line, the keys in a column, then the grants in
/// force, one a line, each process with its role: the target, or the child
/// of its parent as `parent_of` finds it (a process that is gone has none:
/// only its pid is shown).
pub(crate) fn status_text(
    status: &Status,
    parent_of: impl Fn(Pid) -> Option<Pid>,
    out: Paint,
) -> String {
    let mut status = status.clone();
    sanitize::status(&mut status);
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
        match key.as_str() {
            "session" | "ptrace_scope" | "time_left" => {}
            "max_grant" => rows.push(("max_grant", format!("{value} s"))),
            _ => rows.push((key.as_str(), value.clone())),
        }
    }
    let left = time_left(&status);
    let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (key, value) in rows {
        text.push_str(&format!(
            "{} {value}\n",
            out.heading(&format!("{key:<width$}"))
        ));
    }
    if status.grants.is_empty() {
        text.push_str(&format!("{} none\n", out.heading("grants:")));
    } else {
        text.push_str(&format!("{}\n", out.heading("grants:")));
        for grant in &status.grants {
            let role = if grant.process == status.pid {
                Some(Role::Target)
            } else {
                parent_of(grant.process).map(Role::ChildOf)
            };
            let role = role.map_or_else(String::new, |role| format!(" ({role})"));
            let left = match left(grant.process) {
                Some(secs) => format!(" ({secs} s left)"),
                None => String::new(),
            };
            text.push_str(&format!(
                "  PID {}{role}: client PID {}{left}\n",
                grant.process, grant.client
            ));
        }
    }
    text
}

/// The seconds left to the grant on a process, from `STATUS`'s
/// `time_left=<process>:<secs>,...` (`None`: no limit).
fn time_left(status: &Status) -> impl Fn(Pid) -> Option<u64> {
    let left: Vec<(Pid, u64)> = status
        .get("time_left")
        .unwrap_or("")
        .split(',')
        .filter_map(|pair| {
            let (process, secs) = pair.split_once(':')?;
            Some((process.parse().ok()?, secs.parse().ok()?))
        })
        .collect();
    move |process| {
        left.iter()
            .find(|(pid, _)| *pid == process)
            .map(|(_, secs)| *secs)
    }
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
    let left = time_left(status);
    let grants = status
        .grants
        .iter()
        .map(|grant| {
            json!({
                "process": grant.process.get(),
                "client": grant.client.get(),
                "time_left_secs": left(grant.process),
            })
        })
        .collect();
    object.insert("grants".into(), Value::Array(grants));
    for (key, value) in &status.extra {
        if key == "time_left" {
            continue;
        }
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
                escape(&session.name).into_owned(),
                status.pid.to_string(),
                uptime(status.uptime_secs),
                escape(&status.state).into_owned(),
                status.holder.map_or("-".to_owned(), |p| p.to_string()),
                escape(&status.command).into_owned(),
            ],
            Err(error) => [
                escape(&session.name).into_owned(),
                "-".into(),
                "-".into(),
                "no answer".into(),
                "-".into(),
                format!("({})", escape(error)),
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

/// `stack` of the target alone: its threads, as tracebacks; first, when
/// the agent in the target read them (which ran code in it), a line saying
/// so.
pub(crate) fn threads_stack_text(process: &ProcessStacks) -> String {
    let mut process = process.clone();
    sanitize::stacks(std::slice::from_mut(&mut process));
    let text = threads_text(&process.threads);
    match process.via_note() {
        Some(note) => format!("{note}\n{text}"),
        None => text,
    }
}

/// `stack --pid PID` and `stack --all`: each process under a header (pid,
/// role, Python version, command), then its threads or why they were
/// skipped; a blank line between processes.
pub(crate) fn processes_stack_text(stacks: &[ProcessStacks]) -> String {
    let mut stacks = stacks.to_vec();
    sanitize::stacks(&mut stacks);
    stacks
        .iter()
        .map(ProcessStacks::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `stack --json`: the processes' stacks, always a list.
pub(crate) fn stacks_json_text(stacks: &[ProcessStacks]) -> String {
    let text = serde_json::to_string_pretty(stacks).expect("stacks always serialize");
    format!("{text}\n")
}

/// `tasks`: the asyncio task tree ([`tasks::tasks_text`]), its names
/// escaped; the cycles when tasks await each other in a circle.
pub(crate) fn tasks_text(tasks: &AsyncTasks) -> Result<String, String> {
    let mut tasks = tasks.clone();
    sanitize::tasks(&mut tasks);
    tasks::tasks_text(&tasks).map_err(|cycles| cycles.to_string().trim_end().to_owned())
}

/// `tasks --json`: the tasks as the controller sent them.
pub(crate) fn tasks_json_text(tasks: &AsyncTasks) -> String {
    let text = serde_json::to_string_pretty(tasks).expect("tasks always serialize");
    format!("{text}\n")
}

/// What `ps` says under the tree when the controller is not a subreaper.
pub(crate) const NOT_A_SUBREAPER: &str = "note: the controller is not a subreaper: \
    a process that daemonises (double fork) leaves this tree";

/// `ps`: the tree as a table, in the order `PS` gives (depth first, the
/// target first), each process's command indented two spaces per
/// generation below the first listed (as `ps f` does). Under it, when the
/// controller is not a subreaper and the target has forked, what it cannot
/// see.
pub(crate) fn ps_text(tree: &Tree, out: Paint) -> String {
    let mut tree = tree.clone();
    sanitize::tree(&mut tree);
    let rows: Vec<[String; 10]> = tree
        .processes
        .iter()
        .zip(depths(&tree.processes))
        .map(|(process, depth)| {
            [
                process.pid.to_string(),
                process.parent.map_or("-".to_owned(), |p| p.to_string()),
                // A letter from /proc; anything else (a controller's
                // reply says it) is shown as `?`.
                Some(process.state)
                    .filter(char::is_ascii_alphabetic)
                    .unwrap_or('?')
                    .to_string(),
                process.threads.to_string(),
                format!("{:.1}", process.cpu_percent),
                size(process.rss_bytes),
                uptime(process.uptime_secs),
                process.python.clone().unwrap_or_else(|| "-".to_owned()),
                process.holder.map_or("-".to_owned(), |p| p.to_string()),
                format!("{}{}", "  ".repeat(depth), process.command),
            ]
        })
        .collect();
    let mut text = table(
        [
            "PID", "PPID", "S", "THR", "CPU%", "RSS", "UPTIME", "PYTHON", "GRANT", "COMMAND",
        ],
        &rows,
        out,
    );
    if !tree.subreaper && (tree.processes.len() > 1 || tree.forked) {
        text.push_str(NOT_A_SUBREAPER);
        text.push('\n');
    }
    if let Some(cut) = &tree.cut {
        text.push_str(&format!("note: the list is cut: {cut}\n"));
    }
    text
}

/// `ps --json`: the tree as `PS` sent it.
pub(crate) fn ps_json_text(tree: &Tree) -> String {
    let text = serde_json::to_string_pretty(tree).expect("a tree always serializes");
    format!("{text}\n")
}

/// The depth of each process of `processes`, listed depth first (as
/// [`Tree::processes`] are): 0 for one whose parent is not among those
/// above it (the target, a process adopted by the controller), else one
/// more than its parent's. One pass, with the stack of the ancestors of the
/// process before: its parent is on it, or the process starts a new root.
fn depths(processes: &[TreeProcess]) -> Vec<usize> {
    let mut ancestors: Vec<Pid> = Vec::new();
    processes
        .iter()
        .map(|process| {
            while ancestors
                .last()
                .is_some_and(|&above| Some(above) != process.parent)
            {
                ancestors.pop();
            }
            let depth = ancestors.len();
            ancestors.push(process.pid);
            depth
        })
        .collect()
}

/// Bytes, as `ps` and `top` show sizes: `512B`, `4.0K`, `12.3M`, `1.5G`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// Rows in columns as wide as their widest cell; numbers to the right, the
/// last column unpadded.
fn table<const N: usize>(headings: [&str; N], rows: &[[String; N]], out: Paint) -> String {
    let right = |column: usize| {
        matches!(
            headings[column],
            "PID" | "PPID" | "THR" | "CPU%" | "RSS" | "UPTIME" | "HOLDER" | "GRANT"
        )
    };
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

/// `audit --json`: one record a line (JSON Lines), as the controller's
/// `--audit-log` file has them.
pub(crate) fn audit_json_lines(records: &[serde_json::Value]) -> String {
    records.iter().map(|record| format!("{record}\n")).collect()
}

/// `audit`: one line per record, oldest first: its time, event and result,
/// who asked (pid, user, executable; `unverified` where the transport could
/// not tell), on which process, and the cause, duration or reason.
pub(crate) fn audit_text(records: &[serde_json::Value]) -> String {
    use std::fmt::Write as _;
    if records.is_empty() {
        return "No audit records\n".to_owned();
    }
    let text = |value: &serde_json::Value| value.as_str().unwrap_or("").to_owned();
    let mut out = format!(
        "{:<24} {:<13} {:<8} {:<32} {:<10} DETAIL\n",
        "TIME", "EVENT", "RESULT", "PEER", "PROCESS"
    );
    for record in records {
        let peer = &record["peer"];
        let who = if peer["verified"].as_bool() == Some(true) {
            let user = peer["user"]
                .as_str()
                .map_or_else(|| format!("uid {}", peer["uid"]), str::to_owned);
            let exe = peer["exe"]
                .as_str()
                .map_or("", |exe| exe.rsplit('/').next().unwrap_or(exe));
            format!("{} {user} {exe}", peer["pid"])
        } else {
            match peer["claimed_pid"].as_u64() {
                Some(pid) => format!("unverified (claims {pid})"),
                None => "unverified".to_owned(),
            }
        };
        let process = record["process"]["pid"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |pid| pid.to_string());
        let mut detail = Vec::new();
        if let Some(grantee) = record["grantee"].as_object() {
            let mut what = format!("grantee {}", grantee["pid"]);
            if let Some(cmdline) = grantee.get("cmdline").and_then(|c| c.as_str()) {
                let _ = write!(what, " ({cmdline})");
            }
            detail.push(what);
        }
        if let Some(cause) = record["cause"].as_str() {
            detail.push(format!("by {cause}"));
        }
        if let Some(ms) = record["duration_ms"].as_u64() {
            detail.push(format!("after {:.1} s", ms as f64 / 1000.0));
        }
        if let Some(reason) = record["reason"].as_str() {
            detail.push(reason.to_owned());
        }
        if detail.is_empty() {
            if let Some(request) = record["request"].as_str() {
                detail.push(request.to_owned());
            }
        }
        let _ = writeln!(
            out,
            "{:<24} {:<13} {:<8} {:<32} {:<10} {}",
            text(&record["time"]),
            text(&record["event"]),
            text(&record["result"]),
            super::sanitize::escape(&who),
            process,
            super::sanitize::escape(&detail.join("; "))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::Reply;

    fn pid(raw: u32) -> crate::core::Pid {
        crate::core::Pid::new(raw).unwrap()
    }

    /// A writer that fails every write with `kind`.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_whose_reader_went_away_is_no_failure_but_a_full_disk_is() {
        let mut out = Vec::new();
        emit(&mut out, b"text\n").unwrap();
        assert_eq!(out, b"text\n");
        emit(&mut Failing(io::ErrorKind::BrokenPipe), b"text\n").unwrap();
        let err = emit(&mut Failing(io::ErrorKind::StorageFull), b"text\n").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
    }

    /// A target's status, as the controller reports it.
    fn status() -> Status {
        let line =
            "STATUS pid=42 state=running uptime=65 granter=yama holder=7 grants=42:7,4250:8 \
                    ptrace_scope=1 session=target-9 grant_method=ptrace \
                    command=python3.14 examples/target.py\n";
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
            status_text(&status(), |_| None, Paint(false)),
            "session      target-9\n\
             target PID   42\n\
             command      python3.14 examples/target.py\n\
             state        running\n\
             uptime       1m05s\n\
             granter      yama\n\
             ptrace_scope 1\n\
             grant holder PID 7\n\
             grant_method ptrace\n\
             grants:\n  \
               PID 42 (target): client PID 7\n  \
               PID 4250: client PID 8\n"
        );
    }

    #[test]
    fn status_names_the_roles_of_the_processes_granted() {
        let parent_of = |process: Pid| {
            assert_eq!(process, pid(4250), "the target's parent is not asked");
            Some(pid(42))
        };
        let text = status_text(&status(), parent_of, Paint(false));
        assert!(
            text.ends_with(
                "\ngrants:\n  PID 42 (target): client PID 7\n  PID 4250 (child of 42): client PID 8\n"
            ),
            "{text}"
        );
        // A process that is gone: its pid alone.
        let text = status_text(&status(), |_| None, Paint(false));
        assert!(text.ends_with("\n  PID 4250: client PID 8\n"), "{text}");
        // Time-limited grants: their time left, and the controller's limit.
        let mut limited = status();
        limited.extra.push(("max_grant".into(), "600".into()));
        limited.extra.push(("time_left".into(), "42:590".into()));
        let text = status_text(&limited, |_| None, Paint(false));
        assert!(text.contains("\nmax_grant    600 s\n"), "{text}");
        assert!(!text.contains("time_left"), "{text}");
        assert!(
            text.ends_with(
                "\n  PID 42 (target): client PID 7 (590 s left)\n  PID 4250: client PID 8\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_as_text_with_little_to_say() {
        let status = Status {
            holder: None,
            grants: Vec::new(),
            extra: Vec::new(),
            ..status()
        };
        assert_eq!(
            status_text(&status, |_| None, Paint(false)),
            "target PID   42\n\
             command      python3.14 examples/target.py\n\
             state        running\n\
             uptime       1m05s\n\
             granter      yama\n\
             ptrace_scope ?\n\
             grant holder none\n\
             grants: none\n"
        );
    }

    #[test]
    fn status_keys_are_bold_on_a_terminal() {
        let text = status_text(&status(), |_| None, Paint(true));
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
                ("max_grant".into(), "600".into()),
                ("time_left".into(), "4250:42".into()),
            ],
            ..status()
        };
        assert_eq!(
            status_json_text(&facts),
            r#"{
  "command": "python3.14 examples/target.py",
  "grant_method": null,
  "granter": "yama",
  "grants": [
    {
      "client": 7,
      "process": 42,
      "time_left_secs": null
    },
    {
      "client": 8,
      "process": 4250,
      "time_left_secs": 42
    }
  ],
  "holder": 7,
  "max_grant": 600,
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
    fn list_escapes_what_sessions_say() {
        let mut sessions = sessions();
        sessions[0].name = "evil\x1b[2J".into();
        if let Ok(status) = &mut sessions[0].answer {
            status.command = "python \x1b]0;T\x07\nFAKE".into();
        }
        sessions[1].answer = Err("no\r\u{9b}31m".into());
        assert_eq!(
            list_table(&sessions, Paint(false)),
            "NAME          PID    UPTIME  STATE      HOLDER  COMMAND\n\
             evil\\x1b[2J  1240  1h02m05s  running        99  python \\x1b]0;T\\x07\\nFAKE\n\
             web-77          -         -  no answer       -  (no\\r\\u{9b}31m)\n"
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

    /// A gunicorn-like tree: the arbiter (the target), two workers, one with
    /// a child of its own, and a shell that is not Python.
    fn tree() -> Tree {
        let process = |raw, parent: Option<u32>, command: &str| {
            let mut process = TreeProcess::new(pid(raw));
            process.parent = parent.map(pid);
            process.state = 'S';
            process.threads = 1;
            process.python = Some("3.14.0".into());
            process.command = command.into();
            process
        };
        let mut arbiter = process(4242, Some(1000), "python3.14 -m gunicorn -w 2 app:app");
        arbiter.target = true;
        arbiter.cpu_percent = 1.25;
        arbiter.rss_bytes = 12_900_000;
        arbiter.uptime_secs = 192;
        arbiter.threads = 2;
        let mut worker = process(4243, Some(4242), "gunicorn: worker [app:app]");
        worker.state = 'R';
        worker.cpu_percent = 99.0;
        worker.rss_bytes = 2_500_000_000;
        worker.uptime_secs = 3725;
        worker.holder = Some(pid(777));
        let mut shell = process(4250, Some(4243), "sh -c sleep 100");
        shell.python = None;
        shell.rss_bytes = 900;
        let other = process(4244, Some(4242), "gunicorn: worker [app:app]");
        // Depth first, as PS lists them.
        Tree::new(vec![arbiter, worker, shell, other], false)
    }

    #[test]
    fn ps_is_a_tree() {
        assert_eq!(
            ps_text(&tree(), Paint(false)),
            " PID  PPID  S  THR  CPU%    RSS    UPTIME  PYTHON  GRANT  COMMAND\n\
             4242  1000  S    2   1.2  12.3M     3m12s  3.14.0      -  python3.14 -m gunicorn -w 2 app:app\n\
             4243  4242  R    1  99.0   2.3G  1h02m05s  3.14.0    777    gunicorn: worker [app:app]\n\
             4250  4243  S    1   0.0   900B        0s  -           -      sh -c sleep 100\n\
             4244  4242  S    1   0.0     0B        0s  3.14.0      -    gunicorn: worker [app:app]\n\
             note: the controller is not a subreaper: a process that daemonises (double fork) leaves this tree\n"
        );
    }

    #[test]
    fn ps_notes_a_missing_subreaper_only_once_the_target_has_forked() {
        let mut tree = tree();
        tree.subreaper = true;
        assert!(!ps_text(&tree, Paint(false)).contains("note:"));
        let mut alone = self::tree();
        alone.processes.truncate(1);
        let text = ps_text(&alone, Paint(false));
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains("note:"));
        // Its children are gone (or left the tree): the note still says
        // why a daemonised one would not be listed.
        alone.forked = true;
        let text = ps_text(&alone, Paint(false));
        assert_eq!(text.lines().nth(2), Some(NOT_A_SUBREAPER), "{text}");
        alone.subreaper = true;
        assert!(!ps_text(&alone, Paint(false)).contains("note:"));
        assert_eq!(
            ps_text(&Tree::default(), Paint(false)),
            "PID  PPID  S  THR  CPU%  RSS  UPTIME  PYTHON  GRANT  COMMAND\n"
        );
    }

    #[test]
    fn ps_shows_a_state_that_is_no_letter_as_a_question_mark() {
        let mut tree = tree();
        tree.subreaper = true;
        tree.processes[0].state = '\u{9b}';
        let text = ps_text(&tree, Paint(false));
        assert!(!text.contains('\u{9b}'), "{text:?}");
        let row = text.lines().nth(1).unwrap();
        assert_eq!(row.split_whitespace().nth(2), Some("?"), "{row}");
    }

    #[test]
    fn ps_says_when_the_controller_cut_the_list() {
        let mut tree = tree();
        tree.subreaper = true;
        tree.cut = Some("3 processes left out to fit a reply".into());
        let text = ps_text(&tree, Paint(false));
        assert_eq!(
            text.lines().last(),
            Some("note: the list is cut: 3 processes left out to fit a reply"),
            "{text}"
        );
    }

    #[test]
    fn depths_come_from_the_ancestors_above() {
        let process = |raw, parent: u32| {
            let mut process = TreeProcess::new(pid(raw));
            process.parent = Some(pid(parent));
            process
        };
        // The target's subtree, then two processes the (subreaper)
        // controller 10 adopted, one with a child; and one whose parent
        // is not listed at all.
        let processes = [
            process(42, 10),
            process(43, 42),
            process(45, 43),
            process(46, 45),
            process(44, 42),
            process(47, 44),
            process(50, 10),
            process(51, 50),
            process(60, 10),
            process(70, 69),
        ];
        assert_eq!(depths(&processes), [0, 1, 2, 3, 1, 2, 0, 1, 0, 0]);
        assert_eq!(depths(&[]), Vec::<usize>::new());
    }

    #[test]
    fn ps_as_json_is_the_tree() {
        let text = ps_json_text(&tree());
        let back: Tree = serde_json::from_str(&text).unwrap();
        assert_eq!(back, tree());
        let json: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["subreaper"], false);
        assert_eq!(json["processes"][1]["pid"], 4243);
        assert_eq!(json["processes"][1]["holder"], 777);
        assert_eq!(json["processes"][2]["python"], Value::Null);
        assert_eq!(json["forked"], false);
    }

    #[test]
    fn sizes() {
        let expected = [
            (0, "0B"),
            (1023, "1023B"),
            (1024, "1.0K"),
            (1536, "1.5K"),
            (1024 * 1024 - 1, "1.0M"),
            (12_900_000, "12.3M"),
            (1 << 30, "1.0G"),
            (5 << 40, "5.0T"),
            (u64::MAX, "16384.0P"),
        ];
        for (bytes, text) in expected {
            assert_eq!(size(bytes), text, "{bytes}");
        }
    }

    /// The arbiter's stacks (one thread holding the GIL, with a source
    /// line; one idle) and a worker that is not Python.
    fn stacks() -> Vec<ProcessStacks> {
        use crate::core::stacks::{Activity, Frame, ThreadStack};
        let mut main = ThreadStack::new(4242);
        main.main = true;
        main.name = Some("python3.14".into());
        main.activity = Some(Activity::Running);
        main.gil = Some(true);
        let mut frame = Frame::new("<module>", "app.py", Some(3));
        frame.source = Some("serve()".into());
        main.frames = vec![frame, Frame::new("serve", "/srv/lib.py", Some(10))];
        let mut idle = ThreadStack::new(4245);
        idle.activity = Some(Activity::Idle);
        idle.gil = Some(false);
        idle.frames = vec![Frame::new("wait", "threading.py", None)];
        let mut arbiter = ProcessStacks::new(pid(4242));
        arbiter.target = true;
        arbiter.python = Some("3.14.0".into());
        arbiter.command = "python3.14 app.py".into();
        arbiter.threads = vec![main, idle];
        let mut shell = ProcessStacks::new(pid(4250));
        shell.parent = Some(pid(4242));
        shell.command = "sh -c sleep 100".into();
        shell.skipped = Some("PID 4250 is not a Python process".into());
        vec![arbiter, shell]
    }

    const ARBITER_THREADS: &str = "\
Thread 4242 \"python3.14\" (main) [running, holds the GIL], most recent call last:
  File \"app.py\", line 3, in <module>
    serve()
  File \"/srv/lib.py\", line 10, in serve

Thread 4245 [idle], most recent call last:
  File \"threading.py\", line ?, in wait
";

    #[test]
    fn the_target_s_stack_is_its_threads() {
        assert_eq!(threads_stack_text(&stacks()[0]), ARBITER_THREADS);
    }

    #[test]
    fn a_stack_the_agent_read_says_so_first() {
        let mut target = stacks()[0].clone();
        target.via = Some("agent".into());
        assert_eq!(
            threads_stack_text(&target),
            format!("{}\n{ARBITER_THREADS}", crate::core::stacks::READ_BY_AGENT)
        );
    }

    #[test]
    fn stacks_of_several_processes_each_under_a_header() {
        assert_eq!(
            processes_stack_text(&stacks()),
            format!(
                "Process 4242 (target) Python 3.14.0: python3.14 app.py\n\
                 {ARBITER_THREADS}\n\
                 Process 4250 (child of 4242): sh -c sleep 100\n  \
                 (skipped: PID 4250 is not a Python process)\n"
            )
        );
        assert_eq!(processes_stack_text(&[]), "");
    }

    #[test]
    fn tasks_draw_a_tree_with_names_escaped_or_name_the_cycle() {
        use crate::core::stacks::Frame;
        use crate::core::tasks::AsyncTask;
        let mut tasks = AsyncTasks::new(Pid::new(42).unwrap());
        let mut main = AsyncTask::new(0x10, "Task-1");
        main.coroutine_stack
            .push(Frame::new("main", "app.py", Some(7)));
        let mut evil = AsyncTask::new(0x20, "evil\x1b[2Jname");
        evil.awaited_by.push(0x10);
        tasks.tasks = vec![main, evil];
        assert_eq!(
            tasks_text(&tasks).unwrap(),
            "└── (T) Task-1 (0x10)\n    └──  main app.py:7\n        \
             └── (T) evil\\x1b[2Jname (0x20)\n"
        );
        tasks.tasks[0].awaited_by.push(0x20);
        let err = tasks_text(&tasks).unwrap_err();
        assert!(
            err.ends_with("cycle: Task-1 (0x10) → evil\\x1b[2Jname (0x20) → Task-1 (0x10)"),
            "{err}"
        );
        let json: Value = serde_json::from_str(&tasks_json_text(&tasks)).unwrap();
        assert_eq!(json["tasks"][1]["awaited_by"][0], 0x10);
        assert_eq!(json["pid"], 42);
    }

    #[test]
    fn stacks_as_json_are_always_a_list() {
        let text = stacks_json_text(&stacks()[..1]);
        let json: Value = serde_json::from_str(&text).unwrap();
        let processes = json.as_array().unwrap();
        assert_eq!(processes.len(), 1);
        let main = &processes[0]["threads"][0];
        assert_eq!(main["native_thread_id"], 4242);
        assert_eq!(main["activity"], "running");
        assert_eq!(main["gil"], true);
        assert_eq!(main["frames"][0]["file"], "app.py");
        assert_eq!(main["frames"][0]["line"], 3);
        assert_eq!(main["frames"][0]["function"], "<module>");
        assert_eq!(main["frames"][0]["source"], "serve()");
        assert_eq!(main["frames"][1].get("source"), None);
        let back: Vec<ProcessStacks> = serde_json::from_str(&stacks_json_text(&stacks())).unwrap();
        assert_eq!(back, stacks());
        assert_eq!(stacks_json_text(&[]), "[]\n");
    }

    #[test]
    fn audit_records_read_as_a_table_with_the_unverified_marked() {
        assert_eq!(audit_text(&[]), "No audit records\n");
        let records: Vec<serde_json::Value> = [
            r#"{"time":"2026-12-02T15:20:23.042Z","event":"grant","result":"ok","peer":{"verified":true,"uid":1000,"pid":77,"user":"ann","exe":"/usr/bin/client"},"process":{"pid":4242},"grantee":{"pid":78,"cmdline":"python3.14 -m pdb -p 4242"}}"#,
            r#"{"time":"2026-12-02T15:21:00.000Z","event":"revoke","result":"ok","cause":"disconnect","duration_ms":36958,"peer":{"verified":false,"claimed_pid":78},"process":{"pid":4242}}"#,
            r#"{"time":"2026-12-02T15:21:01.000Z","event":"refusal","result":"refused","reason":"GRANT_ACCESS 1 refused: it is PID 1\u001b[2J","peer":{"verified":false}}"#,
        ]
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
        let text = audit_text(&records);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIME "));
        assert!(lines[1].contains(" grant ") && lines[1].contains("77 ann client"));
        assert!(
            lines[1].ends_with("grantee 78 (python3.14 -m pdb -p 4242)"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].contains("unverified (claims 78)")
                && lines[2].ends_with("by disconnect; after 37.0 s")
        );
        // What a peer chose is shown, never obeyed by the terminal.
        assert!(!lines[3].contains('\u{1b}'), "{}", lines[3]);
        assert_eq!(audit_json_lines(&records).lines().count(), 3);
    }
}
