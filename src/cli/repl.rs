//! The client's `>>> ` prompt: reading lines (line editing, Tab completion,
//! history), parsing them into commands, and the loop that runs them.

use std::io::IsTerminal;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::Validator;
use rustyline::{CompletionType, Config, Context, Editor, Helper};

use super::command::Cmd;
use super::exit::{ClientExit, Failure};
use super::render::Paint;

/// Reads commands at the `>>> ` prompt and runs each with `execute`
/// (the command, and whether to print JSON) until `quit`, Ctrl-D or a
/// `terminate` that worked. On a terminal: line editing, Tab completion and
/// history kept in the XDG state directory; Ctrl-C clears the line.
/// Elsewhere: reads lines, no prompt, no history.
pub(crate) fn interactive(
    mut execute: impl FnMut(&Cmd, bool) -> Result<(), Failure>,
    out: Paint,
) -> ClientExit {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .history_ignore_space(true)
        .auto_add_history(false)
        .max_history_size(1000)
        .and_then(|config| config.history_ignore_dups(true))
        .map(|config| config.build());
    let mut editor: Editor<Completion, FileHistory> = match config.and_then(Editor::with_config) {
        Ok(editor) => editor,
        Err(err) => {
            eprintln!("client: cannot read the terminal: {err}");
            return ClientExit::Failed;
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

/// The words of a REPL line, as a shell would split them: `None` for a
/// blank line, the message to print for a line that is no command.
pub(crate) fn parse_line(line: &str) -> Result<Option<Repl>, String> {
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

/// What Tab offers with the cursor at `pos` in `line`: the command word,
/// and `attach`'s and `status`'s options. Returns where the word being
/// completed starts, and its completions.
pub(crate) fn completions(line: &str, pos: usize) -> (usize, Vec<&'static str>) {
    let before = &line[..pos];
    let start = before.rfind(char::is_whitespace).map_or(0, |at| at + 1);
    let word = &before[start..];
    let previous: Vec<String> = before[..start]
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let choices: &[&'static str] = match previous.iter().map(String::as_str).collect::<Vec<_>>()[..]
    {
        [] => &COMMANDS,
        ["attach"] => &["--force", "--with"],
        ["attach", "--force"] => &["--with"],
        ["status"] => &["--json"],
        _ => &[],
    };
    let candidates = choices
        .iter()
        .filter(|choice| choice.starts_with(&word.to_ascii_lowercase()))
        .copied()
        .collect();
    (start, candidates)
}

/// The line editor's helper: Tab completion, nothing else.
struct Completion;

impl Completer for Completion {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let (start, choices) = completions(line, pos);
        let candidates = choices
            .into_iter()
            .map(|choice| Pair {
                display: choice.to_owned(),
                replacement: choice.to_owned(),
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

/// `help`: the commands, and where the history is kept.
pub(crate) fn help_text(history: Option<&Path>) -> String {
    let mut text = String::from(
        "Commands:
  attach                  attach pdb to the target
  attach --force          the same, taking the grant over from another client
  attach --with 'CMD'     run another ptrace tool instead, {pid} replaced,
                          e.g. attach --with 'gdb -p {pid}'
  status [--json]         the target, its uptime and who holds the grant
  pid                     print the target's PID
  stack                   every thread's Python stack, read without stopping it
  revoke                  withdraw this client's ptrace permission
  terminate               stop the target and the controller, and exit
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

    fn run(line: &str) -> Option<Repl> {
        parse_line(line).unwrap_or_else(|message| panic!("{line:?}: {message}"))
    }

    fn attach(force: bool, with: Option<&str>) -> Option<Repl> {
        Some(Repl::Run(
            Cmd::Attach {
                force,
                with: with.map(str::to_owned),
            },
            false,
        ))
    }

    #[test]
    fn every_command() {
        assert_eq!(run("attach"), attach(false, None));
        assert_eq!(run("pid"), Some(Repl::Run(Cmd::Pid, false)));
        assert_eq!(run("stack"), Some(Repl::Run(Cmd::Stack, false)));
        assert_eq!(run("status"), Some(Repl::Run(Cmd::Status, false)));
        assert_eq!(run("status --json"), Some(Repl::Run(Cmd::Status, true)));
        assert_eq!(run("revoke"), Some(Repl::Run(Cmd::Revoke, false)));
        assert_eq!(run("terminate"), Some(Repl::Run(Cmd::Terminate, false)));
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
        // The last --with wins.
        assert_eq!(run("attach --with a --with b"), attach(false, Some("b")));
    }

    #[test]
    fn attach_with_needs_a_command() {
        assert_eq!(
            parse_line("attach --with"),
            Err("attach --with needs a command, e.g. attach --with 'gdb -p {pid}'".into())
        );
    }

    #[test]
    fn unknown_commands_and_options() {
        for line in [
            "frobnicate",
            "attach --bogus",
            "attach gdb",
            "pid 12",
            "status --xml",
            "status --json --json",
            "help me",
            "quit now",
            "--json",
        ] {
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

    #[test]
    fn tab_completes_commands_and_options() {
        assert_eq!(completions("", 0), (0, COMMANDS.to_vec()));
        assert_eq!(completions("st", 2), (0, vec!["stack", "status"]));
        assert_eq!(completions("ATT", 3), (0, vec!["attach"]));
        assert_eq!(completions("e", 1), (0, vec!["exit"]));
        assert_eq!(completions("attach ", 7), (7, vec!["--force", "--with"]));
        assert_eq!(completions("attach --f", 10), (7, vec!["--force"]));
        assert_eq!(completions("attach --force ", 15), (15, vec!["--with"]));
        assert_eq!(completions("status --", 9), (7, vec!["--json"]));
        assert_eq!(completions("pid ", 4), (4, vec![]));
        assert_eq!(completions("attach --with ", 14), (14, vec![]));
        // Only what is before the cursor counts.
        assert_eq!(completions("st pid", 2), (0, vec!["stack", "status"]));
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
        for command in COMMANDS
            .iter()
            .chain(&["attach --with 'gdb -p {pid}'", "status [--json]"])
        {
            assert!(text.contains(command), "{command}: {text}");
        }
        assert!(!text.contains("{{"), "{text}");
        assert!(text.ends_with("\nTab completes, Up/Down recall earlier commands.\n"));
        assert_eq!(text.lines().count(), 13);
        let text = help_text(Some(Path::new("/home/u/.local/state/heli/history")));
        assert!(text.ends_with(
            "\nTab completes, Up/Down recall earlier commands (kept in /home/u/.local/state/heli/history).\n"
        ));
    }
}
