//! The client's `>>> ` prompt: reading lines (line editing, Tab completion,
//! history), parsing them into commands, and the loop that runs them.

use std::io::IsTerminal;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, Helper};

use crate::core::Pid;

use super::command::Cmd;
use super::exit::{ClientExit, Failure};
use super::render::Paint;

/// Reads commands at the `>>> ` prompt and runs each with `execute`
/// (the command, and whether to print JSON) until `quit`, Ctrl-D or a
/// `terminate` that worked. On a terminal: line editing, Tab completion
/// (of the tree's pids too, from `tree_pids`) and history kept in the XDG
/// state directory; Ctrl-C clears the line. Elsewhere: reads lines, no
/// prompt, no history.
pub(crate) fn interactive(
    mut execute: impl FnMut(&Cmd, bool) -> Result<(), Failure>,
    tree_pids: impl Fn() -> Vec<Pid>,
    out: Paint,
) -> ClientExit {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .history_ignore_space(true)
        .auto_add_history(false)
        .max_history_size(1000)
        .and_then(|config| config.history_ignore_dups(true))
        .map(|config| config.build());
    let mut editor: Editor<Completion<_>, FileHistory> = match config.and_then(Editor::with_config)
    {
        Ok(editor) => editor,
        Err(err) => {
            eprintln!("client: cannot read the terminal: {err}");
            return ClientExit::Failed;
        }
    };
    editor.set_helper(Some(Completion::new(tree_pids)));
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
                return ClientExit::Success;
            }
            Err(err) => {
                eprintln!("client: cannot read input: {err}");
                return ClientExit::Failed;
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
                print!("{}", help_text(history.as_deref()));
                continue;
            }
            Ok(Some(Repl::Quit)) => {
                println!("Goodbye!");
                return ClientExit::Success;
            }
            Err(message) => {
                println!("{message}");
                continue;
            }
        };
        match execute(&command, json) {
            Ok(()) if command == Cmd::Terminate => return ClientExit::Success,
            Ok(()) => {}
            Err(failure) => println!("{}", out.bad(&format!("❌ {}", failure.message))),
        }
    }
}

/// What a REPL line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Repl {
    /// A command, and whether to print JSON.
    Run(Cmd, bool),
    Help,
    Quit,
}

/// A REPL line, as `clap` parses it: the client's commands (the same
/// [`Cmd`] as on its command line), and the REPL's own.
#[derive(Parser, Debug)]
#[command(
    name = "",
    no_binary_name = true,
    disable_help_subcommand = true,
    disable_version_flag = true
)]
struct Line {
    /// Print status, ps, stack or tasks as JSON
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Word,
}

/// The first word of a REPL line.
#[derive(Subcommand, Debug)]
enum Word {
    #[command(flatten)]
    Run(Cmd),
    /// List the commands
    #[command(alias = "?")]
    Help,
    /// Leave (the controller keeps running)
    #[command(alias = "exit")]
    Quit,
}

/// A REPL line: its words split as a shell would (the command word in any
/// case), then parsed as [`Cmd`] is on the command line. `None` for a
/// blank line; for a line that is no command, the message to print.
pub(crate) fn parse_line(line: &str) -> Result<Option<Repl>, String> {
    let mut words =
        shlex::split(line).ok_or_else(|| format!("Unmatched quote in: {}", line.trim()))?;
    let Some(first) = words.first_mut() else {
        return Ok(None);
    };
    first.make_ascii_lowercase();
    let unknown = || {
        format!(
            "Unknown command: {}. Type 'help' for the list of commands.",
            line.trim()
        )
    };
    let parsed = Line::try_parse_from(&words).map_err(|err| match err.kind() {
        ErrorKind::InvalidSubcommand
        | ErrorKind::MissingSubcommand
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => unknown(),
        // `attach --help`: clap's help of the command.
        _ => err.to_string().trim_end().to_owned(),
    })?;
    Ok(Some(match parsed.command {
        Word::Run(command) if parsed.json && !command.has_json() => {
            return Err(format!(
                "--json goes with status, ps, stack and tasks, not: {}",
                line.trim()
            ))
        }
        Word::Run(command) => Repl::Run(command, parsed.json),
        Word::Help | Word::Quit if parsed.json => return Err(unknown()),
        Word::Help => Repl::Help,
        Word::Quit => Repl::Quit,
    }))
}

/// The REPL's commands, for Tab completion.
const COMMANDS: [&str; 14] = [
    "attach",
    "pid",
    "ps",
    "stack",
    "tasks",
    "profile",
    "status",
    "top",
    "revoke",
    "terminate",
    "audit",
    "help",
    "quit",
    "exit",
];

/// What Tab offers with the cursor at `pos` in `line`: the command word,
/// the commands' options, and after `attach`, `stack`, `tasks`, `profile`,
/// `top` and `revoke` the
/// pids of the target's tree (`pids` is called only then). Returns where
/// the word being completed starts, and its completions.
pub(crate) fn completions(
    line: &str,
    pos: usize,
    pids: impl FnOnce() -> Vec<Pid>,
) -> (usize, Vec<String>) {
    let before = &line[..pos];
    let start = before.rfind(char::is_whitespace).map_or(0, |at| at + 1);
    let word = before[start..].to_ascii_lowercase();
    let previous: Vec<String> = before[..start]
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let previous: Vec<&str> = previous.iter().map(String::as_str).collect();
    let is_pid = |word: &str| word.parse::<Pid>().is_ok();
    // The options still to give, and whether a pid may come here.
    let (options, pid): (Vec<&str>, bool) = match previous[..] {
        [] => (COMMANDS.to_vec(), false),
        ["attach", ref given @ ..] => match given.last() {
            Some(&"--with") => (vec![], false),
            Some(&"--pid") => (vec![], true),
            _ => {
                let has_pid = given.iter().any(|w| is_pid(w) || w.starts_with("--pid"));
                let options = ["--force", "--with"]
                    .into_iter()
                    .filter(|option| !given.contains(option))
                    .collect();
                (options, !has_pid)
            }
        },
        ["stack"] => (vec!["all", "--json"], true),
        ["stack", "--pid"] => (vec![], true),
        ["stack", last] if last == "all" || last == "--all" || is_pid(last) => {
            (vec!["--json"], false)
        }
        ["top", ref given @ ..] => scoped_options(
            given,
            &TOP_OPTIONS,
            &["--rate", "--interval", "--iterations"],
        ),
        ["profile", .., "--format"] => (vec!["svg", "collapsed", "speedscope"], false),
        ["profile", ref given @ ..] => scoped_options(
            given,
            &PROFILE_OPTIONS,
            &["--duration", "--rate", "-o", "--output"],
        ),
        ["tasks"] => (vec!["--json"], true),
        ["tasks", "--pid"] => (vec![], true),
        ["tasks", last] if is_pid(last) => (vec!["--json"], false),
        ["revoke"] => (vec![], true),
        ["revoke", "--pid"] => (vec![], true),
        ["status" | "ps"] => (vec!["--json"], false),
        _ => (vec![], false),
    };
    let mut candidates: Vec<String> = Vec::new();
    if pid && !word.starts_with('-') {
        candidates.extend(pids().into_iter().map(|pid| pid.to_string()));
    }
    candidates.extend(options.into_iter().map(str::to_owned));
    candidates.retain(|choice| choice.starts_with(&word));
    (start, candidates)
}

/// What completes after `top` or `profile` and the words `given`: the
/// tree's pids after `--pid`, nothing after an option in `takes_value`;
/// else `all` while no process is named, and the `options` not given yet
/// (`--pid` only while no process is named).
fn scoped_options<'a>(
    given: &[&str],
    options: &[&'a str],
    takes_value: &[&str],
) -> (Vec<&'a str>, bool) {
    match given.last() {
        Some(&"--pid") => return (vec![], true),
        Some(last) if takes_value.contains(last) => return (vec![], false),
        _ => {}
    }
    let scoped = given.iter().any(|w| {
        w.parse::<Pid>().is_ok() || *w == "all" || *w == "--all" || w.starts_with("--pid")
    });
    let mut left: Vec<&str> = options
        .iter()
        .copied()
        .filter(|option| !(given.contains(option) || scoped && *option == "--pid"))
        .collect();
    if !scoped {
        left.insert(0, "all");
    }
    (left, !scoped)
}

/// The options of `profile` that Tab completes.
const PROFILE_OPTIONS: [&str; 6] = [
    "--duration",
    "--rate",
    "--output",
    "--format",
    "--threads",
    "--idle",
];

/// `top`'s options, for Tab completion.
const TOP_OPTIONS: [&str; 8] = [
    "--rate",
    "--interval",
    "--idle",
    "--cumulative",
    "--iterations",
    "--once",
    "--json",
    "--pid",
];

/// How long the tree's pids serve Tab before `PS` is asked again.
const PIDS_FRESH: Duration = Duration::from_secs(1);

/// The line editor's helper: Tab completion, nothing else.
struct Completion<F> {
    /// Asks the controller for the tree's pids (within the client's
    /// timeout: completion never waits longer).
    fetch: F,
    /// The last answer, and when it came.
    pids: Mutex<Option<(Instant, Vec<Pid>)>>,
}

impl<F: Fn() -> Vec<Pid>> Completion<F> {
    fn new(fetch: F) -> Completion<F> {
        Completion {
            fetch,
            pids: Mutex::new(None),
        }
    }

    /// The tree's pids, asked for at most once every [`PIDS_FRESH`].
    fn pids(&self) -> Vec<Pid> {
        let mut cached = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        match &*cached {
            Some((when, pids)) if when.elapsed() < PIDS_FRESH => pids.clone(),
            _ => {
                let pids = (self.fetch)();
                *cached = Some((Instant::now(), pids.clone()));
                pids
            }
        }
    }
}

impl<F: Fn() -> Vec<Pid>> Completer for Completion<F> {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, choices) = completions(line, pos, || self.pids());
        let candidates = choices
            .into_iter()
            .map(|choice| Pair {
                display: choice.clone(),
                replacement: choice,
            })
            .collect();
        Ok((start, candidates))
    }
}

impl<F: Fn() -> Vec<Pid>> Hinter for Completion<F> {
    type Hint = String;
}
impl<F: Fn() -> Vec<Pid>> Highlighter for Completion<F> {}
impl<F: Fn() -> Vec<Pid>> Validator for Completion<F> {}
impl<F: Fn() -> Vec<Pid>> Helper for Completion<F> {}

/// `$XDG_STATE_HOME/heli/history`, else `~/.local/state/heli/history`.
fn history_path() -> Option<PathBuf> {
    history_path_in(std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME"))
}

/// The history file for these values of `XDG_STATE_HOME` and `HOME`
/// (relative ones do not count).
pub(crate) fn history_path_in(
    xdg_state_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let state = xdg_state_home
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .or_else(|| {
            home.map(PathBuf::from)
                .filter(|home| home.is_absolute())
                .map(|home| home.join(".local/state"))
        })?;
    Some(state.join("heli").join("history"))
}

/// Loads the history at `path`, creating its directory (mode 0700).
fn prepare_history<F: Fn() -> Vec<Pid>>(
    editor: &mut Editor<Completion<F>, FileHistory>,
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

/// `help`: the commands, and where the history is kept.
pub(crate) fn help_text(history: Option<&Path>) -> String {
    let mut text = String::from(
        "Commands:
  attach [PID]            attach pdb to the target, or to process PID of its tree
  attach --force          the same, taking the grant over from another client
  attach --with 'CMD'     run another ptrace tool instead, {pid} replaced,
                          e.g. attach --with 'gdb -p {pid}'
  ps [--json]             the target's process tree: pids, Python, grants
  status [--json]         the target, its uptime and the grants in force
  pid                     print the target's PID
  stack [PID|all]         every thread's Python stack (the target's, process
        [--json]          PID's, or every process's), read without stopping it
  top [PID|all]           a live view of the functions taking the time, like
                          py-spy top (q quits; --once prints the table once)
  tasks [PID] [--json]    the asyncio task tree (the target's or process PID's),
                          read without stopping it, as python -m asyncio pstree
  profile [PID|all]       sample the stacks (until Ctrl-C, or --duration 30s)
          [-o FILE]       and write a flame graph (or --format collapsed|speedscope)
  revoke [PID]            withdraw this client's ptrace permission
  terminate               stop the target and the controller, and exit
  audit [--since 1h]      the controller's recent audit records: who was
        [--json]          granted, refused, revoked or read what, and when
  COMMAND --help          its options (the same as on the command line)
  help                    this help
  quit, exit, Ctrl-D      leave (the controller keeps running)
",
    );
    match history {
        Some(path) => text.push_str(&format!(
            "Tab completes, Up/Down recall earlier commands (kept in {}).\n",
            path.display()
        )),
        None => text.push_str("Tab completes, Up/Down recall earlier commands.\n"),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::command::{ProcessArg, ScopeArg};
    use crate::core::protocol::Scope;

    fn run(line: &str) -> Option<Repl> {
        parse_line(line).unwrap_or_else(|message| panic!("{line:?}: {message}"))
    }

    fn attach(force: bool, with: Option<&str>) -> Option<Repl> {
        attach_to(None, force, with)
    }

    fn attach_to(pid: Option<u32>, force: bool, with: Option<&str>) -> Option<Repl> {
        Some(Repl::Run(
            Cmd::Attach {
                process: ProcessArg(pid.map(self::pid)),
                force,
                with: with.map(str::to_owned),
                for_: None,
            },
            false,
        ))
    }

    fn pid(raw: u32) -> Pid {
        Pid::new(raw).unwrap()
    }

    fn stack(pid: Option<u32>, all: bool, json: bool) -> Option<Repl> {
        let scope = match (pid, all) {
            (_, true) => Scope::All,
            (Some(raw), false) => Scope::Process(self::pid(raw)),
            (None, false) => Scope::Target,
        };
        Some(Repl::Run(
            Cmd::Stack {
                scope: ScopeArg(scope),
            },
            json,
        ))
    }

    #[test]
    fn tasks_of_the_target_or_of_one_process() {
        let tasks = |raw: Option<u32>, json| {
            Some(Repl::Run(
                Cmd::Tasks {
                    process: ProcessArg(raw.map(self::pid)),
                },
                json,
            ))
        };
        assert_eq!(run("tasks"), tasks(None, false));
        assert_eq!(run("tasks 12"), tasks(Some(12), false));
        assert_eq!(run("TASKS --pid 12 --json"), tasks(Some(12), true));
        assert!(parse_line("tasks all").is_err());
        assert!(help_text(None).contains("tasks [PID] [--json]"));
    }

    fn revoke(pid: Option<u32>) -> Option<Repl> {
        Some(Repl::Run(
            Cmd::Revoke {
                process: ProcessArg(pid.map(self::pid)),
            },
            false,
        ))
    }

    #[test]
    fn every_command() {
        assert_eq!(run("attach"), attach(false, None));
        assert_eq!(run("attach"), Some(Repl::Run(Cmd::attach(), false)));
        assert_eq!(run("pid"), Some(Repl::Run(Cmd::Pid, false)));
        assert_eq!(run("ps"), Some(Repl::Run(Cmd::Ps, false)));
        assert_eq!(run("ps --json"), Some(Repl::Run(Cmd::Ps, true)));
        assert_eq!(run("stack"), stack(None, false, false));
        assert_eq!(run("status"), Some(Repl::Run(Cmd::Status, false)));
        assert_eq!(run("status --json"), Some(Repl::Run(Cmd::Status, true)));
        assert_eq!(run("revoke"), revoke(None));
        assert_eq!(run("terminate"), Some(Repl::Run(Cmd::Terminate, false)));
        assert!(matches!(
            run("top"),
            Some(Repl::Run(Cmd::Top { .. }, false))
        ));
        assert!(matches!(
            run("top all --once --json"),
            Some(Repl::Run(Cmd::Top { .. }, true))
        ));
        assert_eq!(run("help"), Some(Repl::Help));
        assert_eq!(run("?"), Some(Repl::Help));
        assert_eq!(run("quit"), Some(Repl::Quit));
        assert_eq!(run("exit"), Some(Repl::Quit));
    }

    #[test]
    fn commands_ignore_case_and_blanks() {
        assert_eq!(run("  PID \t"), Some(Repl::Run(Cmd::Pid, false)));
        assert_eq!(run("Status   --json"), Some(Repl::Run(Cmd::Status, true)));
        assert_eq!(run("QUIT"), Some(Repl::Quit));
    }

    #[test]
    fn blank_lines_are_nothing() {
        assert_eq!(run(""), None);
        assert_eq!(run("   \t "), None);
    }

    #[test]
    fn attach_options() {
        assert_eq!(run("attach --force"), attach(true, None));
        assert_eq!(
            run("attach --with 'gdb -p {pid}'"),
            attach(false, Some("gdb -p {pid}"))
        );
        assert_eq!(
            run(r#"attach --force --with "py-spy dump --pid {pid}""#),
            attach(true, Some("py-spy dump --pid {pid}"))
        );
        assert_eq!(
            run("attach --with 'gdb -p {pid}' --force"),
            attach(true, Some("gdb -p {pid}"))
        );
        assert_eq!(run("attach --with=gdb"), attach(false, Some("gdb")));
        assert_eq!(
            run("attach '--with=strace -p {pid}'"),
            attach(false, Some("strace -p {pid}"))
        );
        // As on the command line: one --with.
        let twice = parse_line("attach --with a --with b").unwrap_err();
        assert!(
            twice.starts_with(
                "error: the argument '--with <COMMAND>' cannot be used multiple times"
            ),
            "{twice}"
        );
    }

    #[test]
    fn attach_to_a_process_of_the_tree() {
        assert_eq!(run("attach 4243"), attach_to(Some(4243), false, None));
        assert_eq!(run("attach --pid 4243"), attach_to(Some(4243), false, None));
        assert_eq!(run("attach --pid=4243"), attach_to(Some(4243), false, None));
        assert_eq!(
            run("attach 4243 --force --with 'gdb -p {pid}'"),
            attach_to(Some(4243), true, Some("gdb -p {pid}"))
        );
        assert_eq!(
            run("attach --with 'gdb -p {pid}' 4243"),
            attach_to(Some(4243), false, Some("gdb -p {pid}"))
        );
        // `--` ends the options, as on the command line.
        assert_eq!(run("attach -- 12"), attach_to(Some(12), false, None));
        for line in ["attach abc", "attach --pid 0", "attach --pid=x1"] {
            let message = parse_line(line).unwrap_err();
            assert!(
                message.starts_with("error: invalid value ") && message.contains("Invalid PID"),
                "{line}: {message}"
            );
        }
        assert_eq!(
            parse_line("attach abc"),
            Err("error: invalid value 'abc' for '[PID]': Invalid PID\n\n\
                 For more information, try '--help'."
                .into())
        );
        let missing = parse_line("attach --pid").unwrap_err();
        assert!(
            missing.starts_with("error: a value is required for '--pid <PID>'"),
            "{missing}"
        );
        assert!(parse_line("attach 12 --pid 12").is_err());
        // One process per attach.
        assert!(parse_line("attach 12 13").is_err());
    }

    #[test]
    fn stack_of_one_process_or_all() {
        assert_eq!(run("stack 4243"), stack(Some(4243), false, false));
        assert_eq!(run("stack --pid 4243"), stack(Some(4243), false, false));
        assert_eq!(run("stack all"), stack(None, true, false));
        assert_eq!(run("STACK ALL"), stack(None, true, false));
        assert_eq!(run("stack --all"), stack(None, true, false));
        assert_eq!(run("stack --json"), stack(None, false, true));
        assert_eq!(run("stack all --json"), stack(None, true, true));
        assert_eq!(run("stack 12 --json"), stack(Some(12), false, true));
        assert_eq!(run("stack --json all"), stack(None, true, true));
        assert_eq!(run("--json stack all"), stack(None, true, true));
        assert_eq!(
            parse_line("stack abc"),
            Err("error: invalid value 'abc' for '[PID|all]': a PID or all \
                 (see ps for the tree's pids)\n\nFor more information, try '--help'."
                .into())
        );
        for line in [
            "stack 12 all",
            "stack all --all",
            "stack --all --pid 3",
            "stack --pid",
            "stack -3",
        ] {
            assert!(parse_line(line).is_err(), "{line}");
        }
    }

    #[test]
    fn revoke_one_process() {
        assert_eq!(run("revoke 4243"), revoke(Some(4243)));
        assert_eq!(run("revoke --pid 4243"), revoke(Some(4243)));
        assert!(parse_line("revoke x").is_err());
        assert!(parse_line("revoke 1 2").is_err());
    }

    #[test]
    fn attach_with_needs_a_command() {
        let message = parse_line("attach --with").unwrap_err();
        assert!(
            message.starts_with("error: a value is required for '--with <COMMAND>'"),
            "{message}"
        );
    }

    #[test]
    fn unknown_commands_and_options() {
        for line in ["frobnicate", "frobnicate now", "--json", "help --json"] {
            assert_eq!(
                parse_line(line),
                Err(format!(
                    "Unknown command: {}. Type 'help' for the list of commands.",
                    line.trim()
                )),
                "{line}"
            );
        }
        assert_eq!(
            parse_line("  bogus  "),
            Err("Unknown command: bogus. Type 'help' for the list of commands.".into())
        );
        // A known command with what it does not take: clap says what, and
        // how the command is used.
        for (line, usage) in [
            ("attach --bogus", "attach [OPTIONS] [PID]"),
            ("pid 12", "pid [OPTIONS]"),
            ("ps all", "ps [OPTIONS]"),
            ("status --xml", "status [OPTIONS]"),
            ("status --json --json", "status [OPTIONS]"),
            ("help me", "help [OPTIONS]"),
            ("quit now", "quit [OPTIONS]"),
        ] {
            let message = parse_line(line).unwrap_err();
            assert!(message.starts_with("error: "), "{line}: {message}");
            assert!(
                message.contains(&format!("\nUsage: {usage}\n")),
                "{line}: {message}"
            );
        }
        assert_eq!(
            parse_line("pid --json"),
            Err("--json goes with status, ps, stack and tasks, not: pid --json".into())
        );
        // `--help` is clap's help of the command.
        let help = parse_line("attach --help").unwrap_err();
        assert!(help.contains("Usage: attach [OPTIONS] [PID]"), "{help}");
        assert!(help.contains("--with <COMMAND>"), "{help}");
    }

    #[test]
    fn unmatched_quotes() {
        assert_eq!(
            parse_line(" attach --with 'gdb -p {pid} "),
            Err("Unmatched quote in: attach --with 'gdb -p {pid}".into())
        );
        assert_eq!(
            parse_line("status \""),
            Err("Unmatched quote in: status \"".into())
        );
    }

    /// Completions where the tree's pids must not be asked for.
    fn complete(line: &str, pos: usize) -> (usize, Vec<String>) {
        completions(line, pos, || panic!("{line:?}: pids asked for"))
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    #[test]
    fn tab_completes_commands_and_options() {
        assert_eq!(complete("", 0), (0, strings(&COMMANDS)));
        assert_eq!(complete("st", 2), (0, strings(&["stack", "status"])));
        assert_eq!(complete("ATT", 3), (0, strings(&["attach"])));
        assert_eq!(complete("e", 1), (0, strings(&["exit"])));
        assert_eq!(complete("p", 1), (0, strings(&["pid", "ps", "profile"])));
        assert_eq!(
            complete("profile all --", 14),
            (
                12,
                strings(&[
                    "--duration",
                    "--rate",
                    "--output",
                    "--format",
                    "--threads",
                    "--idle"
                ])
            )
        );
        assert_eq!(
            complete("profile --format s", 18),
            (17, strings(&["svg", "speedscope"]))
        );
        assert_eq!(complete("profile --rate ", 15), (15, vec![]));
        assert_eq!(complete("attach --f", 10), (7, strings(&["--force"])));
        assert_eq!(
            complete("attach --force --", 17),
            (15, strings(&["--with"]))
        );
        assert_eq!(complete("status --", 9), (7, strings(&["--json"])));
        assert_eq!(complete("ps ", 3), (3, strings(&["--json"])));
        assert_eq!(complete("pid ", 4), (4, vec![]));
        assert_eq!(complete("attach --with ", 14), (14, vec![]));
        assert_eq!(complete("stack all ", 10), (10, strings(&["--json"])));
        assert_eq!(complete("stack 12 ", 9), (9, strings(&["--json"])));
        assert_eq!(
            complete("attach 12 ", 10),
            (10, strings(&["--force", "--with"]))
        );
        // Only what is before the cursor counts.
        assert_eq!(complete("st pid", 2), (0, strings(&["stack", "status"])));
    }

    #[test]
    fn tab_completes_every_command_the_parser_knows() {
        use clap::CommandFactory;
        let line = Line::command();
        let mut parsed: Vec<&str> = Vec::new();
        for command in line.get_subcommands() {
            parsed.push(command.get_name());
            parsed.extend(command.get_all_aliases().filter(|alias| *alias != "?"));
        }
        parsed.sort_unstable();
        let mut completed = COMMANDS.to_vec();
        completed.sort_unstable();
        assert_eq!(parsed, completed);
    }

    #[test]
    fn tab_completes_the_tree_s_pids() {
        let tree = || vec![pid(4242), pid(4243), pid(5000)];
        let all = strings(&["4242", "4243", "5000"]);
        let with = |extra: &[&str]| [all.clone(), strings(extra)].concat();
        assert_eq!(
            completions("attach ", 7, tree),
            (7, with(&["--force", "--with"]))
        );
        assert_eq!(
            completions("attach 42", 9, tree),
            (7, strings(&["4242", "4243"]))
        );
        assert_eq!(
            completions("attach --force ", 15, tree),
            (15, with(&["--with"]))
        );
        assert_eq!(completions("attach --pid ", 13, tree), (13, all.clone()));
        assert_eq!(
            completions("stack ", 6, tree),
            (6, with(&["all", "--json"]))
        );
        assert_eq!(completions("stack 5", 7, tree), (6, strings(&["5000"])));
        assert_eq!(completions("stack a", 7, tree), (6, strings(&["all"])));
        assert_eq!(
            completions("stack --pid 4", 13, tree),
            (12, strings(&["4242", "4243"]))
        );
        assert_eq!(completions("revoke ", 7, tree), (7, all.clone()));
        assert_eq!(
            completions("top 42", 6, tree),
            (4, strings(&["4242", "4243"]))
        );
        assert_eq!(completions("top --pid ", 10, tree), (10, all.clone()));
        assert_eq!(completions("top a", 5, tree), (4, strings(&["all"])));
        assert_eq!(
            completions("top all --i", 11, tree),
            (8, strings(&["--interval", "--idle", "--iterations"]))
        );
        assert_eq!(
            completions("top 4242 --once --", 18, tree),
            (
                16,
                strings(&[
                    "--rate",
                    "--interval",
                    "--idle",
                    "--cumulative",
                    "--iterations",
                    "--json",
                ])
            )
        );
        assert_eq!(completions("top --rate ", 11, tree), (11, strings(&[])));
        assert_eq!(completions("profile --pid ", 14, tree), (14, all.clone()));
        assert_eq!(
            completions("profile --idle 42", 17, tree),
            (15, strings(&["4242", "4243"]))
        );
        assert_eq!(completions("tasks ", 6, tree), (6, with(&["--json"])));
        assert_eq!(complete("tasks 12 ", 9), (9, strings(&["--json"])));
        // An option being typed needs no pid; nor does a controller that
        // did not answer.
        assert_eq!(
            complete("attach --", 9),
            (7, strings(&["--force", "--with"]))
        );
        assert_eq!(complete("stack --", 8), (6, strings(&["--json"])));
        assert_eq!(
            completions("attach ", 7, Vec::new),
            (7, strings(&["--force", "--with"]))
        );
    }

    #[test]
    fn the_tree_s_pids_are_asked_for_at_most_once_a_second() {
        let asked = std::cell::Cell::new(0);
        let completion = Completion::new(|| {
            asked.set(asked.get() + 1);
            vec![pid(asked.get())]
        });
        assert_eq!(completion.pids(), [pid(1)]);
        assert_eq!(completion.pids(), [pid(1)]);
        assert_eq!(asked.get(), 1);
        *completion.pids.lock().unwrap() = Some((Instant::now() - PIDS_FRESH, vec![pid(1)]));
        assert_eq!(completion.pids(), [pid(2)]);
        assert_eq!(asked.get(), 2);
    }

    #[test]
    fn history_lives_in_the_state_directory() {
        let path = |xdg: Option<&str>, home: Option<&str>| {
            history_path_in(xdg.map(Into::into), home.map(Into::into))
        };
        assert_eq!(
            path(Some("/x/state"), Some("/home/u")),
            Some(PathBuf::from("/x/state/heli/history"))
        );
        assert_eq!(
            path(None, Some("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/heli/history"))
        );
        // Relative directories do not count.
        assert_eq!(
            path(Some("state"), Some("/home/u")),
            Some(PathBuf::from("/home/u/.local/state/heli/history"))
        );
        assert_eq!(path(Some("state"), Some("home")), None);
        assert_eq!(path(None, None), None);
    }

    #[test]
    fn help_lists_every_command() {
        let text = help_text(None);
        assert!(text.starts_with("Commands:\n  attach "), "{text}");
        for command in COMMANDS.iter().chain(&[
            "attach --with 'gdb -p {pid}'",
            "attach [PID]",
            "stack [PID|all]",
            "ps [--json]",
            "status [--json]",
            "revoke [PID]",
            "top [PID|all]",
            "profile [PID|all]",
        ]) {
            assert!(text.contains(command), "{command}: {text}");
        }
        assert!(!text.contains("{{"), "{text}");
        assert!(text.ends_with("\nTab completes, Up/Down recall earlier commands.\n"));
        assert_eq!(text.lines().count(), 24);
        let text = help_text(Some(Path::new("/home/u/.local/state/heli/history")));
        assert!(text.ends_with(
            "\nTab completes, Up/Down recall earlier commands (kept in /home/u/.local/state/heli/history).\n"
        ));
    }
}
