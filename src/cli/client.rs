//! The heli client: asks the controller for ptrace rights over its target
//! and attaches pdb (or another ptrace tool) to it.
//!
//! ```text
//! cargo run --example client                # interactive: attach, status, quit, help
//! cargo run --example client -- attach      # one command, then exit
//! cargo run --example client -- attach --with 'gdb -p {pid}'
//! cargo run --example client -- --list      # the running sessions (--json for scripts)
//! ```


use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use super::common::{self, TransportKind};
use crate::core::protocol::Status;
use crate::core::{Client, ErrorKind, Transport};
use crate::grant::{kill_with_parent, PtraceScope};
use crate::transport::{FifoTransport, SessionState, UnixSocketTransport};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, Helper};
use serde_json::{json, Map, Value};

/// Attaches pdb, or any ptrace tool, to the target of a running heli
/// controller.
///
/// Without a command, reads commands at a `>>> ` prompt (line editing,
/// history, Tab completion). Exit status: 0 on success, 1 when the
/// controller refused or the debugger failed, 2 for bad usage (or several
/// sessions and no --session), 3 when no controller runs, 4 on timeout, 5
/// when attaching is impossible here (ptrace_scope, no Python 3.14, the
/// debugger not installed, remote debugging disabled in the target).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// How to reach the controller
    #[arg(long, value_enum, default_value_t = TransportKind::Socket, global = true)]
    transport: TransportKind,

    /// The session to talk to (socket transport) [default: the only one
    /// running]
    #[arg(long, value_name = "NAME", global = true)]
    session: Option<String>,

    /// List the running sessions and exit
    #[arg(long)]
    list: bool,

    /// Print `status` or `--list` as JSON, for scripts
    #[arg(long, global = true)]
    json: bool,

    /// Directory of the named pipes (fifo transport) [default:
    /// /tmp/heliparent_debug/user_<name>]
    #[arg(long, value_name = "DIR", global = true)]
    fifo_dir: Option<PathBuf>,

    /// Seconds to wait for each reply of the controller
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0, global = true)]
    timeout: f64,

    /// Python 3.14+ to run pdb with, when the target's own interpreter is not
    /// one [default: $HELI_PYTHON, else python3.14, else python3]
    #[arg(long, value_name = "PATH", global = true)]
    python: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
enum Cmd {
    /// Get ptrace permission and attach pdb (or the --with tool) to the target
    Attach {
        /// Take the grant over from another client that holds it
        #[arg(long)]
        force: bool,
        /// Run COMMAND instead of pdb, on this terminal, as a child of this
        /// client; {pid} is replaced by the target's PID, e.g. 'gdb -p {pid}'
        /// or 'py-spy dump --pid {pid}'
        #[arg(long, value_name = "COMMAND")]
        with: Option<String>,
    },
    /// Print the target's PID
    Pid,
    /// Show what the controller and its target are doing (--json for scripts)
    Status,
    /// Print every thread's Python stack in the target, read from its
    /// memory without stopping it (no ptrace right needed)
    Stack,
    /// Withdraw the ptrace permission given to this client
    Revoke,
    /// Stop the target and the controller
    Terminate,
}

/// A failure with the exit status it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<crate::core::Error> for Failure {
    fn from(err: crate::core::Error) -> Self {
        let code = match err.kind() {
            ErrorKind::NotRunning => 3,
            ErrorKind::Timeout => 4,
            _ => 1,
        };
        let mut message = err.to_string();
        if err.kind() == ErrorKind::NotRunning {
            message.push_str(START_HINT);
        }
        if err.kind() == ErrorKind::Refused {
            if let Some(rest) = message.strip_prefix("Target process not running") {
                message = format!(
                    "The target is not running{}: it exited, nothing to attach to. \
                     `status` shows what the controller is doing.",
                    rest.trim_end()
                );
            }
        }
        Failure { code, message }
    }
}

impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        Failure::new(1, err.to_string())
    }
}

const START_HINT: &str =
    "\nStart the controller first, e.g.: cargo run --example controller -- examples/target.py";

/// What pdb prints when the target runs with remote debugging disabled.
const REMOTE_DEBUG_DISABLED: &str = "Remote debugging is not enabled";

/// ANSI colours for one output stream: only on a terminal, and only when
/// `NO_COLOR` is unset or empty (<https://no-color.org>).
#[derive(Clone, Copy, Debug)]
struct Paint(bool);

impl Paint {
    fn for_stream(is_terminal: bool) -> Paint {
        Paint(is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()))
    }

    fn stdout() -> Paint {
        Paint::for_stream(std::io::stdout().is_terminal())
    }

    fn stderr() -> Paint {
        Paint::for_stream(std::io::stderr().is_terminal())
    }

    fn paint(self, sgr: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn good(self, text: &str) -> String {
        self.paint("32", text)
    }

    fn bad(self, text: &str) -> String {
        self.paint("31", text)
    }

    fn heading(self, text: &str) -> String {
        self.paint("1", text)
    }
}

struct App<T> {
    client: Client<T>,
    python: Option<PathBuf>,
    /// Cleared while a debugger runs: Ctrl-C is then the debugger's, not ours.
    at_prompt: Arc<AtomicBool>,
    out: Paint,
}

/// The client program.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let result = if !(args.timeout.is_finite() && args.timeout > 0.0) {
        Err(Failure::new(
            2,
            "--timeout must be a positive number of seconds",
        ))
    } else if args.json && !args.list && args.command != Some(Cmd::Status) {
        Err(Failure::new(2, "--json goes with status or --list"))
    } else if args.list {
        list_sessions(&args)
    } else {
        match args.transport {
            TransportKind::Fifo => fifo_transport(&args).and_then(|t| run(t, &args)),
            TransportKind::Socket => socket_transport(&args).and_then(|t| run(t, &args)),
        }
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!(
                "{}",
                Paint::stderr().bad(&format!("❌ {}", failure.message))
            );
            ExitCode::from(failure.code)
        }
    }
}

fn fifo_transport(args: &Args) -> Result<FifoTransport, Failure> {
    Ok(match &args.fifo_dir {
        Some(dir) => FifoTransport::new(dir),
        None => FifoTransport::for_current_user()?,
    })
}

/// The session named by `--session`, else the only live one.
fn socket_transport(args: &Args) -> Result<UnixSocketTransport, Failure> {
    if let Some(name) = &args.session {
        return Ok(UnixSocketTransport::session(name)?);
    }
    let live: Vec<_> = UnixSocketTransport::sessions()?
        .into_iter()
        .filter(|entry| entry.state == SessionState::Live)
        .collect();
    match live.as_slice() {
        [] => Err(Failure::new(
            3,
            format!(
                "Controller not running: no heli session in {}{START_HINT}\n\
                 (as the same user and with the same XDG_RUNTIME_DIR; \
                 a controller started with --transport fifo needs it here too)",
                UnixSocketTransport::runtime_dir()?.display()
            ),
        )),
        [only] => Ok(only.transport()),
        several => Err(Failure::new(
            2,
            format!(
                "Several sessions are running ({}): choose one with --session NAME (see client --list)",
                several.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn run<T: Transport>(transport: T, args: &Args) -> Result<ExitCode, Failure> {
    let app = App::new(transport, args)?;
    Ok(match &args.command {
        Some(command) => {
            app.execute(command, args.json)?;
            ExitCode::SUCCESS
        }
        None => app.interactive(),
    })
}

/// `--list`: every session of the user, with what its controller says.
fn list_sessions(args: &Args) -> Result<ExitCode, Failure> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let entries = UnixSocketTransport::sessions()?;
    let mut rows = Vec::new();
    let mut objects = Vec::new();
    for entry in entries {
        match &entry.state {
            SessionState::Live => match Client::new(entry.transport()).timeout(timeout).status() {
                Ok(status) => {
                    rows.push([
                        entry.name.clone(),
                        status.pid.to_string(),
                        uptime(status.uptime_secs),
                        status.state.clone(),
                        status.holder.map_or("-".to_owned(), |p| p.to_string()),
                        status.command.clone(),
                    ]);
                    let mut object = status_json(&status);
                    object.insert("name".into(), entry.name.clone().into());
                    object.insert("socket".into(), entry.path.display().to_string().into());
                    objects.push(Value::Object(object));
                }
                Err(err) => {
                    rows.push([
                        entry.name.clone(),
                        "-".into(),
                        "-".into(),
                        "no answer".into(),
                        "-".into(),
                        format!("({err})"),
                    ]);
                    objects.push(json!({
                        "name": entry.name,
                        "socket": entry.path.display().to_string(),
                        "state": "no answer",
                        "error": err.to_string(),
                    }));
                }
            },
            SessionState::Dead => {
                eprintln!(
                    "removed the stale socket of session {} (its controller died)",
                    entry.name
                )
            }
            SessionState::Foreign(why) => eprintln!("ignored {}: {why}", entry.path.display()),
            _ => {}
        }
    }
    if args.json {
        println!("{}", pretty(&Value::Array(objects)));
    } else if rows.is_empty() {
        println!(
            "No heli session is running (none in {}).",
            UnixSocketTransport::runtime_dir()?.display()
        );
    } else {
        print_table(
            ["NAME", "PID", "UPTIME", "STATE", "HOLDER", "COMMAND"],
            &rows,
            Paint::stdout(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints rows in columns as wide as their widest cell; numbers to the
/// right, the last column unpadded.
fn print_table<const N: usize>(headings: [&str; N], rows: &[[String; N]], out: Paint) {
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
    println!("{}", out.heading(&line(headings.to_vec())));
    for row in rows {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// `3725` -> `1h02m05s`.
fn uptime(secs: u64) -> String {
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
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

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values always serialize")
}

/// The words of a REPL line, as a shell would split them.
fn parse_line(line: &str) -> Result<Option<Repl>, String> {
    let words = shlex::split(line).ok_or_else(|| format!("Unmatched quote in: {}", line.trim()))?;
    let Some((first, rest)) = words.split_first() else {
        return Ok(None);
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let unknown = || {
        format!(
            "Unknown command: {}. Type 'help' for the list of commands.",
            line.trim()
        )
    };
    let command =
        match (first.to_ascii_lowercase().as_str(), rest.as_slice()) {
            ("attach", options) => {
                let (mut force, mut with) = (false, None);
                let mut options = options.iter();
                while let Some(option) = options.next() {
                    match *option {
                        "--force" => force = true,
                        "--with" => match options.next() {
                            Some(tool) => with = Some((*tool).to_owned()),
                            None => return Err(
                                "attach --with needs a command, e.g. attach --with 'gdb -p {pid}'"
                                    .into(),
                            ),
                        },
                        other => match other.strip_prefix("--with=") {
                            Some(tool) => with = Some(tool.to_owned()),
                            None => return Err(unknown()),
                        },
                    }
                }
                Repl::Run(Cmd::Attach { force, with }, false)
            }
            ("pid", []) => Repl::Run(Cmd::Pid, false),
            ("stack", []) => Repl::Run(Cmd::Stack, false),
            ("status", []) => Repl::Run(Cmd::Status, false),
            ("status", ["--json"]) => Repl::Run(Cmd::Status, true),
            ("revoke", []) => Repl::Run(Cmd::Revoke, false),
            ("terminate", []) => Repl::Run(Cmd::Terminate, false),
            ("help" | "?", []) => Repl::Help,
            ("quit" | "exit", []) => Repl::Quit,
            _ => return Err(unknown()),
        };
    Ok(Some(command))
}

/// What a REPL line asks for.
enum Repl {
    /// A command, and whether to print JSON.
    Run(Cmd, bool),
    Help,
    Quit,
}

/// The REPL's commands, for Tab completion.
const COMMANDS: [&str; 9] = [
    "attach",
    "pid",
    "stack",
    "status",
    "revoke",
    "terminate",
    "help",
    "quit",
    "exit",
];

/// Completes the command word, and `attach`'s and `status`'s options.
struct Completion;

impl Completer for Completion {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |at| at + 1);
        let word = &before[start..];
        let previous: Vec<String> = before[..start]
            .split_whitespace()
            .map(str::to_ascii_lowercase)
            .collect();
        let choices: &[&str] = match previous.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            [] => &COMMANDS,
            ["attach"] => &["--force", "--with"],
            ["attach", "--force"] => &["--with"],
            ["status"] => &["--json"],
            _ => &[],
        };
        let candidates = choices
            .iter()
            .filter(|choice| choice.starts_with(&word.to_ascii_lowercase()))
            .map(|choice| Pair {
                display: (*choice).to_owned(),
                replacement: (*choice).to_owned(),
            })
            .collect();
        Ok((start, candidates))
    }
}

impl Hinter for Completion {
    type Hint = String;
}
impl Highlighter for Completion {}
impl Validator for Completion {}
impl Helper for Completion {}

/// `$XDG_STATE_HOME/heli/history`, else `~/.local/state/heli/history`.
fn history_path() -> Option<PathBuf> {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|home| home.is_absolute())
                .map(|home| home.join(".local/state"))
        })?;
    Some(state.join("heli").join("history"))
}

impl<T: Transport> App<T> {
    fn new(transport: T, args: &Args) -> Result<App<T>, Failure> {
        let at_prompt = Arc::new(AtomicBool::new(true));
        sigint_at_prompt_only(&at_prompt)?;
        Ok(App {
            client: Client::new(transport).timeout(Duration::from_secs_f64(args.timeout)),
            python: args.python.clone(),
            at_prompt,
            out: Paint::stdout(),
        })
    }

    /// The `>>> ` prompt. On a terminal: line editing, Tab completion and
    /// history kept in the XDG state directory; Ctrl-C clears the line,
    /// Ctrl-D ends. Elsewhere: reads lines, no prompt, no history.
    fn interactive(&self) -> ExitCode {
        let config = Config::builder()
            .completion_type(CompletionType::List)
            .history_ignore_space(true)
            .auto_add_history(false)
            .max_history_size(1000)
            .and_then(|config| config.history_ignore_dups(true))
            .map(|config| config.build());
        let mut editor: Editor<Completion, FileHistory> = match config.and_then(Editor::with_config)
        {
            Ok(editor) => editor,
            Err(err) => {
                eprintln!("client: cannot read the terminal: {err}");
                return ExitCode::from(1);
            }
        };
        editor.set_helper(Some(Completion));
        let history = std::io::stdin()
            .is_terminal()
            .then(history_path)
            .flatten()
            .and_then(|path| match prepare_history(&mut editor, &path) {
                Ok(()) => Some(path),
                Err(err) => {
                    eprintln!("client: no history ({}): {err}", path.display());
                    None
                }
            });
        println!(
            "heli client: attach a debugger to the controller's target. Type 'help' for commands."
        );
        loop {
            let line = match editor.readline(">>> ") {
                Ok(line) => line,
                // Like Python's REPL: Ctrl-C drops the line, Ctrl-D ends.
                Err(ReadlineError::Interrupted) => continue,
                Err(ReadlineError::Eof) => {
                    println!("Goodbye!");
                    return ExitCode::SUCCESS;
                }
                Err(err) => {
                    eprintln!("client: cannot read input: {err}");
                    return ExitCode::from(1);
                }
            };
            if let Some(path) = &history {
                if !line.trim().is_empty() {
                    let saved = editor
                        .add_history_entry(line.as_str())
                        .and_then(|_| editor.append_history(path));
                    if let Err(err) = saved {
                        eprintln!("client: history not saved to {}: {err}", path.display());
                    }
                }
            }
            let (command, json) = match parse_line(&line) {
                Ok(None) => continue,
                Ok(Some(Repl::Run(command, json))) => (command, json),
                Ok(Some(Repl::Help)) => {
                    print_help(history.as_deref());
                    continue;
                }
                Ok(Some(Repl::Quit)) => {
                    println!("Goodbye!");
                    return ExitCode::SUCCESS;
                }
                Err(message) => {
                    println!("{message}");
                    continue;
                }
            };
            match self.execute(&command, json) {
                Ok(()) if command == Cmd::Terminate => return ExitCode::SUCCESS,
                Ok(()) => {}
                Err(failure) => println!("{}", self.out.bad(&format!("❌ {}", failure.message))),
            }
        }
    }

    fn execute(&self, command: &Cmd, json: bool) -> Result<(), Failure> {
        match command {
            Cmd::Attach { force, with } => self.attach(*force, with.as_deref()),
            Cmd::Pid => {
                println!("{}", self.client.target_pid()?);
                Ok(())
            }
            Cmd::Stack => {
                println!("{}", self.client.stack()?);
                Ok(())
            }
            Cmd::Status => {
                let status = self.client.status()?;
                if json {
                    println!("{}", pretty(&Value::Object(status_json(&status))));
                } else {
                    self.print_status(&status);
                }
                Ok(())
            }
            Cmd::Revoke => {
                self.client.revoke(std::process::id())?;
                println!("{}", self.out.good("✅ Permission withdrawn"));
                Ok(())
            }
            Cmd::Terminate => {
                self.client.terminate()?;
                println!("Controller is stopping the target and exiting");
                Ok(())
            }
        }
    }

    fn print_status(&self, status: &Status) {
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
        for (key, value) in rows {
            println!("{} {value}", self.out.heading(&format!("{key:<width$}")));
        }
    }

    /// Asks for the grant on a connection kept open while the debugger
    /// runs: with the socket transport the grant ends when that connection
    /// closes, even if this client is killed.
    fn attach(&self, force: bool, with: Option<&str>) -> Result<(), Failure> {
        let scope = PtraceScope::current().unwrap_or(PtraceScope::Restricted);
        check_scope(scope)?;
        let tool = with.map(Tool::parse).transpose()?;
        let mut session = self.client.session()?;
        let target = session.target_pid()?;
        // Everything the debugger needs is checked before the grant.
        let debugger = match tool {
            Some(tool) => Debugger::Tool(tool.resolve(target)?),
            None => Debugger::Pdb(self.pdb_python(target)?),
        };
        let me = std::process::id();
        println!("Requesting ptrace permission for client PID {me}...");
        if force {
            session.take_over(me)?;
        } else {
            session.grant_access(me)?;
        }
        println!("{}", self.out.good("✅ Permission granted"));
        let result = self.debug(&debugger, target, scope);
        // The grant is no longer needed once the debugger is gone.
        if let Err(err) = session.revoke(me) {
            println!("Note: the grant was not withdrawn: {err}");
        }
        result
    }

    fn debug(&self, debugger: &Debugger, target: u32, scope: PtraceScope) -> Result<(), Failure> {
        println!();
        let (mut command, name) = match debugger {
            Debugger::Pdb(python) => {
                println!("Attaching pdb to target PID {target}...");
                println!("Type pdb commands (list, next, print, etc.) or 'quit' to detach");
                let mut command = Command::new(&python.exe);
                command.args(["-m", "pdb", "-p", &target.to_string()]);
                (command, "pdb".to_owned())
            }
            Debugger::Tool(argv) => {
                let shown = shlex::try_join(argv.iter().map(String::as_str))
                    .unwrap_or_else(|_| argv.join(" "));
                println!("Running {shown} on target PID {target}...");
                let mut command = Command::new(&argv[0]);
                command.args(&argv[1..]);
                (command, tool_name(&argv[0]))
            }
        };
        // A killed client takes its debugger along: an orphaned pdb would
        // hold the target stopped, and be stopped itself by the shell.
        kill_with_parent(&mut command);
        println!();
        let _ = std::io::stdout().flush();
        self.at_prompt.store(false, Ordering::SeqCst);
        // pdb's errors go through us on their way to the terminal, to
        // recognise the ones we can explain.
        let scan = matches!(debugger, Debugger::Pdb(_));
        let result = run_on_terminal(&mut command, scan);
        self.at_prompt.store(true, Ordering::SeqCst);
        let (status, remote_debug_disabled) = result.map_err(|err| {
            let code = if err.kind() == std::io::ErrorKind::NotFound {
                5
            } else {
                1
            };
            Failure::new(code, format!("cannot run {name}: {err}"))
        })?;
        println!();
        match debugger {
            Debugger::Pdb(_) => println!("Debugger detached"),
            Debugger::Tool(_) => println!("{name} exited"),
        }
        if status.success() {
            return Ok(());
        }
        if remote_debug_disabled {
            return Err(Failure::new(
                5,
                format!(
                    "Remote debugging is disabled in the target (PID {target}): it was started with \
                     PYTHON_DISABLE_REMOTE_DEBUG set or with -X disable-remote-debug (or its Python \
                     was built --without-remote-debug), so pdb -p cannot attach.\n\
                     Restart the target without them, or use a tool that needs no help from it: \
                     attach --with 'gdb -p {{pid}}' or attach --with 'py-spy dump --pid {{pid}}'."
                ),
            ));
        }
        if !alive(target) {
            return Err(Failure::new(
                1,
                format!(
                    "The target (PID {target}) exited: nothing to attach to. \
                     `status` shows what the controller is doing."
                ),
            ));
        }
        let mut message = format!("{name} exited with {status}.");
        if scope != PtraceScope::NoYama {
            message.push_str(&format!(
                "\nIf it said permission denied: ptrace_scope is {scope}: {}.",
                scope.explain()
            ));
        }
        Err(Failure::new(1, message))
    }

    /// The target's own interpreter when it is Python 3.14+, else the
    /// configured one.
    fn pdb_python(&self, target: u32) -> Result<common::Python, Failure> {
        let own = std::fs::read_link(format!("/proc/{target}/exe")).ok();
        if let Some(exe) = own.filter(|exe| is_python_name(exe)) {
            let python = common::Python {
                version: common::python_version(&exe),
                exe,
            };
            if python.is_supported() {
                return Ok(python);
            }
        }
        match common::configured_python(self.python.as_deref()) {
            Some(python) if python.is_supported() => Ok(python),
            found => Err(Failure::new(
                5,
                format!(
                    "Python 3.14+ required to run pdb -p (found: {}).\n\
                     Install it (scripts/install-python314.sh) and pass --python or set HELI_PYTHON, \
                     or use another debugger: attach --with 'gdb -p {{pid}}'",
                    found.map_or_else(|| "none".to_owned(), |p| p.describe())
                ),
            )),
        }
    }
}

/// The debugger an `attach` runs.
enum Debugger {
    Pdb(common::Python),
    /// `--with`: the command line, `{pid}` replaced.
    Tool(Vec<String>),
}

/// An `--with` command line, split like a shell would.
struct Tool(Vec<String>);

impl Tool {
    fn parse(template: &str) -> Result<Tool, Failure> {
        match shlex::split(template) {
            Some(words) if !words.is_empty() => Ok(Tool(words)),
            Some(_) => Err(Failure::new(
                2,
                "--with needs a command, e.g. --with 'gdb -p {pid}'",
            )),
            None => Err(Failure::new(
                2,
                format!("--with {template:?}: unmatched quote"),
            )),
        }
    }

    /// The command line for `target`, its program found in `PATH`.
    fn resolve(self, target: u32) -> Result<Vec<String>, Failure> {
        let argv: Vec<String> = self
            .0
            .iter()
            .map(|word| word.replace("{pid}", &target.to_string()))
            .collect();
        let program = Path::new(&argv[0]);
        let found = if argv[0].contains('/') {
            is_executable(program)
        } else {
            common::which(program.as_os_str()).is_some()
        };
        if !found {
            return Err(Failure::new(5, not_installed(&argv[0])));
        }
        Ok(argv)
    }
}

/// "gdb not found: install it, e.g. apt-get install gdb".
fn not_installed(program: &str) -> String {
    let name = tool_name(program);
    let how = match name.as_str() {
        "gdb" | "strace" | "ltrace" | "lldb" => format!("apt-get install {name}"),
        "py-spy" | "pystack" | "memray" => format!("pip install {name}"),
        "austin" => "pip install austin-dist".to_owned(),
        _ if program.contains('/') => return format!("{program} not found or not executable"),
        _ => return format!("{name} not found in PATH: install it, or give its full path"),
    };
    format!("{name} not found: install it, e.g. {how}")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn tool_name(program: &str) -> String {
    Path::new(program)
        .file_name()
        .map_or_else(|| program.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// Runs `command` on this terminal and waits for it. With `scan`, its
/// standard error is copied to ours and searched for
/// [`REMOTE_DEBUG_DISABLED`]; returns the exit status and whether it was
/// found.
fn run_on_terminal(command: &mut Command, scan: bool) -> std::io::Result<(ExitStatus, bool)> {
    if !scan {
        return Ok((command.status()?, false));
    }
    let mut child = command.stderr(Stdio::piped()).spawn()?;
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let copier = std::thread::spawn(move || {
        const KEEP: usize = 64 * 1024;
        let mut seen = Vec::new();
        let mut buffer = [0; 4096];
        let mut stderr = std::io::stderr();
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = stderr.write_all(&buffer[..n]);
                    seen.extend_from_slice(&buffer[..n]);
                    if seen.len() > 2 * KEEP {
                        seen.drain(..seen.len() - KEEP);
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&seen).contains(REMOTE_DEBUG_DISABLED)
    });
    let status = child.wait()?;
    Ok((status, copier.join().unwrap_or(false)))
}

/// Whether `pid` is a live process (a zombie counts as dead).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !matches!(
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next()),
            Some("Z" | "X")
        )
    })
}

fn is_python_name(exe: &Path) -> bool {
    exe.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("python"))
}

/// Refuses early where no grant can help.
fn check_scope(scope: PtraceScope) -> Result<(), Failure> {
    match scope {
        PtraceScope::NoAttach => Err(Failure::new(
            5,
            format!(
                "Cannot attach: {}.\nOnly a reboot (with a lower kernel.yama.ptrace_scope) lifts it.",
                scope.explain()
            ),
        )),
        PtraceScope::AdminOnly if !has_cap_sys_ptrace() => Err(Failure::new(
            5,
            format!(
                "Cannot attach: {}.\nAs root: sysctl kernel.yama.ptrace_scope=1 (heli grants access at scope 1).",
                scope.explain()
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether this process has CAP_SYS_PTRACE in its effective set.
fn has_cap_sys_ptrace() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

/// SIGINT keeps its default action (end the client) while `at_prompt` is
/// set; while a debugger runs it is cleared, and Ctrl-C belongs to the
/// debugger, which shares our terminal. (At the line editor's prompt the
/// terminal is in raw mode: Ctrl-C arrives as a key and clears the line.)
fn sigint_at_prompt_only(at_prompt: &Arc<AtomicBool>) -> std::io::Result<()> {
    signal_hook::flag::register_conditional_default(
        signal_hook::consts::SIGINT,
        at_prompt.clone(),
    )?;
    Ok(())
}

/// Loads the history at `path`, creating its directory (mode 0700).
fn prepare_history(
    editor: &mut Editor<Completion, FileHistory>,
    path: &Path,
) -> Result<(), ReadlineError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    match editor.load_history(path) {
        Err(ReadlineError::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn print_help(history: Option<&Path>) {
    println!("Commands:");
    println!("  attach                  attach pdb to the target");
    println!("  attach --force          the same, taking the grant over from another client");
    println!("  attach --with 'CMD'     run another ptrace tool instead, {{pid}} replaced,");
    println!("                          e.g. attach --with 'gdb -p {{pid}}'");
    println!("  status [--json]         the target, its uptime and who holds the grant");
    println!("  pid                     print the target's PID");
    println!("  stack                   every thread's Python stack, read without stopping it");
    println!("  revoke                  withdraw this client's ptrace permission");
    println!("  terminate               stop the target and the controller, and exit");
    println!("  help                    this help");
    println!("  quit, exit, Ctrl-D      leave (the controller keeps running)");
    match history {
        Some(path) => println!(
            "Tab completes, Up/Down recall earlier commands (kept in {}).",
            path.display()
        ),
        None => println!("Tab completes, Up/Down recall earlier commands."),
    }
}
