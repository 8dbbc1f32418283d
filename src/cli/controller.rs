//! The controller program: runs a target and lets clients attach a
//! debugger to it later.
//!
//! ```text
//! cargo run --example controller -- examples/target.py
//! cargo run --example controller -- -- ./my-server --port 8080
//! ```
//!
//! Its exit statuses are [`ControllerExit`].
//!
//! With `NOTIFY_SOCKET` set (systemd's `Type=notify`), it tells the service
//! manager that it is ready, its status, that it stops, and pings the
//! watchdog `WATCHDOG_USEC` asks for ([`SdNotifier`]); the target inherits
//! none of those variables.

use std::error::Error;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::str::FromStr;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{CommandFactory, Parser};
use log::{info, warn};

use crate::core::{
    Controller, ExitStatus, Granter, Notifier, Restart, RestartPolicy, Supervisor, Transport,
};
use crate::grant::{
    become_subreaper, AgentHost, AutoGranter, GrantMethod, GranterChoice, ProcessSupervisor,
    PtraceScope, PythonInspector,
};
use crate::transport::{AuditLog, FifoTransport, SdNotifier, UnixSocketTransport};

use super::duration;
use super::exit::ControllerExit;
use super::python::configured_python;
use super::shell::{self, Shell};
use super::transport::TransportKind;

/// Runs a target process under supervision; clients can then get the right
/// to attach a debugger (pdb -p) to it, even under Yama ptrace_scope=1.
///
/// The controller exits with the target's exit code, or 128 + the signal
/// that killed it; 125 when the controller itself fails.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
#[command(
    override_usage = "controller [OPTIONS] SCRIPT.py [ARGS]...\n       controller [OPTIONS] -- COMMAND [ARGS]..."
)]
struct Args {
    /// Python interpreter for SCRIPT.py [default: $HELI_PYTHON, else
    /// python3.14, else python3]
    #[arg(long, value_name = "PATH")]
    python: Option<PathBuf>,

    /// How clients reach the controller
    #[arg(long, value_enum, default_value_t = TransportKind::Socket)]
    transport: TransportKind,

    /// Session name, unique per user (socket transport) [default: the
    /// target's name and the controller's PID, e.g. target-1234]
    #[arg(long, value_name = "NAME")]
    name: Option<String>,

    /// Directory of the named pipes (fifo transport) [default:
    /// /tmp/heliparent_debug/user_<name>]
    #[arg(long, value_name = "DIR")]
    fifo_dir: Option<PathBuf>,

    /// How clients get ptrace rights: auto (what the kernel's ptrace_scope
    /// needs), yama (inject prctl(PR_SET_PTRACER) into the target), noop
    #[arg(
        long,
        value_name = "GRANTER",
        default_value_t = GranterChoice::Auto,
        value_parser = named::<GranterChoice>(GRANTERS),
        hide_possible_values = true
    )]
    granter: GranterChoice,

    /// How the yama granter has the target call prctl: auto (ptrace
    /// injection, else PEP 768 remote exec when the target cannot be
    /// injected into: already traced, Syscall User Dispatch; never under a
    /// seccomp filter), ptrace, remote-exec (a CPython 3.14 target runs it
    /// itself)
    #[arg(
        long,
        value_name = "METHOD",
        default_value_t = GrantMethod::Auto,
        value_parser = named::<GrantMethod>(GRANT_METHODS),
        hide_possible_values = true
    )]
    grant_method: GrantMethod,

    /// Set up heli's agent inside a Python 3.14 target (no change to its
    /// code; pdb then attaches without any ptrace): auto (when the kernel's
    /// ptrace_scope is 2 or 3, where no ptrace works), always (and attach
    /// through it), never
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = AgentChoice::Auto)]
    agent: AgentChoice,

    /// Start the target again when it ends: never, on-failure (non-zero exit
    /// or killed by a signal) or always; with back-off from 100 ms to 30 s
    #[arg(
        long,
        value_name = "WHEN",
        default_value_t = Restart::Never,
        value_parser = named::<Restart>(RESTARTS),
        hide_possible_values = true
    )]
    restart: Restart,

    /// Give up after this many restarts
    #[arg(long, value_name = "N")]
    max_restarts: Option<u32>,

    /// Become a child subreaper: orphans of the target's descendants are
    /// re-parented to the controller, which reaps them (automatic as PID 1)
    #[arg(long)]
    subreaper: bool,

    /// Run the target in its own process group and signal the whole group
    #[arg(long)]
    kill_group: bool,

    /// Seconds the target gets to exit after SIGTERM before SIGKILL
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    grace: f64,

    /// Append an audit record (JSON Lines) for every grant, refusal,
    /// revoke, stack dump, profile, STATUS and TERMINATE to FILE (created
    /// 0600; refused at start if it is a symlink, not this user's, has
    /// hard links, or its directory is another user's). Rotate it with
    /// logrotate's default rename (not copytruncate): the controller
    /// follows the new file. Without it the records are kept in memory
    /// only (`client audit`)
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// The longest a grant may last (30s, 10m, 1h, up to a week; whole
    /// seconds): clients get this unless they ask for less (attach --for),
    /// longer is refused; once it is up the grant is withdrawn, and a
    /// client still debugging 5 s later has its debugger ended
    #[arg(long, value_name = "TIME", value_parser = duration::parse_grant_time)]
    max_grant: Option<Duration>,

    /// Print a shell completion script for the controller and exit: bash,
    /// zsh, fish, elvish or powershell, e.g. `source <(controller
    /// --completions bash)`
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<Shell>,

    /// Print the controller's man page (roff) and exit, e.g. `controller
    /// --man > ~/.local/share/man/man1/controller.1`
    #[arg(long, exclusive = true)]
    man: bool,

    /// A Python script and its arguments, or (after --) any command
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "TARGET"
    )]
    target: Vec<String>,
}

/// The names `--granter` takes, as [`GranterChoice`] parses them.
const GRANTERS: &[&str] = &["auto", "yama", "noop"];
/// The names `--grant-method` takes, as [`GrantMethod`] parses them.
const GRANT_METHODS: &[&str] = &["auto", "ptrace", "remote-exec"];
/// The names `--restart` takes, as [`Restart`] parses them.
const RESTARTS: &[&str] = &["never", "on-failure", "always"];

/// A parser of `T` by `names`, the names `T` parses from: listed to clap,
/// they are what the completions offer and what a usage error names.
fn named<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: std::fmt::Display,
{
    PossibleValuesParser::new(names.iter().copied())
        .try_map(|name| name.parse::<T>().map_err(|err| err.to_string()))
}

/// The controller program, as `cargo run --example controller` runs it:
/// one malloc arena for all its threads, info-level logs to stderr
/// (`RUST_LOG` changes that), then [`run_with_args`] with this process's
/// arguments.
///
/// # Panics
///
/// If a logger is already set.
pub fn main() -> ExitCode {
    // Before any thread starts: the controller's threads share one arena.
    crate::grant::one_malloc_arena();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    run_with_args(std::env::args_os()).into()
}

/// Runs the controller with a command line (the program's name first)
/// until its target ends for good; prints a failure to stderr, and says
/// how to exit.
///
/// It handles SIGINT, SIGTERM and the other signals it forwards to the
/// target for as long as it runs, and with `--subreaper` (or as PID 1) it
/// reaps every child of this process: call it from a program of its own.
pub fn run_with_args<I, T>(args: I) -> ControllerExit
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let raw: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let args = match Args::try_parse_from(&raw) {
        Ok(args) => args,
        Err(err) => {
            let _ = err.print();
            return ControllerExit::for_clap(&err);
        }
    };
    if let Some(printed) = about_itself(&args) {
        return printed;
    }
    match run(&args, explicit_command(&raw, &args.target)) {
        Ok(status) => ControllerExit::from(status),
        Err(err) => {
            report("controller", err.as_ref());
            ControllerExit::Failed
        }
    }
}

/// The controller's name in its completions and man page: the name of the
/// program `cargo install --example controller` installs.
const CONTROLLER: &str = "controller";

/// `--completions SHELL` and `--man`, which print what the controller is
/// instead of running a target; `None` without them.
fn about_itself(args: &Args) -> Option<ControllerExit> {
    let mut out = std::io::stdout().lock();
    let written = if let Some(shell_name) = args.completions {
        shell::completions(Args::command(), CONTROLLER, shell_name, &mut out)
    } else if args.man {
        shell::man_page(Args::command(), CONTROLLER, &mut out)
    } else {
        return None;
    };
    Some(match written {
        Ok(()) => ControllerExit::Help,
        Err(err) => {
            report("controller", &err);
            ControllerExit::Failed
        }
    })
}

/// Prints `err` and its chain of sources to stderr.
fn report(program: &str, err: &dyn Error) {
    eprintln!("{program}: error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !err.to_string().contains(&text) {
            eprintln!("  caused by: {text}");
        }
        source = cause.source();
    }
}

/// The longest `--grace`: an hour.
const MAX_GRACE: f64 = 3600.0;

/// What clap cannot check: a usable `--grace`.
fn check(args: &Args) -> Result<(), Box<dyn Error>> {
    if !(0.0..=MAX_GRACE).contains(&args.grace) {
        return Err(format!("--grace must be a number of seconds from 0 to {MAX_GRACE}").into());
    }
    Ok(())
}

fn run(args: &Args, explicit_command: bool) -> Result<ExitStatus, Box<dyn Error>> {
    check(args)?;
    // Before anything starts: a trail that cannot be kept is no trail.
    let audit = match &args.audit_log {
        Some(path) => {
            let log = AuditLog::open(path)?;
            info!("audit records appended to {}", path.display());
            log
        }
        None => AuditLog::memory(),
    };
    let mut command = target_command(args, explicit_command)?;
    let notifier = service_manager(&mut command);
    let grace = Duration::from_secs_f64(args.grace);
    let mut supervisor = ProcessSupervisor::new(command)
        .kill_group(args.kill_group)
        .group_grace(grace);
    if args.subreaper {
        become_subreaper()?;
    }
    let init = std::process::id() == 1;
    if args.subreaper || init {
        info!("reaping every child, orphans included");
        supervisor = supervisor.reap_orphans()?;
    }
    // An init with a terminal hands it to the target, as dumb-init does.
    if init && std::io::stdin().is_terminal() {
        match supervisor.give_terminal() {
            Ok(()) => info!("the target gets the terminal (a foreground process group of its own)"),
            Err(err) => warn!("the target shares the controller's terminal: {err}"),
        }
    }
    // A Yama granter ptraces the target: it must share the reaper's lock.
    let granter =
        AutoGranter::choose(args.granter, supervisor.child_waits())?.with_method(args.grant_method);
    info!("granter: {}", granter.name());
    let grant_method = granter
        .grant_method()
        .map_or("none".to_owned(), |method| method.to_string());
    info!("grant method: {grant_method}");
    let scope = PtraceScope::current()?;
    let agent = if args.agent.wanted(scope) {
        let host = AgentHost::new().map_err(|err| format!("cannot set up the agent: {err}"))?;
        info!(
            "agent files in {} (attach goes through the agent)",
            host.dir().display()
        );
        supervisor = supervisor.agent(host.clone());
        Some(host)
    } else {
        None
    };
    let mut restart = RestartPolicy::new(args.restart);
    if let Some(max) = args.max_restarts {
        restart = restart.max_restarts(max);
    }
    let settings = Settings {
        grace,
        restart,
        scope,
        grant_method,
        subreaper: args.subreaper || init,
        agent,
        notifier,
        audit,
        max_grant: args.max_grant,
    };
    match args.transport {
        TransportKind::Fifo => {
            let transport = match &args.fifo_dir {
                Some(dir) => FifoTransport::new(dir),
                None => FifoTransport::for_current_user()?,
            };
            serve(transport, granter, supervisor, settings, None)
        }
        TransportKind::Socket => {
            let name = match &args.name {
                Some(name) => name.clone(),
                None => default_session_name(&args.target[0], std::process::id()),
            };
            let transport = UnixSocketTransport::session(&name)?;
            serve(transport, granter, supervisor, settings, Some(name))
        }
    }
}

/// When the controller sets up heli's agent in the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AgentChoice {
    /// Where ptrace cannot work: Yama's ptrace_scope 2 or 3 at start
    Auto,
    /// Always, and clients attach through it
    Always,
    /// Never
    Never,
}

impl AgentChoice {
    /// Whether to set up the agent (and attach through it) at `scope`.
    pub(crate) fn wanted(self, scope: PtraceScope) -> bool {
        match self {
            AgentChoice::Always => true,
            AgentChoice::Never => false,
            AgentChoice::Auto => matches!(scope, PtraceScope::AdminOnly | PtraceScope::NoAttach),
        }
    }
}

/// What the controller is set to, whichever transport it serves on.
struct Settings {
    grace: Duration,
    restart: RestartPolicy,
    /// Shown in `STATUS`, as are the grant method and the session.
    scope: PtraceScope,
    grant_method: String,
    /// Whether orphans of the tree are re-parented to the controller (`PS`
    /// says so).
    subreaper: bool,
    /// The agent set up in the target, if any: clients attach through it.
    agent: Option<AgentHost>,
    /// The service manager's socket, when one listens (`NOTIFY_SOCKET`).
    notifier: Option<SdNotifier>,
    /// The audit trail: a file, or in memory only.
    audit: AuditLog,
    /// The longest a grant may last.
    max_grant: Option<Duration>,
}

/// The line to the service manager that runs the controller, when
/// `NOTIFY_SOCKET` names one (systemd's `Type=notify`; `None` with a
/// warning when it names nothing this controller can reach); `command`,
/// the target's, is set not to inherit systemd's variables, which are the
/// controller's (`sd_notify(3)`).
fn service_manager(command: &mut Command) -> Option<SdNotifier> {
    for name in SdNotifier::VARIABLES {
        command.env_remove(name);
    }
    match SdNotifier::from_env() {
        Ok(Some(notifier)) => {
            let watchdog = notifier
                .watchdog_timeout()
                .map_or("none".to_owned(), |timeout| format!("{timeout:?}"));
            info!(
                "service manager at {} (watchdog: {watchdog})",
                notifier.address()
            );
            Some(notifier)
        }
        Ok(None) => None,
        Err(err) => {
            warn!("{err}: the service manager will not hear from the controller");
            None
        }
    }
}

fn serve<T: Transport>(
    transport: T,
    granter: impl Granter + Send + 'static,
    supervisor: impl Supervisor,
    settings: Settings,
    session: Option<String>,
) -> Result<ExitStatus, Box<dyn Error>> {
    let scope = settings.scope.value();
    let audit_log = settings
        .audit
        .path()
        .map_or("none".to_owned(), |path| path.display().to_string());
    let mut controller = Controller::new(transport, granter, supervisor)
        .inspector(PythonInspector)
        .notifier(settings.notifier)
        .audit(settings.audit)
        .status_field("audit_log", audit_log)
        .grace(settings.grace)
        .restart(settings.restart)
        .handle_signals(true)
        .subreaper(settings.subreaper)
        .status_field(
            "ptrace_scope",
            scope.map_or("none".to_owned(), |v| v.to_string()),
        )
        .status_field("grant_method", settings.grant_method);
    if let Some(most) = settings.max_grant {
        controller = controller.max_grant(most);
    }
    if let Some(name) = session {
        info!("session {name}: attach with `client --session {name} attach`");
        controller = controller.status_field("session", name);
    }
    let status = match settings.agent {
        Some(agent) => {
            let status = controller.agent(agent.clone()).prefer_agent(true).run();
            agent.remove_files();
            status?
        }
        None => controller.run()?,
    };
    info!("exiting with status {}", status.shell_code());
    Ok(status)
}

/// `<target's file stem>-<controller pid>`, made of the characters a
/// session name may hold.
fn default_session_name(target: &str, controller: u32) -> String {
    let stem = std::path::Path::new(target)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let stem = if stem.is_empty() {
        "target".to_owned()
    } else {
        stem
    };
    format!("{stem}-{controller}")
}

/// Whether the target came after `--` on the command line `raw`: then it
/// is a command even if it ends in .py.
fn explicit_command(raw: &[OsString], target: &[String]) -> bool {
    let after_dashes: Vec<&OsString> = raw
        .iter()
        .skip(1)
        .skip_while(|a| a.as_os_str() != "--")
        .skip(1)
        .collect();
    !after_dashes.is_empty()
        && after_dashes.len() == target.len()
        && after_dashes
            .iter()
            .zip(target)
            .all(|(a, t)| a.as_os_str() == t.as_str())
}

/// `SCRIPT.py ARGS` runs under Python; `-- COMMAND ARGS` (or anything not
/// ending in .py) runs as it is.
fn target_command(args: &Args, explicit_command: bool) -> Result<Command, Box<dyn Error>> {
    let (first, rest) = args.target.split_first().ok_or("no target given")?;
    if explicit_command || !first.ends_with(".py") {
        let mut command = Command::new(first);
        command.args(rest);
        return Ok(command);
    }
    let python = configured_python(args.python.as_deref())
        .ok_or("no Python found: install Python 3.14, or pass --python / set HELI_PYTHON")?;
    if !python.is_supported() {
        warn!(
            "{} is older than 3.14: the target will run, but pdb cannot attach to it",
            python.describe()
        );
    }
    info!("running {first} with {}", python.describe());
    let mut command = Command::new(&python.exe);
    command.arg(first).args(rest);
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(args: &[&str]) -> Vec<OsString> {
        ["controller"]
            .iter()
            .chain(args)
            .map(OsString::from)
            .collect()
    }

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(raw(args)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The program and arguments the controller would run.
    fn target(args: &[&str]) -> (String, Vec<String>) {
        let parsed = parse(args);
        let command = target_command(&parsed, explicit_command(&raw(args), &parsed.target))
            .unwrap_or_else(|e| panic!("{e}"));
        let program = command.get_program().to_string_lossy().into_owned();
        let args = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        (program, args)
    }

    #[test]
    fn defaults() {
        let args = parse(&["examples/target.py"]);
        assert_eq!(args.python, None);
        assert_eq!(args.transport, TransportKind::Socket);
        assert_eq!(args.name, None);
        assert_eq!(args.fifo_dir, None);
        assert_eq!(args.granter, GranterChoice::Auto);
        assert_eq!(args.grant_method, GrantMethod::Auto);
        assert_eq!(args.restart, Restart::Never);
        assert_eq!(args.max_restarts, None);
        assert!(!args.subreaper);
        assert!(!args.kill_group);
        assert_eq!(args.grace, 2.0);
        assert_eq!(args.target, ["examples/target.py"]);
        assert!(check(&args).is_ok());
    }

    #[test]
    fn options() {
        let args = parse(&[
            "--transport",
            "fifo",
            "--fifo-dir",
            "/d",
            "--name",
            "web",
            "--granter",
            "yama",
            "--grant-method",
            "remote-exec",
            "--restart",
            "on-failure",
            "--max-restarts",
            "3",
            "--subreaper",
            "--kill-group",
            "--grace",
            "0.5",
            "app.py",
        ]);
        assert_eq!(args.transport, TransportKind::Fifo);
        assert_eq!(args.fifo_dir, Some(PathBuf::from("/d")));
        assert_eq!(args.name.as_deref(), Some("web"));
        assert_eq!(args.granter, GranterChoice::Yama);
        assert_eq!(args.grant_method, GrantMethod::RemoteExec);
        assert_eq!(args.restart, Restart::OnFailure);
        assert_eq!(args.max_restarts, Some(3));
        assert!(args.subreaper && args.kill_group);
        assert_eq!(args.grace, 0.5);
    }

    #[test]
    fn a_target_is_required() {
        let err = Args::try_parse_from(raw(&[])).unwrap_err();
        assert_eq!(ControllerExit::for_clap(&err), ControllerExit::Usage);
        assert_eq!(run_with_args(raw(&[])), ControllerExit::Usage);
    }

    #[test]
    fn grace_must_be_a_number_of_seconds() {
        for grace in ["-1", "inf", "NaN", "1e12", "3600.5"] {
            let args = parse(&[&format!("--grace={grace}"), "--", "true"]);
            let err = check(&args).unwrap_err();
            assert_eq!(
                err.to_string(),
                "--grace must be a number of seconds from 0 to 3600",
                "{grace}"
            );
        }
        for grace in ["0", "0.25", "3600"] {
            assert!(check(&parse(&["--grace", grace, "--", "true"])).is_ok());
        }
        // Refused before anything starts, with the controller's own status.
        assert_eq!(
            run_with_args(raw(&["--grace=-1", "--", "true"])),
            ControllerExit::Failed
        );
        let err = Args::try_parse_from(raw(&["--grace", "soon", "x"])).unwrap_err();
        assert_eq!(ControllerExit::for_clap(&err), ControllerExit::Usage);
    }

    #[test]
    fn a_script_runs_under_python() {
        let python = "/nonexistent/python3.14";
        assert_eq!(
            target(&["--python", python, "app.py", "-v", "--port", "80"]),
            (
                python.into(),
                vec!["app.py".into(), "-v".into(), "--port".into(), "80".into()]
            )
        );
    }

    #[test]
    fn a_command_runs_as_it_is() {
        assert_eq!(
            target(&["./server", "--port", "8080"]),
            ("./server".into(), vec!["--port".into(), "8080".into()])
        );
        assert_eq!(
            target(&["--", "sleep", "60"]),
            ("sleep".into(), vec!["60".into()])
        );
    }

    #[test]
    fn after_dashes_even_a_script_is_a_command() {
        let python = "/nonexistent/python3.14";
        assert_eq!(
            target(&["--python", python, "--", "tool.py", "x"]),
            ("tool.py".into(), vec!["x".into()])
        );
        // Dashes after the script are the script's.
        let (program, args) = target(&["--python", python, "app.py", "--", "x"]);
        assert_eq!(program, python);
        assert_eq!(args[0], "app.py");
        assert_eq!(args.last().map(String::as_str), Some("x"));
    }

    #[test]
    fn completions_and_man_stand_alone() {
        let args = parse(&["--completions", "fish"]);
        assert_eq!(args.completions, Some(Shell::Fish));
        assert!(args.target.is_empty());
        assert!(parse(&["--man"]).man);
        // After the target, they are the target's.
        let args = parse(&["a.py", "--man", "--completions", "zsh"]);
        assert_eq!(args.target, ["a.py", "--man", "--completions", "zsh"]);
        assert!(!args.man);
        assert_eq!(args.completions, None);
        // A target is still required without them, and they take nothing else.
        for bad in [
            &[][..],
            &["--man", "a.py"],
            &["--completions", "bash", "--man"],
            &["--grace", "1", "--man"],
        ] {
            let err = Args::try_parse_from(raw(bad)).unwrap_err();
            assert_eq!(
                ControllerExit::for_clap(&err),
                ControllerExit::Usage,
                "{bad:?}"
            );
        }
        let err = Args::try_parse_from(raw(&["--completions", "tcsh"])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("invalid value 'tcsh' for '--completions <SHELL>'"),
            "{text}"
        );
        assert!(
            text.contains("[possible values: bash, elvish, fish, powershell, zsh]"),
            "{text}"
        );
    }

    #[test]
    fn named_values_are_the_names_their_types_parse() {
        fn each<T: FromStr + std::fmt::Display>(names: &[&str]) {
            for name in names {
                let parsed = name.parse::<T>().unwrap_or_else(|_| panic!("{name}"));
                assert_eq!(parsed.to_string(), *name);
            }
        }
        each::<GranterChoice>(GRANTERS);
        each::<GrantMethod>(GRANT_METHODS);
        each::<Restart>(RESTARTS);
        for (option, names) in [
            ("--granter", GRANTERS),
            ("--grant-method", GRANT_METHODS),
            ("--restart", RESTARTS),
        ] {
            let err = Args::try_parse_from(raw(&[option, "sometimes", "a.py"])).unwrap_err();
            assert_eq!(ControllerExit::for_clap(&err), ControllerExit::Usage);
            let text = err.to_string();
            let listed = format!("[possible values: {}]", names.join(", "));
            assert!(text.contains(&listed), "{text}");
        }
    }

    #[test]
    fn explicit_commands() {
        let target = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(explicit_command(&raw(&["--", "a.py"]), &target(&["a.py"])));
        assert!(explicit_command(
            &raw(&["--grace", "1", "--", "a.py", "b"]),
            &target(&["a.py", "b"])
        ));
        assert!(!explicit_command(&raw(&["a.py"]), &target(&["a.py"])));
        assert!(!explicit_command(
            &raw(&["a.py", "--", "b"]),
            &target(&["a.py", "--", "b"])
        ));
        assert!(!explicit_command(&raw(&["--"]), &target(&[])));
    }

    #[test]
    fn default_session_names() {
        assert_eq!(
            default_session_name("examples/target.py", 1234),
            "target-1234"
        );
        assert_eq!(default_session_name("./my server!.sh", 7), "my_server_-7");
        assert_eq!(default_session_name("/usr/bin/héllo", 7), "h_llo-7");
        assert_eq!(default_session_name("", 5), "target-5");
        assert_eq!(default_session_name("/", 5), "target-5");
        let long = "x".repeat(60);
        assert_eq!(
            default_session_name(&long, 1),
            format!("{}-1", "x".repeat(40))
        );
    }
}
