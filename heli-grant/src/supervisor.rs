//! The supervisor of a target process.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};
use heli_core::{Exit, ProcessId, ProcessInfo, Processes, Supervisor};
use heli_proc::{ProcFs, ProcessHandle};
use log::{debug, info, warn};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use crate::agent::AgentHost;
use crate::sys::{
    ignore_terminal_stops, kill_with_parent, pidfd_open, pidfd_send_signal, reap_exited,
    take_terminal_in_child, Reaped,
};
use crate::wait::ChildWaits;

/// Runs the target as a child process and reaps it.
///
/// - The child inherits stdin, stdout and stderr (configure the
///   [`Command`] to change that).
/// - It gets SIGKILL if the thread that spawned it dies
///   (`PR_SET_PDEATHSIG`), so a controller killed with SIGKILL leaves no
///   orphan that nobody could attach to.
/// - It is signalled and reaped through a pidfd: a signal never reaches a
///   later process that reused its pid, and the reaper waits for *this*
///   child only (`poll` on the pidfd, then `waitid(P_PIDFD)`), never with
///   `waitpid(-1)`, which would steal ptrace stops from a granter.
///
/// # Examples
///
/// ```
/// use heli_core::{ExitStatus, Supervisor};
/// use heli_grant::ProcessSupervisor;
/// use std::process::Command;
///
/// let mut command = Command::new("sh");
/// command.args(["-c", "exit 3"]);
/// let mut supervisor = ProcessSupervisor::new(command);
/// let exits = supervisor.exits();
/// let pid = supervisor.spawn()?;
/// let exit = exits.recv()?;
/// assert_eq!((exit.pid, exit.status), (pid, ExitStatus::Code(3)));
/// assert_eq!(supervisor.describe(), "sh -c exit 3");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ProcessSupervisor {
    command: Command,
    running: Option<Running>,
    exits: (Sender<Exit>, Receiver<Exit>),
    waits: ChildWaits,
    /// In a group of its own, signalled as a group: how long what is left
    /// of the group when the target ends may take to go.
    kill_group: Option<Duration>,
    foreground: bool,
    orphans: Option<OrphanReaper>,
    agent: Option<AgentHost>,
}

#[derive(Debug)]
struct Running {
    pid: u32,
    pidfd: Arc<OwnedFd>,
    alive: Arc<AtomicBool>,
}

impl ProcessSupervisor {
    /// A supervisor that runs `command` when asked to spawn.
    pub fn new(mut command: Command) -> Self {
        kill_with_parent(&mut command);
        ProcessSupervisor {
            command,
            running: None,
            exits: unbounded(),
            waits: ChildWaits::default(),
            kill_group: None,
            foreground: false,
            orphans: None,
            agent: None,
        }
    }

    /// Sets up heli's agent in the target at every start (a Python 3.14
    /// target then serves `attach` and stacks from within, where no ptrace
    /// is allowed): see [`AgentHost`]. Give the controller the same host
    /// (`Controller::agent`).
    pub fn agent(mut self, host: AgentHost) -> Self {
        self.agent = Some(host);
        self
    }

    /// Runs the target in a process group of its own and sends every signal
    /// to the whole group, so the target's own children get them too (as
    /// `docker stop` does for a container). The terminal's Ctrl-C then no
    /// longer reaches the target directly: the controller passes it on.
    ///
    /// When the target ends, whatever is left of its group (children it
    /// left behind) gets SIGTERM, and SIGKILL if it is still there after
    /// [`group_grace`](Self::group_grace) (2 s by default), before the
    /// target is reported as ended. (The target is reaped only then: until
    /// it is, its pid, which names the group, cannot be taken by another
    /// process.)
    ///
    /// What is not covered: if this process is killed with SIGKILL, the
    /// kernel kills the target (its parent-death signal), but nothing of
    /// the kernel's reaches the target's own children for an unprivileged
    /// process (a parent-death signal reaches direct children only, a
    /// subreaper acts only while it lives, and a PID namespace or a
    /// delegated cgroup would change what the target sees). They are left
    /// running, re-parented to the nearest subreaper or PID 1.
    pub fn kill_group(mut self, yes: bool) -> Self {
        self.kill_group = yes.then_some(heli_core::DEFAULT_GRACE);
        if yes {
            std::os::unix::process::CommandExt::process_group(&mut self.command, 0);
        }
        self
    }

    /// How long what is left of the target's group when the target ends
    /// may take to go after SIGTERM before it gets SIGKILL (default 2 s);
    /// see [`kill_group`](Self::kill_group).
    pub fn group_grace(mut self, grace: Duration) -> Self {
        if let Some(current) = self.kill_group.as_mut() {
            *current = grace;
        }
        self
    }

    /// Gives the terminal to the target, as an init with a terminal must
    /// (dumb-init does the same): the target runs in a process group of its
    /// own that is the terminal's foreground process group, so Ctrl-C,
    /// Ctrl-\\ and Ctrl-Z reach it and not this process, and it may read the
    /// terminal. When it ends, the terminal comes back to this process's
    /// group, until a restarted target takes it again.
    ///
    /// The terminal is this process's standard input, which the target must
    /// inherit (the default). This process ignores SIGTTIN and SIGTTOU from
    /// now on, as an interactive shell does (from a background group it
    /// still writes to the terminal and hands it over); the target gets their
    /// default action back. A terminal that hung up is not given: the target
    /// starts all the same.
    ///
    /// # Errors
    ///
    /// When standard input is not this process's controlling terminal, when
    /// this process is not in its foreground process group (then it has no
    /// terminal to give), or when it cannot tell: its process group lies
    /// outside its pid namespace (a PID 1 started by `unshare --pid --fork`
    /// without a session of its own, such as `setsid --ctty` makes), and the
    /// terminal's group may too. The supervisor is then unchanged.
    pub fn give_terminal(&mut self) -> io::Result<()> {
        let stdin = std::io::stdin();
        let unsupported = |message: String| io::Error::new(io::ErrorKind::Unsupported, message);
        let foreground = nix::unistd::tcgetpgrp(stdin.as_fd()).map_err(|err| {
            unsupported(format!(
                "standard input is not a controlling terminal ({err})"
            ))
        })?;
        let ours = nix::unistd::getpgrp();
        if ours.as_raw() == 0 {
            // Both read 0 whether or not our group has the terminal: taking
            // it from a background job would take it from the user's shell.
            return Err(unsupported(
                "this process's group lies outside its pid namespace: it cannot tell whether \
                 it has the terminal (give it a session of its own, e.g. `setsid --ctty`)"
                    .into(),
            ));
        }
        if foreground != ours {
            return Err(unsupported(
                "this process is not in the terminal's foreground process group".into(),
            ));
        }
        ignore_terminal_stops()?;
        std::os::unix::process::CommandExt::process_group(&mut self.command, 0);
        take_terminal_in_child(&mut self.command);
        self.foreground = true;
        Ok(())
    }

    /// Reaps every child of this process that exits, not only the target:
    /// what a PID 1 or a child subreaper (see [`become_subreaper`]) must do
    /// with the orphans re-parented to it, or they stay zombies.
    ///
    /// It waits with `waitid(P_ALL)` only while holding [`ChildWaits`], so it
    /// never steals a granter's ptrace stops; a target it reaps is handed to
    /// the target's own reaper. Nothing else in this process may wait for
    /// children (`Command::status` and the like) once this runs.
    ///
    /// # Errors
    ///
    /// When SIGCHLD cannot be caught.
    pub fn reap_orphans(mut self) -> io::Result<Self> {
        self.orphans = Some(OrphanReaper::start(self.waits.clone())?);
        Ok(self)
    }

    /// The lock its reaper takes before it waits for a child; a granter that
    /// ptraces the children must take it too.
    pub fn child_waits(&self) -> ChildWaits {
        self.waits.clone()
    }

    /// The command it runs.
    pub fn command(&self) -> &Command {
        &self.command
    }

    fn running(&self) -> io::Result<&Running> {
        match &self.running {
            Some(running) if running.alive.load(Ordering::Acquire) => Ok(running),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "Target process not running",
            )),
        }
    }
}

/// The processes of the system the target runs on, as `/proc` shows them.
impl Processes for ProcessSupervisor {
    fn process(&self, pid: heli_core::Pid) -> io::Result<Option<ProcessInfo>> {
        ProcFs.process(pid)
    }

    fn identity(&self, pid: heli_core::Pid) -> io::Result<Option<heli_core::ProcessId>> {
        ProcFs.identity(pid)
    }

    fn is_frozen(&self, pid: heli_core::Pid) -> io::Result<bool> {
        ProcFs.is_frozen(pid)
    }
}

impl Supervisor for ProcessSupervisor {
    fn spawn(&mut self) -> io::Result<heli_core::Pid> {
        if self.running().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the target is already running",
            ));
        }
        // Registered as a target before anyone may reap it: an orphan reaper
        // waits for the same lock.
        let prepared = match &self.agent {
            Some(agent) => Some(agent.prepare(&mut self.command)?),
            None => None,
        };
        let mut waits = self.waits.lock();
        let mut child = match self.command.spawn() {
            Ok(child) => child,
            Err(err) => {
                drop(waits);
                // The child may have taken the terminal before its exec failed.
                if self.foreground {
                    take_back_terminal();
                }
                return Err(io::Error::new(
                    err.kind(),
                    format!("cannot start {:?}: {err}", self.command.get_program()),
                ));
            }
        };
        let pid = child.id();
        // The child is ours until reaped, and nobody reaps it while we hold
        // the lock (an orphan reaper would, were it quick to exit): its pid
        // still names it.
        let watched = pidfd_open(pid).and_then(|pidfd| {
            let pidfd = Arc::new(pidfd);
            let alive = Arc::new(AtomicBool::new(true));
            let reaper = Reaper {
                pid,
                pidfd: pidfd.clone(),
                alive: alive.clone(),
                exits: self.exits.0.clone(),
                waits: self.waits.clone(),
                foreground: self.foreground,
                group: self.kill_group,
            };
            thread::Builder::new()
                .name(format!("heli-reaper-{pid}"))
                .spawn(move || reaper.run())?;
            Ok((pidfd, alive))
        });
        let (pidfd, alive) = match watched {
            Ok(watched) => {
                waits.add_target(pid);
                watched
            }
            Err(err) => {
                // Nobody would watch it: it must not run unsupervised.
                let _ = child.kill();
                let _ = child.wait();
                drop(waits);
                if self.foreground {
                    take_back_terminal();
                }
                return Err(err);
            }
        };
        drop(waits);
        // `child` only wraps the pid; dropping it neither waits nor kills.
        drop(child);
        let pid_id = heli_core::Pid::new(pid).expect("the kernel gives pids from 1 to i32::MAX");
        if let (Some(agent), Some(prepared)) = (&self.agent, prepared) {
            agent.started(pid_id, prepared);
        }
        debug!("spawned {:?} as PID {pid}", self.command.get_program());
        self.running = Some(Running { pid, pidfd, alive });
        Ok(pid_id)
    }

    fn shares_terminal(&self) -> bool {
        // In a group of its own, the target gets what the terminal sends
        // only if its group is the foreground one.
        self.kill_group.is_none() || self.foreground
    }

    fn describe(&self) -> String {
        std::iter::once(self.command.get_program())
            .chain(self.command.get_args())
            .map(|word| word.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn exits(&self) -> Receiver<Exit> {
        self.exits.1.clone()
    }

    fn pid(&self) -> Option<heli_core::Pid> {
        self.running()
            .ok()
            .and_then(|running| heli_core::Pid::new(running.pid))
    }

    fn signal(&mut self, signal: i32) -> io::Result<()> {
        let running = self.running()?;
        let sent = if self.kill_group.is_some() {
            // The group outlives no member: while the target runs, its pid
            // names its group.
            let signal = nix::sys::signal::Signal::try_from(signal)?;
            nix::sys::signal::killpg(Pid::from_raw(running.pid as i32), signal)
                .map_err(io::Error::from)
        } else {
            pidfd_send_signal(running.pidfd.as_fd(), signal)
        };
        match sent {
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "Target process not running",
            )),
            other => other,
        }
    }

    fn terminate(&mut self) -> io::Result<()> {
        self.signal(libc::SIGTERM)
    }

    fn kill(&mut self) -> io::Result<()> {
        self.signal(libc::SIGKILL)
    }

    fn signal_descendants(&mut self, ancestor: ProcessId, signal: i32) -> io::Result<usize> {
        let mut signalled = 0;
        for process in heli_proc::descendants(ancestor)? {
            // Opened by its identity: a pid reused since the listing names
            // no process here, and the pidfd holds on to this one.
            let handle = match ProcessHandle::open(process.id)? {
                Some(handle) if process.id != ancestor => handle,
                _ => continue,
            };
            match pidfd_send_signal(handle.as_fd(), signal) {
                Ok(()) => signalled += 1,
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(signalled)
    }
}

/// The longest wait between two attempts to reap an exited child that
/// another tracer still holds.
const MAX_REAP_BACKOFF: Duration = Duration::from_millis(100);

/// Waits for one child to exit, reaps it, and reports how it ended.
struct Reaper {
    pid: u32,
    pidfd: Arc<OwnedFd>,
    alive: Arc<AtomicBool>,
    exits: Sender<Exit>,
    waits: ChildWaits,
    /// Whether the target had the terminal, to take back once it ended.
    foreground: bool,
    /// Whether it leads a group of its own, and how long what is left of
    /// the group when it ends may take to go.
    group: Option<Duration>,
}

impl Reaper {
    fn run(mut self) {
        // How long to wait before asking again when the exited child cannot
        // be reaped yet (see below); doubles up to its cap.
        let mut backoff = Duration::from_millis(1);
        let status = loop {
            // A pidfd becomes readable only when the process has exited:
            // ptrace stops do not wake us.
            // A signal handled on this thread (or the controller stopped
            // and continued) interrupts the wait: that is no exit.
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    warn!("cannot watch PID {}: {err}", self.pid);
                    return;
                }
            }
            if let Some(grace) = self.group.take() {
                end_leftovers(self.pid, grace);
            }
            // Not while a granter traces the child: we would steal its stops.
            let mut waits = self.waits.lock();
            if let Some(status) = waits.take(self.pid) {
                break status;
            }
            match reap_exited(Some(self.pidfd.as_fd())) {
                Ok(Reaped::Ended(_, status)) => break status,
                Err(Errno::EINTR) => continue,
                // Exited (the pidfd is readable), yet not ours to reap yet:
                // another tracer (a debugger) holds the dead child until it
                // has waited for it itself. The pidfd stays readable, so
                // polling it again would spin: wait a while instead.
                Ok(_) => {
                    drop(waits);
                    thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_REAP_BACKOFF);
                    continue;
                }
                // A granter reaped it and recorded the status just now.
                Err(Errno::ECHILD) => match waits.take(self.pid) {
                    Some(status) => break status,
                    None => {
                        warn!("PID {} was reaped by someone else", self.pid);
                        return;
                    }
                },
                Err(err) => {
                    warn!("cannot reap PID {}: {err}", self.pid);
                    return;
                }
            }
        };
        self.waits.lock().remove_target(self.pid);
        if self.foreground {
            take_back_terminal();
        }
        self.alive.store(false, Ordering::Release);
        let _ = self.exits.send(Exit {
            pid: heli_core::Pid::new(self.pid).expect("a pid the kernel gave"),
            status,
        });
    }
}

/// Ends what is left of the process group of target `leader`, which has
/// exited (and is not reaped yet, so its pid, the group's, is not free):
/// SIGTERM, then SIGKILL after `grace` for what is still there.
fn end_leftovers(leader: u32, grace: Duration) {
    let Some(group) = heli_core::Pid::new(leader) else {
        return;
    };
    let left = || {
        heli_proc::group_members(group)
            .map(|members| members.into_iter().filter(|&pid| pid != group).count())
            .unwrap_or_else(|err| {
                warn!("cannot list the members of process group {group}: {err}");
                0
            })
    };
    let count = left();
    if count == 0 {
        return;
    }
    let pgrp = Pid::from_raw(leader as i32);
    info!("the target's process group {group} still has {count} process(es): SIGTERM");
    let _ = nix::sys::signal::killpg(pgrp, nix::sys::signal::Signal::SIGTERM);
    let gone_within = |limit: Duration| {
        let deadline = std::time::Instant::now() + limit;
        while left() > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
        true
    };
    if !gone_within(grace) {
        warn!("process group {group} still there {grace:?} after SIGTERM: SIGKILL");
        let _ = nix::sys::signal::killpg(pgrp, nix::sys::signal::Signal::SIGKILL);
        // SIGKILL is not refused, but dying takes a moment.
        if !gone_within(Duration::from_secs(1)) {
            warn!("process group {group} still there after SIGKILL");
        }
    }
}

/// Makes this process's group the terminal's foreground process group again
/// (see [`ProcessSupervisor::give_terminal`]), so that Ctrl-C reaches the
/// controller while no target runs.
fn take_back_terminal() {
    let stdin = std::io::stdin();
    let ours = nix::unistd::getpgrp();
    match nix::unistd::tcgetpgrp(stdin.as_fd()) {
        Ok(group) if group == ours => {}
        // SIGTTOU is ignored: a background group may set it.
        _ => match nix::unistd::tcsetpgrp(stdin.as_fd(), ours) {
            Ok(()) => debug!("took the terminal back"),
            Err(err) => warn!("cannot take the terminal back: {err}"),
        },
    }
}

/// Reaps whatever child of this process exits, on SIGCHLD; see
/// [`ProcessSupervisor::reap_orphans`].
#[derive(Debug)]
struct OrphanReaper {
    handle: signal_hook::iterator::Handle,
    thread: Option<thread::JoinHandle<()>>,
}

impl OrphanReaper {
    fn start(waits: ChildWaits) -> io::Result<OrphanReaper> {
        let mut signals = signal_hook::iterator::Signals::new([libc::SIGCHLD])?;
        let handle = signals.handle();
        let thread = thread::Builder::new()
            .name("heli-orphans".into())
            .spawn(move || {
                // Children that ended before we caught SIGCHLD, then each
                // batch: one signal may stand for many children.
                reap_all(&waits);
                for _ in signals.forever() {
                    reap_all(&waits);
                }
            })?;
        Ok(OrphanReaper {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for OrphanReaper {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reaps every child that has exited; a target's status goes to its reaper.
fn reap_all(waits: &ChildWaits) {
    // No granter traces a child while we hold this: no stop to steal.
    let mut guard = waits.lock();
    loop {
        let (pid, status) = match reap_exited(None) {
            Ok(Reaped::Ended(pid, status)) => (pid, status),
            Ok(Reaped::Nothing) | Err(Errno::ECHILD) => return,
            Ok(Reaped::Other) | Err(Errno::EINTR) => continue,
            Err(err) => {
                warn!("cannot reap children: {err}");
                return;
            }
        };
        match heli_core::Pid::new(pid).filter(|_| guard.is_target(pid)) {
            Some(target) => guard.reaped(target, status),
            None => debug!("reaped orphan PID {pid} ({status})"),
        }
    }
}

/// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): orphans
/// of its descendants are re-parented to it instead of to PID 1, so it can
/// reap them (see [`ProcessSupervisor::reap_orphans`]) and they stay in its
/// view. A PID 1 is one already.
///
/// # Errors
///
/// When the kernel refuses (it does not before Linux 3.4).
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}
