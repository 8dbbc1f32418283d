//! `attach`: where attaching is impossible, getting the grant, running pdb
//! (or the `--with` tool) on this terminal while holding it, and explaining
//! a debugger's failure.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::protocol::{GrantRequest, RevokeRequest};
use crate::core::tree::Role;
use crate::core::{Client, Connection, Pid, Processes, Session, Transport};
use crate::grant::{kill_with_parent, set_inheritable, PtraceScope, CLIENT_SCRIPT};
use crate::proc::{Proc, ProcFs};

use super::exit::{ClientExit, Failure};
use super::python::{configured_python, is_python_name, Python};
use super::render::Paint;
use super::sanitize::escape;
use super::time_limit::{self, Ended, TimeLimit};
use super::tool::{tool_name, Tool};

/// What pdb prints when the target runs with remote debugging disabled.
const REMOTE_DEBUG_DISABLED: &str = "Remote debugging is not enabled";

/// What running a debugger needs besides the client.
#[derive(Debug)]
pub(crate) struct Debugging {
    /// `--python`: the Python for pdb when the target's is not 3.14+.
    python: Option<PathBuf>,
    /// Cleared while a debugger runs: Ctrl-C is then the debugger's, not ours.
    at_prompt: Arc<AtomicBool>,
    out: Paint,
}

/// The process an `attach` is for, and its role in the target's tree
/// (`None` when not known: it has gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attached {
    pid: Pid,
    role: Option<Role>,
}

impl Attached {
    /// Process `pid` of the tree whose target is `target`: the target, or
    /// the child of its parent (read here, from `/proc`).
    fn new(pid: Pid, target: Pid) -> Attached {
        let role = if pid == target {
            Some(Role::Target)
        } else {
            let parent = ProcFs.process(pid).ok().flatten().and_then(|p| p.parent);
            parent.map(Role::ChildOf)
        };
        Attached { pid, role }
    }
}

impl std::fmt::Display for Attached {
    /// `target PID 4242`, `PID 4243 (child of 4242)`, `PID 4243`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.role {
            Some(Role::Target) => write!(f, "target PID {}", self.pid),
            Some(role) => write!(f, "PID {} ({role})", self.pid),
            None => write!(f, "PID {}", self.pid),
        }
    }
}

/// The debugger an `attach` runs.
enum Debugger {
    Pdb(Python),
    /// `--with`: the command line, `{pid}` replaced.
    Tool(Vec<String>),
}

impl Debugging {
    /// Ready to run debuggers: SIGINT ends the client only while no
    /// debugger runs.
    pub(crate) fn new(python: Option<PathBuf>, out: Paint) -> std::io::Result<Debugging> {
        let at_prompt = Arc::new(AtomicBool::new(true));
        sigint_at_prompt_only(&at_prompt)?;
        Ok(Debugging {
            python,
            at_prompt,
            out,
        })
    }

    /// Runs `work` with Ctrl-C setting the flag it is handed instead of
    /// ending the client; a second Ctrl-C ends the client (status 130),
    /// for when the work does not stop.
    pub(crate) fn interruptible<R>(
        &self,
        work: impl FnOnce(&AtomicBool) -> R,
    ) -> std::io::Result<R> {
        use signal_hook::consts::SIGINT;
        use signal_hook::flag;
        let interrupted = Arc::new(AtomicBool::new(false));
        // In this order: the second Ctrl-C finds the flag set.
        let shutdown = flag::register_conditional_shutdown(SIGINT, 130, interrupted.clone())?;
        let set = flag::register(SIGINT, interrupted.clone()).inspect_err(|_| {
            signal_hook::low_level::unregister(shutdown);
        })?;
        self.at_prompt.store(false, Ordering::SeqCst);
        let result = work(&interrupted);
        self.at_prompt.store(true, Ordering::SeqCst);
        signal_hook::low_level::unregister(set);
        signal_hook::low_level::unregister(shutdown);
        Ok(result)
    }

    /// Asks for the grant on `pid` (the target when `None`) on a
    /// connection kept open while the debugger runs: with the socket
    /// transport the grant ends when that connection closes, even if this
    /// client is killed. Once the debugger is gone, withdraws it.
    pub(crate) fn attach<T: Transport>(
        &self,
        client: &Client<T>,
        pid: Option<Pid>,
        force: bool,
        with: Option<&str>,
        lasts: Option<Duration>,
    ) -> Result<(), Failure> {
        let tool = with.map(Tool::parse).transpose()?;
        let mut session = client.session()?;
        let status = session.status()?;
        // Asked for, or else the controller's longest grant.
        let most = status.get("max_grant").and_then(|secs| secs.parse().ok());
        let lasts = lasts.or(most.map(Duration::from_secs));
        let through_agent = status
            .extra
            .iter()
            .any(|(key, value)| key == "attach" && value != "ptrace");
        if through_agent {
            let process = Attached::new(pid.unwrap_or(status.pid), status.pid);
            return self.through_agent(&mut session, pid, process, tool.is_some(), lasts);
        }
        let scope = PtraceScope::current().unwrap_or(PtraceScope::Restricted);
        check_scope(scope)?;
        let target = status.pid;
        let process = Attached::new(pid.unwrap_or(target), target);
        // Everything the debugger needs is checked before the grant.
        let debugger = match tool {
            Some(tool) => Debugger::Tool(tool.resolve(process.pid)?),
            None => Debugger::Pdb(self.pdb_python(process.pid)?),
        };
        let me = Pid::this();
        println!("Requesting ptrace permission for client PID {me}...");
        // The target's grant asked for as always (no TARGET: any
        // controller understands it), another process's by its pid.
        let mut grant = GrantRequest::new(me).force(force);
        if let Some(lasts) = lasts {
            grant = grant.lasting(lasts);
        }
        let mut revoke = RevokeRequest::new().client(me);
        if let Some(pid) = pid {
            grant = grant.process(pid);
            revoke = revoke.process(pid);
        }
        let asked = Instant::now();
        session.grant(grant)?;
        let limit = lasts.map(|lasts| TimeLimit::new(asked, lasts));
        match lasts {
            Some(lasts) => println!(
                "{}",
                self.out
                    .good(&format!("✅ Permission granted for {} s", lasts.as_secs()))
            ),
            None => println!("{}", self.out.good("✅ Permission granted")),
        }
        let result = self.debug(&debugger, process, scope, limit);
        // The grant is no longer needed once the debugger is gone.
        if let Err(err) = session.revoke_grant(revoke) {
            println!(
                "Note: the grant was not withdrawn: {}",
                escape(&err.to_string())
            );
        }
        result
    }

    /// Has the agent in `process` start pdb in its main thread, and runs
    /// pdb's own remote client on the sockets the controller hands over:
    /// no ptrace anywhere, so it works at every Yama scope.
    fn through_agent<C: Connection>(
        &self,
        session: &mut Session<C>,
        pid: Option<Pid>,
        process: Attached,
        tool: bool,
        lasts: Option<Duration>,
    ) -> Result<(), Failure> {
        if tool {
            return Err(Failure::new(
                ClientExit::Impossible,
                format!(
                    "The controller attaches through its agent in {process} (it set one up because \
                     no ptrace works here): only pdb attaches that way; --with tools need ptrace."
                ),
            ));
        }
        let python = self.pdb_python(process.pid)?;
        println!("Asking the agent in {process} to start pdb...");
        let asked = Instant::now();
        let (_, version, fds) = session.agent_attach(pid)?;
        let limit = lasts.map(|lasts| TimeLimit::new(asked, lasts));
        let [stream, interrupt] = <[OwnedFd; 2]>::try_from(fds).map_err(|fds| {
            Failure::new(
                ClientExit::Failed,
                format!(
                    "the controller passed {} sockets, not pdb's two: is this transport able to \
                     pass them?",
                    fds.len()
                ),
            )
        })?;
        println!(
            "{}",
            self.out.good(&format!(
                "✅ Attached through the agent in {process}: pdb runs in its main thread (no ptrace)"
            ))
        );
        println!("Type pdb commands (list, next, print, etc.) or 'quit' to detach");
        println!();
        let mut command = Command::new(&python.exe);
        command
            .arg("-c")
            .arg(CLIENT_SCRIPT)
            .arg(process.pid.to_string())
            .arg(&version);
        for fd in [&stream, &interrupt] {
            set_inheritable(fd).map_err(|err| {
                Failure::new(
                    ClientExit::Failed,
                    format!("cannot pass pdb's sockets on: {err}"),
                )
            })?;
            command.arg(fd.as_raw_fd().to_string());
        }
        kill_with_parent(&mut command);
        let _ = std::io::stdout().flush();
        self.at_prompt.store(false, Ordering::SeqCst);
        let status = command.spawn().and_then(|mut child| {
            time_limit::wait(&mut child, limit, "pdb", &mut std::io::stderr())
        });
        self.at_prompt.store(true, Ordering::SeqCst);
        drop((stream, interrupt));
        let ended = status.map_err(|err| {
            Failure::new(
                ClientExit::for_debugger_start(&err),
                format!("cannot run pdb: {err}"),
            )
        })?;
        println!();
        let status = ended.status;
        if ended.timed_out {
            println!("Debugger detached");
            return Ok(());
        }
        match status.code() {
            Some(0) => {
                println!("Debugger detached");
                Ok(())
            }
            Some(130) => Err(Failure::new(
                ClientExit::Failed,
                format!("Cancelled before pdb started in {process}"),
            )),
            Some(2) => Err(Failure::new(
                ClientExit::Impossible,
                format!("pdb cannot attach to {process} from this Python (see above)"),
            )),
            _ => Err(Failure::new(
                ClientExit::Failed,
                format!("pdb exited with {status}"),
            )),
        }
    }

    fn debug(
        &self,
        debugger: &Debugger,
        process: Attached,
        scope: PtraceScope,
        limit: Option<TimeLimit>,
    ) -> Result<(), Failure> {
        let pid = process.pid;
        println!();
        let (mut command, name) = match debugger {
            Debugger::Pdb(python) => {
                println!("Attaching pdb to {process}...");
                println!("Type pdb commands (list, next, print, etc.) or 'quit' to detach");
                let mut command = Command::new(&python.exe);
                command.args(["-m", "pdb", "-p", &pid.to_string()]);
                (command, "pdb".to_owned())
            }
            Debugger::Tool(argv) => {
                let shown = shlex::try_join(argv.iter().map(String::as_str))
                    .unwrap_or_else(|_| argv.join(" "));
                println!("Running {shown} on {process}...");
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
        let result = run_on_terminal(&mut command, scan, limit, &name);
        self.at_prompt.store(true, Ordering::SeqCst);
        let (ended, remote_debug_disabled) = result.map_err(|err| {
            Failure::new(
                ClientExit::for_debugger_start(&err),
                format!("cannot run {name}: {err}"),
            )
        })?;
        println!();
        match debugger {
            Debugger::Pdb(_) => println!("Debugger detached"),
            Debugger::Tool(_) => println!("{name} exited"),
        }
        let status = ended.status;
        // Ended on time, as asked.
        if status.success() || ended.timed_out {
            return Ok(());
        }
        if remote_debug_disabled {
            return Err(Failure::new(
                ClientExit::Impossible,
                format!(
                    "Remote debugging is disabled in {process}: it was started with \
                     PYTHON_DISABLE_REMOTE_DEBUG set or with -X disable-remote-debug (or its Python \
                     was built --without-remote-debug), so pdb -p cannot attach.\n\
                     Restart the target without them, or use a tool that needs no help from it: \
                     attach --with 'gdb -p {{pid}}' or attach --with 'py-spy dump --pid {{pid}}'."
                ),
            ));
        }
        if ProcFs.identity(pid).ok().flatten().is_none() {
            return Err(Failure::new(
                ClientExit::Failed,
                match process.role {
                    Some(Role::Target) => format!(
                        "The target (PID {pid}) exited: nothing to attach to. \
                         `status` shows what the controller is doing."
                    ),
                    _ => format!(
                        "{process} exited: nothing to attach to. \
                         `ps` shows the processes of the target's tree."
                    ),
                },
            ));
        }
        let mut message = format!("{name} exited with {status}.");
        if scope != PtraceScope::NoYama {
            message.push_str(&format!(
                "\nIf it said permission denied: ptrace_scope is {scope}: {}.",
                scope.explain()
            ));
        }
        Err(Failure::new(ClientExit::Failed, message))
    }

    /// The process's own interpreter when it is Python 3.14+, else the
    /// configured one.
    fn pdb_python(&self, target: Pid) -> Result<Python, Failure> {
        let own = Proc::open(target)
            .ok()
            .flatten()
            .and_then(|process| process.exe().ok());
        if let Some(exe) = own.filter(|exe| is_python_name(exe)) {
            let python = Python::at(exe);
            if python.is_supported() {
                return Ok(python);
            }
        }
        match configured_python(self.python.as_deref()) {
            Some(python) if python.is_supported() => Ok(python),
            found => Err(Failure::new(
                ClientExit::Impossible,
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

/// Refuses early where no grant can help.
pub(crate) fn check_scope(scope: PtraceScope) -> Result<(), Failure> {
    scope_allows(scope, has_cap_sys_ptrace())
}

/// Whether a process with (or without) `CAP_SYS_PTRACE` may attach under
/// `scope` once granted; if not, why.
pub(crate) fn scope_allows(scope: PtraceScope, cap_sys_ptrace: bool) -> Result<(), Failure> {
    match scope {
        PtraceScope::NoAttach => Err(Failure::new(
            ClientExit::Impossible,
            format!(
                "Cannot attach: {}.\nOnly a reboot (with a lower kernel.yama.ptrace_scope) lifts it.",
                scope.explain()
            ),
        )),
        PtraceScope::AdminOnly if !cap_sys_ptrace => Err(Failure::new(
            ClientExit::Impossible,
            format!(
                "Cannot attach: {}.\nAs root: sysctl kernel.yama.ptrace_scope=1 (heli grants access at scope 1).",
                scope.explain()
            ),
        )),
        _ => Ok(()),
    }
}

/// Whether this process has CAP_SYS_PTRACE in its effective set.
pub(crate) fn has_cap_sys_ptrace() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    Proc::open(Pid::this())
        .ok()
        .flatten()
        .and_then(|me| me.capabilities().ok().flatten())
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

/// Runs `command` on this terminal and waits for it. With `scan`, its
/// standard error is copied to ours and searched for
/// [`REMOTE_DEBUG_DISABLED`]; with a `limit`, it is ended when the time
/// is up. Returns how it ended and whether that was found.
fn run_on_terminal(
    command: &mut Command,
    scan: bool,
    limit: Option<TimeLimit>,
    name: &str,
) -> std::io::Result<(Ended, bool)> {
    if !scan {
        let mut child = command.spawn()?;
        return Ok((
            time_limit::wait(&mut child, limit, name, &mut std::io::stderr())?,
            false,
        ));
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
    let ended = time_limit::wait(&mut child, limit, name, &mut std::io::stderr())?;
    Ok((ended, copier.join().unwrap_or(false)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_attached_to_is_named_with_its_role() {
        let me = Pid::this();
        let target = Attached::new(me, me);
        assert_eq!(target.to_string(), format!("target PID {me}"));
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::new(child.id()).unwrap();
        let attached = Attached::new(pid, me);
        assert_eq!(attached.role, Some(Role::ChildOf(me)));
        assert_eq!(attached.to_string(), format!("PID {pid} (child of {me})"));
        child.kill().unwrap();
        child.wait().unwrap();
        // Gone: its pid alone.
        let gone = Attached::new(pid, me);
        assert_eq!(gone.role, None);
        assert_eq!(gone.to_string(), format!("PID {pid}"));
    }

    #[test]
    fn scopes_where_a_grant_helps() {
        for scope in [
            PtraceScope::NoYama,
            PtraceScope::Classic,
            PtraceScope::Restricted,
        ] {
            for cap in [false, true] {
                assert!(scope_allows(scope, cap).is_ok(), "{scope:?} {cap}");
            }
        }
        assert!(scope_allows(PtraceScope::AdminOnly, true).is_ok());
    }

    /// At `scope`, with the capability or not (`cap`), attaching is
    /// impossible: the message explains the scope, then gives `advice`.
    fn assert_impossible(scope: PtraceScope, cap: bool, advice: &str) {
        let failure = scope_allows(scope, cap).unwrap_err();
        assert_eq!(failure.exit, ClientExit::Impossible);
        let explained = format!("Cannot attach: {}.\n{advice}", scope.explain());
        assert_eq!(failure.message, explained);
    }

    #[test]
    fn admin_only_without_the_capability_is_impossible() {
        assert_impossible(
            PtraceScope::AdminOnly,
            false,
            "As root: sysctl kernel.yama.ptrace_scope=1 (heli grants access at scope 1).",
        );
    }

    #[test]
    fn no_attach_is_impossible_even_with_the_capability() {
        for cap in [false, true] {
            assert_impossible(
                PtraceScope::NoAttach,
                cap,
                "Only a reboot (with a lower kernel.yama.ptrace_scope) lifts it.",
            );
        }
    }

    #[test]
    fn check_scope_asks_this_process_for_the_capability() {
        assert_eq!(
            check_scope(PtraceScope::AdminOnly).is_ok(),
            has_cap_sys_ptrace()
        );
        assert!(check_scope(PtraceScope::NoAttach).is_err());
        assert!(check_scope(PtraceScope::Restricted).is_ok());
    }

    #[test]
    fn pdb_refusing_remote_debugging_is_recognised() {
        let mut pdb = Command::new("sh");
        pdb.args([
            "-c",
            &format!("echo 'Error: {REMOTE_DEBUG_DISABLED} in PID 1' >&2; exit 1"),
        ]);
        let (status, disabled) = run_on_terminal(&mut pdb, true, None, "pdb").unwrap();
        assert_eq!(status.status.code(), Some(1));
        assert!(disabled);
        let mut other = Command::new("sh");
        other.args(["-c", "echo 'Permission denied' >&2; exit 1"]);
        let (status, disabled) = run_on_terminal(&mut other, true, None, "pdb").unwrap();
        assert_eq!(status.status.code(), Some(1));
        assert!(!disabled);
        // Without scanning, standard error is the terminal's alone.
        let mut tool = Command::new("sh");
        tool.args(["-c", &format!("echo '{REMOTE_DEBUG_DISABLED}' >&2; exit 3")]);
        let (status, disabled) = run_on_terminal(&mut tool, false, None, "sh").unwrap();
        assert_eq!(status.status.code(), Some(3));
        assert!(!disabled);
    }

    #[test]
    fn a_debugger_that_is_not_there_makes_attaching_impossible() {
        let mut missing = Command::new("/nonexistent/heli-debugger");
        let err = run_on_terminal(&mut missing, true, None, "pdb").unwrap_err();
        assert_eq!(ClientExit::for_debugger_start(&err), ClientExit::Impossible);
    }
}
