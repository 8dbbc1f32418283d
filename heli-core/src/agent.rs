//! How the controller reaches code running inside a process of its tree.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;

use crate::deadline::Deadline;
use crate::process::ProcessId;
use crate::stacks::ThreadStack;

/// Code the controller set up inside a process of its tree, which runs
/// pdb there on request and reads its stacks from within: the way to a
/// debugger where no ptrace is allowed at all (Yama's `ptrace_scope` 2 and
/// 3, a container without `CAP_SYS_PTRACE`).
///
/// The agent talks only to its controller, through a channel the
/// controller made and passed down when it started the process. `heli-grant`'s
/// `AgentHost` sets one up in a Python 3.14 target (a `sitecustomize` on a
/// private `PYTHONPATH` entry). Its [`attach`](Agent::attach) and
/// [`stacks`](Agent::stacks) are used from the controller's worker threads,
/// with a deadline: one that does not answer never holds up the controller;
/// its [`state`](Agent::state) is asked on the controller's loop (`STATUS`,
/// `AGENT_ATTACH`) and must answer at once, from what the agent last said.
///
/// # Examples
///
/// ```
/// use heli_core::{Agent, AgentState, Deadline, NoAgent, Pid, ProcessId};
/// use std::time::Duration;
///
/// let me = ProcessId { pid: Pid::this(), start_time: 0 };
/// let due = Deadline::after(Duration::from_secs(1));
/// assert_eq!(NoAgent.state(me), AgentState::Off);
/// let err = NoAgent.attach(me, &due).unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
/// ```
pub trait Agent {
    /// Whether `process` has an agent, and in what state: at once, without
    /// waiting on the process (the controller asks on its loop).
    fn state(&self, process: ProcessId) -> AgentState;

    /// Has the agent in `process` run pdb in its main thread at its next
    /// safe point, and gives the client's ends of the two sockets the
    /// debugger talks over: pdb's stream first, then the interrupt stream
    /// (a byte written there interrupts the process's main thread, as
    /// Ctrl-C in `pdb -p` does).
    ///
    /// It returns once pdb is scheduled, not when it runs: a main thread
    /// blocked in C gets it when it returns to Python.
    ///
    /// # Errors
    ///
    /// No agent in `process` (or not a ready one), a debugger already
    /// attached through it, no answer before `due`.
    fn attach(&self, process: ProcessId, due: &Deadline) -> io::Result<AgentSession>;

    /// Every thread's stack in `process`, computed by the agent: unlike
    /// the [`Inspector`](crate::Inspector)'s memory read, this runs code
    /// in the process (briefly, on the agent's thread).
    ///
    /// # Errors
    ///
    /// As [`attach`](Agent::attach).
    fn stacks(&self, process: ProcessId, due: &Deadline) -> io::Result<Vec<ThreadStack>>;

    /// Ends session `session` (its [`AgentSession::id`]) of pdb in
    /// `process`, if it is still on, from inside the process: the agent
    /// shuts pdb's sockets down, so pdb detaches and the target runs on,
    /// whoever holds the client's ends (they then read their end). `Ok`
    /// tells whether the session was on; a session over is left alone,
    /// so a later session is never ended in its place. The controller
    /// does this when the time of the session's client is up: the
    /// sockets it handed over cannot be taken back otherwise.
    ///
    /// # Errors
    ///
    /// As [`attach`](Agent::attach); by default
    /// [`Unsupported`](io::ErrorKind::Unsupported).
    fn hang_up(&self, process: ProcessId, session: u64, due: &Deadline) -> io::Result<bool> {
        let _ = (process, session, due);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this agent cannot end a session",
        ))
    }
}

/// Whether a process has an agent, as [`Agent::state`] tells.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentState {
    /// The controller sets up no agent.
    Off,
    /// The process has none, and why (not started with one, a forked
    /// worker, not a Python process...).
    Absent(String),
    /// Set up, not yet heard from (the process is starting).
    Starting,
    /// Heard from and serving.
    Ready {
        /// The CPython version the process runs (`3.14.0`).
        python: String,
        /// How it schedules pdb on the main thread (`remote_exec`, or
        /// `signal` where remote debugging is disabled).
        trigger: String,
    },
    /// It will not serve, and why (the process's Python is too old, the
    /// channel broke...).
    Failed(String),
}

impl AgentState {
    /// Whether the agent serves.
    pub fn is_ready(&self) -> bool {
        matches!(self, AgentState::Ready { .. })
    }

    /// One word for `STATUS`: `off`, `none`, `starting`, `ready`, `failed`.
    pub fn word(&self) -> &'static str {
        match self {
            AgentState::Off => "off",
            AgentState::Absent(_) => "none",
            AgentState::Starting => "starting",
            AgentState::Ready { .. } => "ready",
            AgentState::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentState::Off => f.write_str("no agent (the controller sets none up)"),
            AgentState::Absent(why) => write!(f, "no agent: {why}"),
            AgentState::Starting => f.write_str("agent starting (not heard from yet)"),
            AgentState::Ready { python, trigger } => {
                write!(f, "agent ready (Python {python}, trigger {trigger})")
            }
            AgentState::Failed(why) => write!(f, "agent failed: {why}"),
        }
    }
}

/// What [`Agent::attach`] gives the client: the Python version pdb runs
/// under in the process and the client's ends of the debugger's sockets.
#[derive(Debug)]
pub struct AgentSession {
    /// The process's CPython version (`3.14.0`): the client's pdb must be
    /// of the same minor version.
    pub python: String,
    /// pdb's stream, then the interrupt stream.
    pub fds: Vec<OwnedFd>,
    /// The session's number in the process, for
    /// [`hang_up`](Agent::hang_up).
    pub id: u64,
    /// The numbers of the process's earlier sessions still on (their
    /// sockets still open): the others are over.
    pub earlier_on: Vec<u64>,
}

/// The agent of a controller that sets up none.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAgent;

impl Agent for NoAgent {
    fn state(&self, _process: ProcessId) -> AgentState {
        AgentState::Off
    }

    fn attach(&self, _process: ProcessId, _due: &Deadline) -> io::Result<AgentSession> {
        Err(unsupported())
    }

    fn stacks(&self, _process: ProcessId, _due: &Deadline) -> io::Result<Vec<ThreadStack>> {
        Err(unsupported())
    }
}

fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "this controller sets up no agent in its target (controller --agent)",
    )
}

macro_rules! forward_agent {
    ($($wrapper:ty),*) => {$(
        impl<A: Agent + ?Sized> Agent for $wrapper {
            fn state(&self, process: ProcessId) -> AgentState {
                (**self).state(process)
            }
            fn attach(&self, process: ProcessId, due: &Deadline) -> io::Result<AgentSession> {
                (**self).attach(process, due)
            }
            fn stacks(&self, process: ProcessId, due: &Deadline) -> io::Result<Vec<ThreadStack>> {
                (**self).stacks(process, due)
            }
            fn hang_up(&self, process: ProcessId, session: u64, due: &Deadline) -> io::Result<bool> {
                (**self).hang_up(process, session, due)
            }
        }
    )*};
}

forward_agent!(&A, Box<A>, std::sync::Arc<A>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Pid;

    #[test]
    fn states_have_one_word_each_and_say_why() {
        let ready = AgentState::Ready {
            python: "3.14.0".into(),
            trigger: "remote_exec".into(),
        };
        assert!(ready.is_ready());
        assert_eq!(ready.word(), "ready");
        assert_eq!(
            ready.to_string(),
            "agent ready (Python 3.14.0, trigger remote_exec)"
        );
        let absent = AgentState::Absent("a forked worker".into());
        assert!(!absent.is_ready());
        assert_eq!(absent.word(), "none");
        assert_eq!(absent.to_string(), "no agent: a forked worker");
        assert_eq!(AgentState::Off.word(), "off");
        assert_eq!(AgentState::Starting.word(), "starting");
        assert_eq!(AgentState::Failed("x".into()).word(), "failed");
        assert_eq!(
            AgentState::Failed("x".into()).to_string(),
            "agent failed: x"
        );
    }

    #[test]
    fn wrappers_are_the_agent_they_hold() {
        let me = ProcessId {
            pid: Pid::this(),
            start_time: 0,
        };
        let due = Deadline::after(std::time::Duration::from_secs(1));
        let boxed: Box<dyn Agent> = Box::new(NoAgent);
        assert_eq!(boxed.state(me), AgentState::Off);
        assert_eq!(
            std::sync::Arc::new(NoAgent)
                .stacks(me, &due)
                .unwrap_err()
                .kind(),
            io::ErrorKind::Unsupported
        );
        fn state_of(agent: impl Agent, process: ProcessId) -> AgentState {
            agent.state(process)
        }
        let by_reference: &NoAgent = &NoAgent;
        assert_eq!(state_of(by_reference, me), AgentState::Off);
        // By default a session cannot be ended; an agent that can is
        // reached through each wrapper.
        let err = NoAgent.hang_up(me, 1, &due).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
        struct EndsOdd;
        impl Agent for EndsOdd {
            fn state(&self, _: ProcessId) -> AgentState {
                AgentState::Off
            }
            fn attach(&self, _: ProcessId, _: &Deadline) -> io::Result<AgentSession> {
                Err(unsupported())
            }
            fn stacks(&self, _: ProcessId, _: &Deadline) -> io::Result<Vec<ThreadStack>> {
                Err(unsupported())
            }
            fn hang_up(&self, _: ProcessId, session: u64, _: &Deadline) -> io::Result<bool> {
                Ok(session % 2 == 1)
            }
        }
        let ends = |agent: &dyn Fn(u64) -> bool| (agent(1), agent(2));
        let hang_up = |agent: &dyn Agent, session| agent.hang_up(me, session, &due).unwrap();
        assert_eq!(ends(&|session| hang_up(&&EndsOdd, session)), (true, false));
        let boxed = Box::new(EndsOdd);
        assert_eq!(ends(&|session| hang_up(&boxed, session)), (true, false));
        let shared = std::sync::Arc::new(EndsOdd);
        assert_eq!(ends(&|session| hang_up(&shared, session)), (true, false));
    }
}
