//! `AgentHost`: the agents of the processes the controller started, and
//! of their forked children.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use heli_core::stacks::ThreadStack;
use heli_core::{Agent, AgentSession, AgentState, Deadline, Pid, ProcessId, ProcessState};
use heli_proc::Proc;
use log::{debug, info, warn};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use serde_json::Value;

use super::channel::{Channel, Message};
use super::dir::{default_parent, AgentDir};
use crate::sys::set_inheritable;

/// Most agents at once: a fork bomb in the target does not make the
/// controller start a thread per process without end.
const MAX_AGENTS: usize = 256;

/// Sets up heli's agent in the Python processes a [`ProcessSupervisor`]
/// starts, and reaches them: [`heli_core::Agent`] for a controller.
///
/// The agent's files go to a private `0700` directory of the controller
/// (removed when the last clone of the host is dropped; one left by a
/// controller that was killed is removed by the next host created). Each
/// start of the target gets a fresh channel: a socket pair whose one end
/// the target inherits, named in its environment with the directory put
/// first on its `PYTHONPATH`. The agent's `sitecustomize` puts the
/// environment back as it was before the target's code runs.
///
/// A forked child of a process with an agent gets an agent of its own: it
/// hands the controller the end of a new channel, over its parent's
/// channel; the kernel names the sender (`SO_PASSCRED`), and the
/// controller takes it only from a child of that parent.
///
/// [`ProcessSupervisor`]: crate::ProcessSupervisor
///
/// # Examples
///
/// ```no_run
/// use heli_grant::{AgentHost, ProcessSupervisor};
/// use std::process::Command;
///
/// let agents = AgentHost::new()?;
/// let supervisor = ProcessSupervisor::new(Command::new("python3.14")).agent(agents.clone());
/// // Controller::new(transport, granter, supervisor).agent(agents)
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct AgentHost {
    dir: Arc<AgentDir>,
    book: Arc<Book>,
}

/// The agents, by process.
#[derive(Debug, Default)]
struct Book {
    agents: Mutex<HashMap<Pid, Entry>>,
    changed: Condvar,
    /// The target's `PYTHONPATH` before the agent's directory was put first
    /// (`None`: it had none), found at the first start.
    original_path: Mutex<Option<Option<OsString>>>,
    /// The number of the last session started through an agent.
    sessions: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    /// Known once it said hello.
    id: Option<ProcessId>,
    channel: Arc<Channel>,
    state: AgentState,
}

/// What [`AgentHost::prepare`] made for one start of the target.
#[derive(Debug)]
pub(crate) struct Prepared {
    ours: OwnedFd,
    theirs: OwnedFd,
}

impl AgentHost {
    /// Writes the agent's files to a new private directory in `TMPDIR`
    /// (else `/tmp`).
    ///
    /// # Errors
    ///
    /// When the directory or its files cannot be made.
    pub fn new() -> io::Result<AgentHost> {
        AgentHost::in_dir(&default_parent())
    }

    /// As [`new`](AgentHost::new), in `parent`.
    ///
    /// # Errors
    ///
    /// As [`new`](AgentHost::new); also a path holding `:` (it could not be
    /// put on a `PYTHONPATH`).
    pub fn in_dir(parent: &Path) -> io::Result<AgentHost> {
        let me = Proc::open_existing(Pid::this())?
            .identity()?
            .ok_or_else(|| io::Error::other("cannot read this process's start time"))?;
        let dir = AgentDir::create(parent, me)?;
        if dir.path().as_os_str().as_encoded_bytes().contains(&b':') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} holds ':': it cannot go on a PYTHONPATH",
                    dir.path().display()
                ),
            ));
        }
        Ok(AgentHost {
            dir: Arc::new(dir),
            book: Arc::default(),
        })
    }

    /// The private directory holding the agent's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Removes the agent's directory now, whoever else holds a clone of
    /// this host (a controller's worker thread may outlive its last step):
    /// call it once the target has ended for good. Dropping the last clone
    /// does the same.
    pub fn remove_files(&self) {
        self.dir.remove();
    }

    /// Makes the channel for the next start of `command` and puts what the
    /// agent needs in its environment.
    pub(crate) fn prepare(&self, command: &mut Command) -> io::Result<Prepared> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let original = self.original_path(command);
        let mut path = OsString::from(self.dir.path());
        if let Some(original) = &original {
            // An empty one adds nothing to sys.path (and "dir:" would add
            // the current directory): it is only put back.
            if !original.is_empty() {
                path.push(":");
                path.push(original);
            }
            command.env("HELI_AGENT_ORIG_PYTHONPATH", original);
        } else {
            command.env_remove("HELI_AGENT_ORIG_PYTHONPATH");
        }
        command
            .env("PYTHONPATH", path)
            .env("HELI_AGENT_FD", theirs.as_raw_fd().to_string())
            .env("HELI_AGENT_PARENT", std::process::id().to_string());
        // The target's end must survive its exec. The controller starts no
        // other program, so no other child inherits it.
        set_inheritable(&theirs)?;
        Ok(Prepared { ours, theirs })
    }

    fn original_path(&self, command: &Command) -> Option<OsString> {
        let mut original = lock(&self.book.original_path);
        original
            .get_or_insert_with(
                || match command.get_envs().find(|(key, _)| *key == "PYTHONPATH") {
                    Some((_, value)) => value.map(OsString::from),
                    None => std::env::var_os("PYTHONPATH"),
                },
            )
            .clone()
    }

    /// The target `pid` started with the channel `prepared`: listen to it.
    pub(crate) fn started(&self, pid: Pid, prepared: Prepared) {
        let Prepared { ours, theirs } = prepared;
        drop(theirs);
        if let Err(err) = self.book.listen(pid, ours, AgentState::Starting) {
            warn!("cannot listen to the agent of PID {pid}: {err}");
        }
    }

    fn ready_channel(&self, process: ProcessId, due: &Deadline) -> io::Result<Arc<Channel>> {
        let mut agents = lock(&self.book.agents);
        loop {
            let state = self.book.state_in(&agents, process);
            match state {
                AgentState::Ready { .. } => {
                    let entry = &agents[&process.pid];
                    return Ok(entry.channel.clone());
                }
                AgentState::Starting if !due.expired() => {
                    let wait = due.remaining().min(Duration::from_millis(100));
                    agents = self
                        .book
                        .changed
                        .wait_timeout(agents, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                AgentState::Starting => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                        "no agent answered in PID {}: it is not a Python process, or its Python \
                             ignores PYTHONPATH (-E, -I) or skips site (-S)",
                        process.pid
                    ),
                    ))
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("PID {}: {other}", process.pid),
                    ))
                }
            }
        }
    }
}

impl Book {
    /// Registers the agent of `pid` on the channel `fd` and reads it.
    fn listen(self: &Arc<Self>, pid: Pid, fd: OwnedFd, state: AgentState) -> io::Result<()> {
        let channel = Channel::new(fd)?;
        let id = match &state {
            AgentState::Ready { .. } => identity(pid),
            _ => None,
        };
        {
            let mut agents = lock(&self.agents);
            if state == AgentState::Starting {
                // A new start of the target: what failed before is gone.
                agents.retain(|_, entry| !matches!(entry.state, AgentState::Failed(_)));
            }
            if agents.len() >= MAX_AGENTS {
                // What failed says why only while its process lives.
                agents.retain(|_, entry| {
                    !matches!(entry.state, AgentState::Failed(_))
                        || entry
                            .id
                            .is_some_and(|id| matches!(Proc::open_id(id), Ok(Some(_))))
                });
            }
            if agents.len() >= MAX_AGENTS && !agents.contains_key(&pid) {
                return Err(io::Error::other(format!("more than {MAX_AGENTS} agents")));
            }
            agents.insert(
                pid,
                Entry {
                    id,
                    channel: channel.clone(),
                    state,
                },
            );
        }
        self.changed.notify_all();
        let book = self.clone();
        let gone = self.clone();
        let serving = channel.clone();
        channel.listen(
            format!("heli-agent-{pid}"),
            pid,
            move |message| book.take(pid, message),
            move || gone.closed(pid, &serving),
        )
    }

    /// A message from a process on the channel of `pid`'s agent that is no
    /// answer: a hello, or a forked child's own channel.
    fn take(self: &Arc<Self>, pid: Pid, message: Message) {
        let Message { sender, body, fds } = message;
        let Value::Object(mut body) = body else {
            return;
        };
        if let Some(hello) = body.remove("child") {
            self.child(pid, sender, &hello, fds);
            return;
        }
        if body.contains_key("not_target") && sender != pid && descends(sender, pid) {
            self.set_if_starting(
                pid,
                AgentState::Failed(format!(
                    "PID {pid} is not Python itself: it ran Python as its child PID {sender} \
                     without exec, which takes no agent (have the wrapper exec it: `exec python3 \
                     ...`)"
                )),
            );
            return;
        }
        if sender != pid {
            debug!("agent channel of PID {pid}: a message from PID {sender} ignored");
            return;
        }
        let state = if let Some(hello) = body.get("hello") {
            match ready(hello) {
                Some(ready) => ready,
                None => return,
            }
        } else if let Some(unsupported) = body.get("unsupported") {
            let python = unsupported
                .get("python")
                .and_then(Value::as_str)
                .unwrap_or("?");
            AgentState::Failed(format!(
                "PID {pid} runs Python {python}; the agent needs Python 3.14 or later"
            ))
        } else {
            return;
        };
        self.set_if_starting(pid, state);
    }

    fn set_if_starting(&self, pid: Pid, state: AgentState) {
        let mut agents = lock(&self.agents);
        if let Some(entry) = agents.get_mut(&pid) {
            if entry.state == AgentState::Starting {
                info!("PID {pid}: {state}");
                entry.id = identity(pid);
                entry.state = state;
            }
        }
        drop(agents);
        self.changed.notify_all();
    }

    /// A forked child `sender` of `parent` hands over its own channel.
    fn child(self: &Arc<Self>, parent: Pid, sender: Pid, hello: &Value, mut fds: Vec<OwnedFd>) {
        let claimed = hello.get("pid").and_then(Value::as_u64);
        let fork_of_parent = Proc::open(sender)
            .ok()
            .flatten()
            .and_then(|proc| proc.info().ok().flatten())
            .is_some_and(|info| info.parent == Some(parent));
        let (Some(state), true, true, 1) = (
            ready(hello),
            claimed == Some(u64::from(sender.get())),
            fork_of_parent,
            fds.len(),
        ) else {
            debug!("agent channel of PID {parent}: PID {sender}'s channel refused");
            return;
        };
        let fd = fds.remove(0);
        match self.listen(sender, fd, state) {
            Ok(()) => debug!("PID {sender} (forked by PID {parent}) has an agent of its own"),
            Err(err) => debug!("PID {sender}'s agent: {err}"),
        }
    }

    /// The channel of `pid`'s agent closed: a serving agent's process has
    /// ended (it goes); one that never said hello did not load it, and one
    /// that failed keeps saying why.
    fn closed(&self, pid: Pid, channel: &Arc<Channel>) {
        let mut agents = lock(&self.agents);
        if let Some(entry) = agents.get_mut(&pid) {
            if Arc::ptr_eq(&entry.channel, channel) {
                match entry.state {
                    AgentState::Failed(_) => {}
                    AgentState::Starting => {
                        entry.id = identity(pid);
                        entry.state = AgentState::Failed(format!(
                            "PID {pid} closed the agent's channel without loading the agent: it \
                             is not a Python process, or its Python ignores PYTHONPATH (-E, -I) \
                             or skips site (-S)"
                        ));
                    }
                    _ => {
                        agents.remove(&pid);
                    }
                }
            }
        }
        drop(agents);
        self.changed.notify_all();
    }

    fn state_in(&self, agents: &HashMap<Pid, Entry>, process: ProcessId) -> AgentState {
        match agents.get(&process.pid) {
            Some(entry) if entry.id.is_none_or(|id| id == process) => entry.state.clone(),
            _ => AgentState::Absent(format!(
                "PID {} has no agent (only Python processes the controller started, and their \
                 forked children, have one)",
                process.pid
            )),
        }
    }
}

fn ready(hello: &Value) -> Option<AgentState> {
    let python = hello.get("python")?.as_str()?;
    let trigger = hello.get("trigger")?.as_str()?;
    let word = |text: &str| text.len() <= 32 && text.bytes().all(|byte| byte.is_ascii_graphic());
    (word(python) && word(trigger)).then(|| AgentState::Ready {
        python: python.to_owned(),
        trigger: trigger.to_owned(),
    })
}

/// Whether `process` descends from `ancestor` (a few generations up at
/// most: a wrapper's child or grandchild).
fn descends(process: Pid, ancestor: Pid) -> bool {
    let mut current = process;
    for _ in 0..8 {
        let parent = Proc::open(current)
            .ok()
            .flatten()
            .and_then(|proc| proc.info().ok().flatten())
            .and_then(|info| info.parent);
        match parent {
            Some(parent) if parent == ancestor => return true,
            Some(parent) => current = parent,
            None => return false,
        }
    }
    false
}

/// `err`, or why the agent of `process` could not answer when it is
/// stopped (SIGSTOP, a debugger) or frozen.
fn explained(process: ProcessId, err: io::Error) -> io::Error {
    if err.kind() != io::ErrorKind::TimedOut {
        return err;
    }
    let state = Proc::open_id(process)
        .ok()
        .flatten()
        .and_then(|proc| proc.info().ok().flatten())
        .map(|info| info.state);
    match state {
        Some(ProcessState::Stopped | ProcessState::TracingStop) => io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "PID {} is stopped (SIGSTOP, or a debugger holds it): its agent cannot answer \
                 until it is continued (kill -CONT {})",
                process.pid, process.pid
            ),
        ),
        _ => err,
    }
}

fn identity(pid: Pid) -> Option<ProcessId> {
    Proc::open(pid).ok()??.identity().ok()?
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Agent for AgentHost {
    fn state(&self, process: ProcessId) -> AgentState {
        let agents = lock(&self.book.agents);
        self.book.state_in(&agents, process)
    }

    fn attach(&self, process: ProcessId, due: &Deadline) -> io::Result<AgentSession> {
        let channel = self.ready_channel(process, due)?;
        let python = match self.state(process) {
            AgentState::Ready { python, .. } => python,
            other => return Err(io::Error::other(other.to_string())),
        };
        let (stream, stream_theirs) = pair()?;
        let (interrupt, interrupt_theirs) = pair()?;
        let id = self.book.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        let mut request = serde_json::Map::new();
        request.insert("op".into(), "attach".into());
        request.insert("colorize".into(), false.into());
        request.insert("session".into(), id.into());
        let answer = channel
            .request(request, &[stream_theirs, interrupt_theirs], due)
            .map_err(|err| explained(process, err))?;
        answered(&answer)?;
        let earlier_on = answer
            .get("earlier_on")
            .and_then(Value::as_array)
            .map(|ids| ids.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        Ok(AgentSession {
            python,
            fds: vec![stream, interrupt],
            id,
            earlier_on,
        })
    }

    fn hang_up(&self, process: ProcessId, session: u64, due: &Deadline) -> io::Result<bool> {
        let channel = self.ready_channel(process, due)?;
        let mut request = serde_json::Map::new();
        request.insert("op".into(), "hangup".into());
        request.insert("session".into(), session.into());
        let answer = channel
            .request(request, &[], due)
            .map_err(|err| explained(process, err))?;
        answered(&answer)?;
        Ok(answer.get("ended") == Some(&Value::Bool(true)))
    }

    fn stacks(&self, process: ProcessId, due: &Deadline) -> io::Result<Vec<ThreadStack>> {
        let channel = self.ready_channel(process, due)?;
        let mut request = serde_json::Map::new();
        request.insert("op".into(), "stacks".into());
        let mut answer = channel
            .request(request, &[], due)
            .map_err(|err| explained(process, err))?;
        answered(&answer)?;
        let threads = answer
            .get_mut("threads")
            .map(Value::take)
            .unwrap_or_default();
        serde_json::from_value(threads).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the agent's stacks: {err}"),
            )
        })
    }
}

/// The agent's error, if it answered with one.
fn answered(answer: &Value) -> io::Result<()> {
    if answer.get("ok") == Some(&Value::Bool(true)) {
        return Ok(());
    }
    let error = answer
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("the agent's answer is not understood");
    Err(io::Error::other(format!("the agent: {error}")))
}

fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}
