//! The heli client: asks the controller for ptrace rights over its target
//! and attaches pdb to it.
//!
//! ```text
//! cargo run --example client              # interactive: attach, quit, terminate, help
//! cargo run --example client -- attach    # one command, then exit
//! cargo run --example client -- --list    # the running sessions
//! ```

mod common;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use common::TransportKind;
use heli::core::{Client, ErrorKind, Transport};
use heli::grant::PtraceScope;
use heli::transport::{FifoTransport, SessionState, UnixSocketTransport};

/// Attaches pdb to the target of a running heli controller.
///
/// Without a command, reads commands at a `>>> ` prompt. Exit status: 0 on
/// success, 1 when the controller refused or the debugger failed, 2 for bad
/// usage (or several sessions and no --session), 3 when no controller runs,
/// 4 on timeout, 5 when attaching is impossible here (ptrace_scope, no
/// Python 3.14).
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

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    /// Get ptrace permission and attach pdb to the target
    Attach {
        /// Take the grant over from another client that holds it
        #[arg(long)]
        force: bool,
    },
    /// Print the target's PID
    Pid,
    /// Show what the controller and its target are doing
    Status,
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

impl From<heli::core::Error> for Failure {
    fn from(err: heli::core::Error) -> Self {
        let code = match err.kind() {
            ErrorKind::NotRunning => 3,
            ErrorKind::Timeout => 4,
            _ => 1,
        };
        let mut message = err.to_string();
        if err.kind() == ErrorKind::NotRunning {
            message.push_str(START_HINT);
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

struct App<T> {
    client: Client<T>,
    python: Option<PathBuf>,
    /// Cleared while a debugger runs: Ctrl-C is then the debugger's, not ours.
    at_prompt: Arc<AtomicBool>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    let result = if !(args.timeout.is_finite() && args.timeout > 0.0) {
        Err(Failure::new(
            2,
            "--timeout must be a positive number of seconds",
        ))
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
            eprintln!("❌ {}", failure.message);
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
                "Controller not running: no heli session in {}{START_HINT}",
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
    Ok(match args.command {
        Some(command) => {
            app.execute(command)?;
            ExitCode::SUCCESS
        }
        None => app.interactive(),
    })
}

/// `--list`: every session of the user, with what its controller says.
fn list_sessions(args: &Args) -> Result<ExitCode, Failure> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let entries = UnixSocketTransport::sessions()?;
    if entries.is_empty() {
        println!(
            "No heli session is running (none in {}).",
            UnixSocketTransport::runtime_dir()?.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:>8} {:>10} {:<10} COMMAND",
        "NAME", "PID", "UPTIME", "STATE"
    );
    for entry in entries {
        match &entry.state {
            SessionState::Live => match Client::new(entry.transport()).timeout(timeout).status() {
                Ok(status) => println!(
                    "{:<24} {:>8} {:>10} {:<10} {}",
                    entry.name,
                    status.pid,
                    uptime(status.uptime_secs),
                    status.state,
                    status.command
                ),
                Err(err) => println!(
                    "{:<24} {:>8} {:>10} {:<10} ({err})",
                    entry.name, "-", "-", "no answer"
                ),
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
    Ok(ExitCode::SUCCESS)
}

/// `3725` -> `1h02m05s`.
fn uptime(secs: u64) -> String {
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

impl<T: Transport> App<T> {
    fn new(transport: T, args: &Args) -> Result<App<T>, Failure> {
        let at_prompt = Arc::new(AtomicBool::new(true));
        sigint_at_prompt_only(&at_prompt)?;
        Ok(App {
            client: Client::new(transport).timeout(Duration::from_secs_f64(args.timeout)),
            python: args.python.clone(),
            at_prompt,
        })
    }

    fn interactive(&self) -> ExitCode {
        println!(
            "heli client: attach a debugger to the controller's target. Type 'help' for commands."
        );
        let stdin = std::io::stdin();
        let mut line = String::new();
        loop {
            print!(">>> ");
            let _ = std::io::stdout().flush();
            line.clear();
            match stdin.lock().read_line(&mut line) {
                Ok(0) => {
                    println!();
                    println!("Goodbye!");
                    return ExitCode::SUCCESS;
                }
                Ok(_) => {}
                Err(err) => {
                    eprintln!("client: cannot read input: {err}");
                    return ExitCode::from(1);
                }
            }
            let words: Vec<String> = line
                .split_whitespace()
                .map(str::to_ascii_lowercase)
                .collect();
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            let command = match words.as_slice() {
                [] => continue,
                ["attach"] => Cmd::Attach { force: false },
                ["attach", "--force"] => Cmd::Attach { force: true },
                ["pid"] => Cmd::Pid,
                ["status"] => Cmd::Status,
                ["revoke"] => Cmd::Revoke,
                ["terminate"] => Cmd::Terminate,
                ["help"] | ["?"] => {
                    print_help();
                    continue;
                }
                ["quit"] | ["exit"] => {
                    println!("Goodbye!");
                    return ExitCode::SUCCESS;
                }
                _ => {
                    println!(
                        "Unknown command: {}. Type 'help' for the list of commands.",
                        line.trim()
                    );
                    continue;
                }
            };
            match self.execute(command) {
                Ok(()) if command == Cmd::Terminate => return ExitCode::SUCCESS,
                Ok(()) => {}
                Err(failure) => println!("❌ {}", failure.message),
            }
        }
    }

    fn execute(&self, command: Cmd) -> Result<(), Failure> {
        match command {
            Cmd::Attach { force } => self.attach(force),
            Cmd::Pid => {
                println!("{}", self.client.target_pid()?);
                Ok(())
            }
            Cmd::Status => {
                let status = self.client.status()?;
                let mut rows = vec![
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
                ];
                if let Some(session) = status.get("session") {
                    rows.insert(0, ("session", session.to_owned()));
                }
                for (key, value) in rows {
                    println!("{key:<13} {value}");
                }
                Ok(())
            }
            Cmd::Revoke => {
                self.client.revoke(std::process::id())?;
                println!("Permission withdrawn");
                Ok(())
            }
            Cmd::Terminate => {
                self.client.terminate()?;
                println!("Controller is stopping the target and exiting");
                Ok(())
            }
        }
    }

    /// Asks for the grant on a connection kept open while pdb runs: with
    /// the socket transport the grant ends when that connection closes, even
    /// if this client is killed.
    fn attach(&self, force: bool) -> Result<(), Failure> {
        let scope = PtraceScope::current().unwrap_or(PtraceScope::Restricted);
        check_scope(scope)?;
        let mut session = self.client.session()?;
        let target = session.target_pid()?;
        let me = std::process::id();
        println!("Requesting ptrace permission for client PID {me}...");
        if force {
            session.take_over(me)?;
        } else {
            session.grant_access(me)?;
        }
        println!("✅ Permission granted");
        let result = self.debug(target, scope);
        // The grant is no longer needed once the debugger is gone.
        if let Err(err) = session.revoke(me) {
            println!("Note: the grant was not withdrawn: {err}");
        }
        result
    }

    fn debug(&self, target: u32, scope: PtraceScope) -> Result<(), Failure> {
        let python = self.pdb_python(target)?;
        println!();
        println!("Attaching pdb to target PID {target}...");
        println!("Type pdb commands (list, next, print, etc.) or 'quit' to detach");
        println!();
        let _ = std::io::stdout().flush();
        self.at_prompt.store(false, Ordering::SeqCst);
        let status = Command::new(&python.exe)
            .args(["-m", "pdb", "-p", &target.to_string()])
            .status();
        self.at_prompt.store(true, Ordering::SeqCst);
        let status = status.map_err(|err| {
            Failure::new(1, format!("cannot run {}: {err}", python.exe.display()))
        })?;
        println!();
        println!("Debugger detached");
        if status.success() {
            return Ok(());
        }
        let mut message = format!("pdb exited with {status}.");
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
                    "Python 3.14+ required to run pdb -p (found: {}); pass --python or set HELI_PYTHON",
                    found.map_or_else(|| "none".to_owned(), |p| p.describe())
                ),
            )),
        }
    }
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
            format!("Cannot attach: {}.", scope.explain()),
        )),
        PtraceScope::AdminOnly if !has_cap_sys_ptrace() => Err(Failure::new(
            5,
            format!("Cannot attach: {}.", scope.explain()),
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
/// debugger, which shares our terminal.
fn sigint_at_prompt_only(at_prompt: &Arc<AtomicBool>) -> std::io::Result<()> {
    signal_hook::flag::register_conditional_default(
        signal_hook::consts::SIGINT,
        at_prompt.clone(),
    )?;
    Ok(())
}

fn print_help() {
    println!("Available commands:");
    println!("  attach     - Attach debugger to the target process");
    println!("  attach --force - Attach, taking the grant over from another client");
    println!("  status     - Show the target, its uptime and who holds the grant");
    println!("  pid        - Print the target process PID");
    println!("  revoke     - Withdraw this client's ptrace permission");
    println!("  quit       - Exit client (leave controller running)");
    println!("  terminate  - Stop controller, target, and exit client");
    println!("  help       - Show this help message");
}
