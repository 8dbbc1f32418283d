//! The heli client: asks the controller for ptrace rights over its target
//! and attaches pdb to it.
//!
//! ```text
//! cargo run --example client              # interactive: attach, quit, terminate, help
//! cargo run --example client -- attach    # one command, then exit
//! ```

mod common;

use std::error::Error;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use heli::core::{Client, ErrorKind};
use heli::grant::PtraceScope;
use heli::transport::FifoTransport;

/// Attaches pdb to the target of a running heli controller.
///
/// Without a command, reads commands at a `>>> ` prompt. Exit status: 0 on
/// success, 1 when the controller refused or the debugger failed, 2 for bad
/// usage, 3 when no controller runs, 4 on timeout, 5 when attaching is
/// impossible here (ptrace_scope, no Python 3.14).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Directory of the named pipes [default:
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
    Attach,
    /// Print the target's PID
    Pid,
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
            message.push_str(
                "\nStart the controller first, e.g.: cargo run --example controller -- examples/target.py",
            );
        }
        Failure { code, message }
    }
}

struct App {
    client: Client<FifoTransport>,
    python: Option<PathBuf>,
    /// Cleared while a debugger runs: Ctrl-C is then the debugger's, not ours.
    at_prompt: Arc<AtomicBool>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match App::new(&args) {
        Ok(app) => match args.command {
            Some(command) => match app.execute(command) {
                Ok(()) => ExitCode::SUCCESS,
                Err(failure) => {
                    eprintln!("❌ {}", failure.message);
                    ExitCode::from(failure.code)
                }
            },
            None => app.interactive(),
        },
        Err(err) => {
            common::report("client", err.as_ref());
            ExitCode::from(1)
        }
    }
}

impl App {
    fn new(args: &Args) -> Result<App, Box<dyn Error>> {
        if !(args.timeout.is_finite() && args.timeout > 0.0) {
            return Err("--timeout must be a positive number of seconds".into());
        }
        let transport = match &args.fifo_dir {
            Some(dir) => FifoTransport::new(dir),
            None => FifoTransport::for_current_user()?,
        };
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
            let word = line.trim();
            let command = match word.to_ascii_lowercase().as_str() {
                "" => continue,
                "attach" => Cmd::Attach,
                "pid" => Cmd::Pid,
                "revoke" => Cmd::Revoke,
                "terminate" => Cmd::Terminate,
                "help" | "?" => {
                    print_help();
                    continue;
                }
                "quit" | "exit" => {
                    println!("Goodbye!");
                    return ExitCode::SUCCESS;
                }
                _ => {
                    println!("Unknown command: {word}. Type 'help' for the list of commands.");
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
            Cmd::Attach => self.attach(),
            Cmd::Pid => {
                println!("{}", self.client.target_pid()?);
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

    fn attach(&self) -> Result<(), Failure> {
        let scope = PtraceScope::current().unwrap_or(PtraceScope::Restricted);
        check_scope(scope)?;
        let target = self.client.target_pid()?;
        let me = std::process::id();
        println!("Requesting ptrace permission for client PID {me}...");
        self.client.grant_access(me)?;
        println!("✅ Permission granted");
        let result = self.debug(target, scope);
        // The grant is no longer needed once the debugger is gone.
        if let Err(err) = self.client.revoke(me) {
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
    println!("  pid        - Print the target process PID");
    println!("  revoke     - Withdraw this client's ptrace permission");
    println!("  quit       - Exit client (leave controller running)");
    println!("  terminate  - Stop controller, target, and exit client");
    println!("  help       - Show this help message");
}
