//! The client program: asks the controller for ptrace rights over its target
//! (or any process of the target's tree) and attaches pdb (or another ptrace
//! tool) to it; or shows the target's status, PID, process tree, Python
//! stacks or asyncio tasks, profiles it or shows where its time goes
//! (`top`), lists the sessions, ends the target.
//!
//! ```text
//! cargo run --example client                # interactive: attach, status, quit, help
//! cargo run --example client -- attach      # one command, then exit
//! cargo run --example client -- attach --with 'gdb -p {pid}'
//! cargo run --example client -- ps          # the supervised tree (--json for scripts)
//! cargo run --example client -- attach 4243 # a process of the tree (or --pid 4243)
//! cargo run --example client -- stack all   # every process's stacks (--json for scripts)
//! cargo run --example client -- top         # a live view of where the time goes (q quits)
//! cargo run --example client -- profile --duration 30s  # a flame graph: profile.svg
//! cargo run --example client -- tasks       # the target's asyncio task tree (--json)
//! cargo run --example client -- --list      # the running sessions (--json for scripts)
//! ```
//!
//! Its exit statuses are [`ClientExit`].

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use crate::core::protocol::{Reply, Request, RevokeRequest, Scope};
use crate::core::{Client, Pid, Processes, Transport};
use crate::proc::ProcFs;
use crate::transport::{FifoTransport, SessionState, UnixSocketTransport};

use super::attach::Debugging;
use super::command::{Cmd, ProcessArg, ProfileArgs, ScopeArg};
use super::exit::{ClientExit, Failure, START_HINT};
use super::profile::{self, Outcome};
use super::render::{self, Listed, Paint};
use super::repl;
use super::sanitize::escape;
use super::shell::{self, Shell};
use super::source::Sources;
use super::top;
use super::transport::TransportKind;

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

    /// Print `status`, `ps`, `stack`, `tasks`, `top` or `--list` as JSON, for
    /// scripts
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
    command: Option<Program>,
}

/// The client's subcommands: a [`Cmd`] for the controller (the same as at
/// the prompt), or one about the program itself, which needs no
/// controller.
#[derive(Subcommand, Debug)]
enum Program {
    #[command(flatten)]
    Session(Cmd),
    /// Print a shell completion script for the client (bash, zsh, fish,
    /// elvish, powershell), e.g. `source <(client completions bash)`
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the client's man page (roff), or write it and one page per
    /// subcommand (client-attach.1, ...) into DIR
    Man {
        /// Write the pages into this directory, e.g. ~/.local/share/man/man1
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The client's name in its completions and man pages: the name of the
/// program `cargo install --example client` installs.
const CLIENT: &str = "client";

/// The client program, as `cargo run --example client` runs it: logs
/// warnings to stderr (`RUST_LOG` changes that), then
/// [`run_with_args`] with this process's arguments.
///
/// # Panics
///
/// If a logger is already set.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    run_with_args(std::env::args_os()).into()
}

/// Runs the client with a command line (the program's name first), talks
/// to the controller and the terminal, prints a failure to stderr, and
/// says how to exit.
pub fn run_with_args<I, T>(args: I) -> ClientExit
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return ClientExit::for_clap(&err);
        }
    };
    let result = check(&args).and_then(|()| {
        if let Some(program) = &args.command {
            if let Some(done) = about_itself(program) {
                return done;
            }
        }
        if args.list {
            list_sessions(&args)
        } else {
            match args.transport {
                TransportKind::Fifo => fifo_transport(&args).and_then(|t| run(t, &args)),
                TransportKind::Socket => socket_transport(&args).and_then(|t| run(t, &args)),
            }
        }
    });
    match result {
        Ok(exit) => exit,
        Err(failure) => {
            eprintln!(
                "{}",
                Paint::stderr().bad(&format!("❌ {}", failure.message))
            );
            failure.exit
        }
    }
}

/// Prints a command's output (see [`render::emit`]: a reader that went
/// away is no failure).
fn print_out(text: &str) -> Result<(), Failure> {
    Ok(render::emit(
        &mut std::io::stdout().lock(),
        text.as_bytes(),
    )?)
}

/// The longest `--timeout`: an hour.
const MAX_TIMEOUT: f64 = 3600.0;

/// What clap cannot check: a usable `--timeout`, `--json` where it means
/// something.
fn check(args: &Args) -> Result<(), Failure> {
    if !(args.timeout > 0.0 && args.timeout <= MAX_TIMEOUT) {
        Err(Failure::new(
            ClientExit::Usage,
            format!("--timeout must be a number of seconds above 0, at most {MAX_TIMEOUT}"),
        ))
    } else if args.json && !args.list && !session_command(args).is_some_and(Cmd::has_json) {
        Err(Failure::new(
            ClientExit::Usage,
            "--json goes with status or --list (and ps, stack, tasks, top)",
        ))
    } else {
        Ok(())
    }
}

/// The command for the controller, if the command line has one.
fn session_command(args: &Args) -> Option<&Cmd> {
    match &args.command {
        Some(Program::Session(command)) => Some(command),
        _ => None,
    }
}

/// `completions` and `man`, which print what the client is: `None` for a
/// command for the controller.
fn about_itself(program: &Program) -> Option<Result<ClientExit, Failure>> {
    let written = match program {
        Program::Session(_) => return None,
        Program::Completions { shell } => shell::completions(
            Args::command(),
            CLIENT,
            *shell,
            &mut std::io::stdout().lock(),
        ),
        Program::Man { dir: None } => {
            shell::man_page(Args::command(), CLIENT, &mut std::io::stdout().lock())
        }
        Program::Man { dir: Some(dir) } => {
            shell::man_pages_to(Args::command(), CLIENT, dir).map(|files| {
                for file in files {
                    println!("{}", dir.join(file).display());
                }
            })
        }
    };
    Some(
        written
            .map(|()| ClientExit::Success)
            .map_err(|err| Failure::new(ClientExit::Failed, format!("could not write: {err}"))),
    )
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
            ClientExit::NotRunning,
            format!(
                "Controller not running: no heli session in {}{START_HINT}\n\
                 (as the same user and with the same XDG_RUNTIME_DIR; \
                 a controller started with --transport fifo needs it here too)",
                UnixSocketTransport::runtime_dir()?.display()
            ),
        )),
        [only] => Ok(only.transport()),
        several => Err(Failure::new(
            ClientExit::Usage,
            format!(
                "Several sessions are running ({}): choose one with --session NAME (see client --list)",
                several.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        )),
    }
}

fn run<T: Transport>(transport: T, args: &Args) -> Result<ClientExit, Failure> {
    let app = App::new(transport, args)?;
    Ok(match session_command(args) {
        Some(command) => {
            app.execute(command, args.json)?;
            ClientExit::Success
        }
        None => repl::interactive(
            |command, json| app.execute(command, json),
            || app.tree_pids(),
            app.out,
        ),
    })
}

/// `--list`: every session of the user, with what its controller says.
fn list_sessions(args: &Args) -> Result<ClientExit, Failure> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut listed = Vec::new();
    for entry in UnixSocketTransport::sessions()? {
        match &entry.state {
            SessionState::Live => listed.push(Listed {
                answer: Client::new(entry.transport())
                    .timeout(timeout)
                    .status()
                    .map_err(|err| err.to_string()),
                name: entry.name.clone(),
                socket: entry.path.display().to_string(),
            }),
            SessionState::Dead => {
                eprintln!(
                    "removed the stale socket of session {} (its controller died)",
                    escape(&entry.name)
                )
            }
            SessionState::Foreign(why) => eprintln!(
                "ignored {}: {}",
                escape(&entry.path.display().to_string()),
                escape(why)
            ),
            _ => {}
        }
    }
    if args.json {
        print_out(&render::list_json_text(&listed))?;
    } else if listed.is_empty() {
        print_out(&render::no_sessions(&UnixSocketTransport::runtime_dir()?))?;
    } else {
        print_out(&render::list_table(&listed, Paint::stdout()))?;
    }
    Ok(ClientExit::Success)
}

/// A client of one controller, and how it runs debuggers.
struct App<T> {
    client: Client<T>,
    debugging: Debugging,
    out: Paint,
}

impl<T: Transport> App<T> {
    fn new(transport: T, args: &Args) -> Result<App<T>, Failure> {
        let out = Paint::stdout();
        Ok(App {
            debugging: Debugging::new(args.python.clone(), out)?,
            client: Client::new(transport).timeout(Duration::from_secs_f64(args.timeout)),
            out,
        })
    }

    fn execute(&self, command: &Cmd, json: bool) -> Result<(), Failure> {
        match command {
            Cmd::Attach {
                process: ProcessArg(pid),
                force,
                with,
                for_,
            } => self
                .debugging
                .attach(&self.client, *pid, *force, with.as_deref(), *for_),
            Cmd::Pid => print_out(&format!("{}\n", self.client.target_pid()?)),
            Cmd::Ps => {
                let tree = self.client.ps()?;
                if json {
                    print_out(&render::ps_json_text(&tree))?;
                } else {
                    print_out(&render::ps_text(&tree, self.out))?;
                }
                Ok(())
            }
            Cmd::Stack {
                scope: ScopeArg(scope),
            } => self.stack(*scope, json),
            Cmd::Top {
                scope: ScopeArg(scope),
                options,
            } => top::run(&self.client, *scope, options, json),
            Cmd::Profile {
                scope: ScopeArg(scope),
                options,
            } => self.profile(*scope, options),
            Cmd::Status => {
                let status = self.client.status()?;
                if json {
                    print_out(&render::status_json_text(&status))?;
                } else {
                    // A granted child's parent, read here: no PS, which
                    // would read the whole tree for a line or two.
                    let parent_of = |pid| {
                        ProcFs
                            .process(pid)
                            .ok()
                            .flatten()
                            .and_then(|process| process.parent)
                    };
                    print_out(&render::status_text(&status, parent_of, self.out))?;
                }
                Ok(())
            }
            Cmd::Revoke {
                process: ProcessArg(pid),
            } => self.revoke(*pid),
            Cmd::Tasks {
                process: ProcessArg(pid),
            } => self.tasks(*pid, json),
            Cmd::Audit { since } => {
                let since = since.map(|since| since.as_secs().max(1));
                match self.client.request(Request::Audit(since))? {
                    Reply::Audit(records) if json => {
                        print_out(&render::audit_json_lines(&records))?
                    }
                    Reply::Audit(records) => print_out(&render::audit_text(&records))?,
                    Reply::Error(message) => return Err(Failure::new(ClientExit::Failed, message)),
                    other => {
                        return Err(Failure::new(
                            ClientExit::Failed,
                            format!("Unexpected reply to AUDIT: {other}"),
                        ))
                    }
                }
                Ok(())
            }
            Cmd::Terminate => {
                self.client.terminate()?;
                println!("Controller is stopping the target and exiting");
                Ok(())
            }
        }
    }

    /// `revoke`: withdraws this client's grant on `pid` (the target when
    /// `None`). Whether it holds one is asked first: the controller answers
    /// `READY` to a revoke that finds nothing, and only this client makes
    /// its own grants, so none can appear meanwhile.
    fn revoke(&self, pid: Option<Pid>) -> Result<(), Failure> {
        let me = Pid::this();
        let status = self.client.status()?;
        let process = pid.unwrap_or(status.pid);
        let held = status
            .grants
            .iter()
            .any(|grant| grant.process == process && grant.client == me);
        if !held {
            println!("This client (PID {me}) holds no grant on PID {process}: nothing to withdraw");
            return Ok(());
        }
        let mut revoke = RevokeRequest::new().client(me);
        if let Some(pid) = pid {
            revoke = revoke.process(pid);
        }
        self.client.revoke_grant(revoke)?;
        println!(
            "{}",
            self.out
                .good(&format!("✅ Permission on PID {process} withdrawn"))
        );
        Ok(())
    }

    /// `stack`: the processes' stacks with the source lines this client
    /// can read. The target alone prints its threads (as `stack` always
    /// did) and fails when they cannot be read; `--pid` and `--all` print
    /// each process under a header, a skipped one with the reason.
    fn stack(&self, scope: Scope, json: bool) -> Result<(), Failure> {
        let mut stacks = self.client.stacks(scope)?;
        Sources::new().fill(&mut stacks);
        if json {
            print_out(&render::stacks_json_text(&stacks))?;
            return Ok(());
        }
        match (scope, stacks.as_slice()) {
            (Scope::Target, [target]) => match &target.skipped {
                Some(why) => Err(Failure::new(
                    ClientExit::Failed,
                    format!("Cannot read the target's stacks: {}", escape(why)),
                )),
                None => {
                    print_out(&render::threads_stack_text(target))?;
                    Ok(())
                }
            },
            _ => {
                print_out(&render::processes_stack_text(&stacks))?;
                Ok(())
            }
        }
    }

    /// `profile`: samples on a connection of its own until the profile
    /// ends or Ctrl-C, showing its progress on a terminal, then writes
    /// it. A profile that ended before any sample (a target that is not
    /// Python) writes nothing and fails; one whose controller stopped
    /// answering writes what it has and fails.
    fn profile(&self, scope: Scope, options: &ProfileArgs) -> Result<(), Failure> {
        let job = options.job(scope);
        let mut session = self.client.session()?;
        let status = session.status()?;
        let title = profile::title(scope, status.pid, &status.command);
        let terminal = std::io::stderr().is_terminal();
        let (profile, outcome) = self.debugging.interruptible(|interrupted| {
            profile::collect(&mut session, &job, interrupted, |profile| {
                if terminal {
                    eprint!("\r\x1b[K{}", profile::progress_line(profile));
                }
            })
        })??;
        drop(session);
        if terminal {
            eprint!("\r\x1b[K");
        }
        if let Some(failure) = profile::failed_before_any_sample(&profile, &outcome) {
            return Err(failure);
        }
        let summary = profile::summary(&profile, &outcome);
        let bytes = profile::render(&profile, &job, &title, &summary).map_err(|err| {
            Failure::new(
                ClientExit::Failed,
                format!("Cannot render the profile: {err}"),
            )
        })?;
        let shown = escape(&job.output.display().to_string()).into_owned();
        profile::write_output(&job.output, &bytes).map_err(|err| {
            Failure::new(ClientExit::Failed, format!("Cannot write {shown}: {err}"))
        })?;
        let written = if job.output.as_os_str() == "-" {
            "Wrote the profile to standard output".to_owned()
        } else {
            format!("Wrote {shown}")
        };
        eprintln!("{written}: {summary}");
        match outcome {
            Outcome::Lost(failure) => Err(Failure::new(
                failure.exit,
                format!("The profile is incomplete: {}", failure.message),
            )),
            Outcome::Ended | Outcome::Interrupted => Ok(()),
        }
    }

    /// `tasks`: the asyncio task tree of the target (or of `pid`), as
    /// `python -m asyncio pstree` draws it; tasks that await each other in
    /// a cycle fail, naming the cycle (pstree's exit status 1 too).
    fn tasks(&self, pid: Option<Pid>, json: bool) -> Result<(), Failure> {
        let tasks = self.client.tasks(pid)?;
        if json {
            print_out(&render::tasks_json_text(&tasks))?;
            return Ok(());
        }
        match render::tasks_text(&tasks) {
            Ok(text) => {
                print_out(&text)?;
                Ok(())
            }
            Err(cycles) => Err(Failure::new(ClientExit::Failed, cycles)),
        }
    }

    /// The pids of the target's tree, for Tab completion; none when the
    /// controller does not answer (within the client's timeout).
    fn tree_pids(&self) -> Vec<Pid> {
        self.client.ps().map_or_else(
            |_| Vec::new(),
            |tree| tree.processes.iter().map(|process| process.pid).collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::top::TopOptions;
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from([&["client"], args].concat()).unwrap_or_else(|e| panic!("{e}"))
    }

    impl Args {
        /// The command for the controller, as the prompt would parse it.
        fn cmd(&self) -> Option<Cmd> {
            session_command(self).cloned()
        }
    }

    #[test]
    fn completions_and_man_are_commands_of_the_client_alone() {
        assert!(matches!(
            parse(&["completions", "bash"]).command,
            Some(Program::Completions { shell: Shell::Bash })
        ));
        assert!(matches!(
            parse(&["man"]).command,
            Some(Program::Man { dir: None })
        ));
        let dir = parse(&["man", "--dir", "/d"]);
        assert!(
            matches!(&dir.command, Some(Program::Man { dir: Some(d) }) if d == std::path::Path::new("/d"))
        );
        assert_eq!(dir.cmd(), None);
        let err = Args::try_parse_from(["client", "completions", "tcsh"]).unwrap_err();
        assert_eq!(ClientExit::for_clap(&err), ClientExit::Usage);
        let text = err.to_string();
        assert!(text.contains("invalid value 'tcsh'"), "{text}");
        assert!(
            text.contains("bash, elvish, fish, powershell, zsh"),
            "{text}"
        );
        // `completions` needs its shell.
        assert!(Args::try_parse_from(["client", "completions"]).is_err());
        // --json means nothing for them.
        assert!(usage(&["completions", "bash", "--json"]).contains("--json goes with"));
    }

    fn usage(args: &[&str]) -> String {
        check(&parse(args)).map_or_else(
            |failure| {
                assert_eq!(failure.exit, ClientExit::Usage, "{args:?}");
                failure.message
            },
            |()| panic!("{args:?} passed"),
        )
    }

    #[test]
    fn defaults() {
        let args = parse(&[]);
        assert_eq!(args.transport, TransportKind::Socket);
        assert_eq!(args.session, None);
        assert!(!args.list);
        assert!(!args.json);
        assert_eq!(args.fifo_dir, None);
        assert_eq!(args.timeout, 2.0);
        assert_eq!(args.python, None);
        assert_eq!(args.cmd(), None);
        assert!(check(&args).is_ok());
    }

    #[test]
    fn tasks_of_the_target_or_of_a_process() {
        let tasks = |raw: Option<u32>| {
            Some(Cmd::Tasks {
                process: ProcessArg(raw.map(|raw| Pid::new(raw).unwrap())),
            })
        };
        assert_eq!(parse(&["tasks"]).cmd(), tasks(None));
        assert_eq!(parse(&["tasks", "4243"]).cmd(), tasks(Some(4243)));
        assert_eq!(parse(&["tasks", "--pid", "4243"]).cmd(), tasks(Some(4243)));
        for bad in [&["tasks", "all"][..], &["tasks", "1", "--pid", "2"]] {
            assert!(Args::try_parse_from([&["client"], bad].concat()).is_err());
        }
    }

    fn stack(scope: Scope) -> Option<Cmd> {
        Some(Cmd::Stack {
            scope: ScopeArg(scope),
        })
    }

    fn attach(pid: Option<u32>, force: bool, with: Option<&str>) -> Option<Cmd> {
        Some(Cmd::Attach {
            process: ProcessArg(pid.map(self::pid)),
            force,
            with: with.map(str::to_owned),
            for_: None,
        })
    }

    fn revoke(pid: Option<u32>) -> Option<Cmd> {
        Some(Cmd::Revoke {
            process: ProcessArg(pid.map(self::pid)),
        })
    }

    #[test]
    fn commands_and_their_options() {
        assert_eq!(parse(&["pid"]).cmd(), Some(Cmd::Pid));
        assert_eq!(parse(&["ps"]).cmd(), Some(Cmd::Ps));
        assert_eq!(parse(&["stack"]).cmd(), stack(Scope::Target));
        let one = stack(Scope::Process(pid(4243)));
        assert_eq!(parse(&["stack", "--pid", "4243"]).cmd(), one);
        assert_eq!(parse(&["stack", "4243"]).cmd(), one);
        assert_eq!(parse(&["stack", "--all"]).cmd(), stack(Scope::All));
        assert_eq!(parse(&["stack", "all"]).cmd(), stack(Scope::All));
        assert_eq!(parse(&["stack", "ALL"]).cmd(), stack(Scope::All));
        assert_eq!(parse(&["revoke"]).cmd(), revoke(None));
        assert_eq!(
            parse(&["revoke", "--pid", "4243"]).cmd(),
            revoke(Some(4243))
        );
        assert_eq!(parse(&["revoke", "4243"]).cmd(), revoke(Some(4243)));
        assert_eq!(parse(&["terminate"]).cmd(), Some(Cmd::Terminate));
        assert_eq!(parse(&["attach"]).cmd(), Some(Cmd::attach()));
        assert_eq!(
            parse(&["attach", "--force", "--with", "gdb -p {pid}"]).cmd(),
            attach(None, true, Some("gdb -p {pid}"))
        );
        assert_eq!(
            parse(&["attach", "--pid=4243", "--with", "gdb -p {pid}"]).cmd(),
            attach(Some(4243), false, Some("gdb -p {pid}"))
        );
        assert_eq!(
            parse(&["attach", "4243", "--force"]).cmd(),
            attach(Some(4243), true, None)
        );
    }

    fn pid(raw: u32) -> Pid {
        Pid::new(raw).unwrap()
    }

    fn top(args: &[&str]) -> (Scope, TopOptions) {
        match parse(&[&["top"], args].concat()).cmd() {
            Some(Cmd::Top {
                scope: ScopeArg(scope),
                options,
            }) => (scope, options),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn top_and_its_options() {
        let (scope, options) = top(&[]);
        assert_eq!(scope, Scope::Target);
        assert_eq!(
            options,
            TopOptions {
                rate: 100,
                interval: Duration::from_secs(1),
                idle: false,
                cumulative: false,
                iterations: None,
                once: false,
            }
        );
        assert_eq!(top(&["4243"]).0, Scope::Process(pid(4243)));
        assert_eq!(top(&["--pid", "4243"]).0, Scope::Process(pid(4243)));
        assert_eq!(top(&["all"]).0, Scope::All);
        let (scope, options) = top(&[
            "--all",
            "--rate",
            "250",
            "--interval",
            "500ms",
            "--idle",
            "--cumulative",
            "--iterations",
            "3",
        ]);
        assert_eq!(scope, Scope::All);
        assert_eq!(
            options,
            TopOptions {
                rate: 250,
                interval: Duration::from_millis(500),
                idle: true,
                cumulative: true,
                iterations: Some(3),
                once: false,
            }
        );
        assert!(top(&["--once"]).1.once);
        for args in [
            &["client", "top", "--rate", "0"][..],
            &["client", "top", "--rate", "10001"],
            &["client", "top", "--interval", "10ms"],
            &["client", "top", "--interval", "soon"],
            &["client", "top", "--iterations", "0"],
            &["client", "top", "--once", "--iterations", "2"],
            &["client", "top", "1", "--all"],
        ] {
            let err = Args::try_parse_from(args).unwrap_err();
            assert_eq!(ClientExit::for_clap(&err), ClientExit::Usage, "{args:?}");
        }
    }

    fn profile_job(args: &[&str]) -> profile::Job {
        match parse(&[&["profile"], args].concat()).cmd() {
            Some(Cmd::Profile {
                scope: ScopeArg(scope),
                options,
            }) => options.job(scope),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn profile_and_its_options() {
        use crate::core::profile::DEFAULT_RATE;
        let job = profile_job(&[]);
        assert_eq!(job.request.scope, Scope::Target);
        assert_eq!(job.request.rate, DEFAULT_RATE);
        // Until Ctrl-C.
        assert_eq!(job.request.duration_ms, 0);
        assert_eq!(job.format, profile::Format::Svg);
        assert_eq!(job.output, PathBuf::from("profile.svg"));
        assert_eq!(job.shape, profile::Shape::default());

        let job = profile_job(&[
            "--all",
            "--duration",
            "2m",
            "--rate=250",
            "--format",
            "collapsed",
            "--threads",
            "--idle",
        ]);
        assert_eq!(job.request.scope, Scope::All);
        assert_eq!((job.request.rate, job.request.duration_ms), (250, 120_000));
        assert_eq!(job.output, PathBuf::from("profile.txt"));
        let shape = profile::Shape {
            processes: true,
            threads: true,
            idle: true,
        };
        assert_eq!(job.shape, shape);

        let job = profile_job(&["4243", "--format", "speedscope", "-o", "-"]);
        assert_eq!(job.request.scope, Scope::Process(pid(4243)));
        assert_eq!(job.output, PathBuf::from("-"));
        let job = profile_job(&["--pid", "4243", "--format", "speedscope"]);
        assert_eq!(job.request.scope, Scope::Process(pid(4243)));
        assert_eq!(job.output, PathBuf::from("profile.speedscope.json"));
        let job = profile_job(&["all", "--output", "x.svg", "--duration", "500ms"]);
        assert_eq!(job.request.scope, Scope::All);
        assert_eq!(job.output, PathBuf::from("x.svg"));
        assert_eq!(job.request.duration_ms, 500);
        assert_eq!(profile_job(&["--rate", "10000"]).request.rate, 10_000);
    }

    #[test]
    fn profile_options_out_of_range_are_bad_usage() {
        for args in [
            &["client", "profile", "--rate", "0"][..],
            &["client", "profile", "--rate", "10001"],
            &["client", "profile", "--duration", "0s"],
            &["client", "profile", "--duration", "soon"],
            &["client", "profile", "--format", "png"],
            &["client", "profile", "--all", "--pid", "3"],
            &["client", "profile", "-o"],
        ] {
            let err = Args::try_parse_from(args).unwrap_err();
            assert_eq!(ClientExit::for_clap(&err), ClientExit::Usage, "{args:?}");
        }
        assert_eq!(
            usage(&["profile", "--json"]),
            "--json goes with status or --list (and ps, stack, tasks, top)"
        );
    }

    #[test]
    fn a_pid_that_is_no_pid_or_both_pid_and_all_is_bad_usage() {
        for args in [
            &["client", "attach", "--pid", "abc"][..],
            &["client", "attach", "--pid", "0"],
            &["client", "attach", "--pid", "-1"],
            &["client", "attach", "--pid", ""],
            &["client", "attach", "--pid"],
            &["client", "stack", "--pid", "12x"],
            &["client", "stack", "--pid", "4243", "--all"],
            &["client", "stack", "--all", "--pid=1"],
            &["client", "stack", "all", "--pid=1"],
            &["client", "stack", "12", "--all"],
            &["client", "stack", "12", "13"],
            &["client", "stack", "any"],
            &["client", "attach", "12", "--pid", "13"],
            &["client", "attach", "12", "13"],
            &["client", "revoke", "12", "--pid", "12"],
            &["client", "revoke", "--pid", "nope"],
            &["client", "ps", "--pid", "1"],
        ] {
            let err = Args::try_parse_from(args).unwrap_err();
            assert_eq!(ClientExit::for_clap(&err), ClientExit::Usage, "{args:?}");
            assert_eq!(run_with_args(args), ClientExit::Usage, "{args:?}");
        }
    }

    #[test]
    fn global_options_go_before_or_after_the_command() {
        let options = [
            "--transport",
            "fifo",
            "--fifo-dir",
            "/d",
            "--timeout",
            "0.5",
        ];
        for args in [
            [&options[..], &["status"]].concat(),
            [&["status"][..], &options].concat(),
        ] {
            let args = parse(&args);
            assert_eq!(args.transport, TransportKind::Fifo);
            assert_eq!(args.fifo_dir, Some(PathBuf::from("/d")));
            assert_eq!(args.timeout, 0.5);
            assert_eq!(args.cmd(), Some(Cmd::Status));
        }
        let args = parse(&[
            "pid",
            "--session",
            "web-1",
            "--python",
            "/usr/bin/python3.14",
        ]);
        assert_eq!(args.session.as_deref(), Some("web-1"));
        assert_eq!(args.python, Some(PathBuf::from("/usr/bin/python3.14")));
    }

    #[test]
    fn json_only_with_status_ps_stack_or_list() {
        for args in [
            &["--json", "status"][..],
            &["status", "--json"],
            &["ps", "--json"],
            &["--json", "stack"],
            &["stack", "--all", "--json"],
            &["stack", "--json", "--pid", "3"],
            &["top", "--json"],
            &["--json", "top", "all", "--once"],
            &["tasks", "--json"],
            &["tasks", "--pid", "3", "--json"],
            &["--list", "--json"],
            &["--json", "--list"],
        ] {
            assert!(check(&parse(args)).is_ok(), "{args:?}");
        }
        for args in [
            &["--json"][..],
            &["--json", "pid"],
            &["attach", "--json"],
            &["revoke", "--json"],
        ] {
            assert_eq!(
                usage(args),
                "--json goes with status or --list (and ps, stack, tasks, top)"
            );
        }
    }

    #[test]
    fn timeout_must_be_a_positive_number() {
        for timeout in ["0", "-1", "inf", "NaN", "-0.5", "1e12", "3601"] {
            assert_eq!(
                usage(&[&format!("--timeout={timeout}"), "pid"]),
                "--timeout must be a number of seconds above 0, at most 3600",
                "{timeout}"
            );
        }
        for timeout in ["0.001", "3600"] {
            assert!(check(&parse(&["--timeout", timeout, "pid"])).is_ok());
        }
        let err = Args::try_parse_from(["client", "--timeout", "soon"]).unwrap_err();
        assert_eq!(ClientExit::for_clap(&err), ClientExit::Usage);
    }

    #[test]
    fn unknown_options_and_transports_are_usage_errors() {
        for args in [
            &["client", "--bogus"][..],
            &["client", "--transport", "carrier-pigeon"],
            &["client", "frobnicate"],
            &["client", "pid", "12"],
        ] {
            let err = Args::try_parse_from(args).unwrap_err();
            assert_eq!(ClientExit::for_clap(&err), ClientExit::Usage, "{args:?}");
        }
    }

    #[test]
    fn bad_usage_exits_2_before_any_connection() {
        assert_eq!(
            run_with_args(["client", "--json", "pid"]),
            ClientExit::Usage
        );
        assert_eq!(
            run_with_args(["client", "--timeout", "0", "status"]),
            ClientExit::Usage
        );
        assert_eq!(run_with_args(["client", "--bogus"]), ClientExit::Usage);
    }

    #[test]
    fn no_controller_exits_3() {
        let dir = tempfile::tempdir().unwrap();
        let fifo_dir = dir.path().join("pipes");
        let args = ["client", "--transport", "fifo", "--fifo-dir"];
        let exit = run_with_args(
            args.iter()
                .map(OsString::from)
                .chain([fifo_dir.into_os_string(), "pid".into()]),
        );
        assert_eq!(exit, ClientExit::NotRunning);
    }
}
