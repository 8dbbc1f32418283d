//! The core of heli: traits, line protocol, controller and client.
//!
//! heli lets a user attach a debugger (first of all Python 3.14's
//! `pdb -p`) to a long-running process *later*, from another terminal, even
//! where Yama's `ptrace_scope=1` forbids non-ancestors to ptrace. A
//! **controller** spawns and supervises the target; a **client** asks it for
//! access; the controller has the target name the client as its ptracer; the
//! client (or a debugger it spawns) then attaches directly.
//!
//! This crate holds what does not depend on the platform, and no `unsafe`:
//!
//! - seven traits, the extension points:
//!   - [`Transport`]: how clients reach the controller (its [`Listener`] end
//!     and a client's [`Connection`] end);
//!   - [`Granter`]: how a client gets the right to ptrace the target;
//!   - [`Supervisor`]: how the target is run, signalled and reaped, and what
//!     the platform says about processes ([`Processes`]);
//!   - [`Inspector`]: how the target's stacks (and its [asyncio tasks](tasks))
//!     are read without stopping it;
//!   - [`Agent`]: code the controller set up inside a process of its tree,
//!     which runs pdb there on request (where no ptrace is allowed);
//!   - [`Notifier`]: how the controller tells a service manager (systemd's
//!     `Type=notify`) that it is ready, how it is doing, that it stops,
//!     and that its loop is alive (the watchdog);
//!   - [`Audit`]: where the controller's [audit trail](audit) goes (who was
//!     granted, refused, revoked, or read what, when, and for how long),
//!     recorded on a thread of its own, never waited for by the loop;
//! - the process vocabulary: [`Pid`], [`ProcessId`] (pid and start time, so
//!   a reused pid is never taken for the process it once named),
//!   [`ProcessState`] and [`ProcessInfo`];
//! - the [line protocol](protocol) both sides speak;
//! - the [`Controller`], which composes one implementation of each trait
//!   (static dispatch) in a single event loop and decides who may be
//!   granted what, and the [`Client`].
//!
//! Implementations live in sibling crates: `heli-proc` (process facts from
//! Linux's `/proc`), `heli-transport` (named pipes, Unix socket) and
//! `heli-grant` (the Yama granter, the no-op granter, the process supervisor
//! and the CPython inspector; all of heli's `unsafe` code is there).
//!
//! # Examples
//!
//! A transport that passes requests in memory, a granter that records grants
//! and a supervisor with a pretend target are enough to run a controller and
//! talk to it; this is how the crate tests itself:
//!
//! ```
//! # use std::{io, time::{Duration, Instant}};
//! # use crossbeam_channel::{bounded, Receiver, Sender};
//! use heli_core::{Client, Controller, Deadline, Exit, ExitStatus, Granter, Supervisor};
//! use heli_core::{Pid, ProcessId, ProcessInfo, ProcessState, Processes};
//! use heli_core::{exchange, Connection, Event, Listener, Peer, Stopper, Transport};
//!
//! /// Requests travel as (line, reply channel) pairs.
//! #[derive(Clone)]
//! struct Memory(Sender<(Vec<u8>, Sender<Vec<u8>>)>, Receiver<(Vec<u8>, Sender<Vec<u8>>)>);
//! struct MemoryListener(Receiver<(Vec<u8>, Sender<Vec<u8>>)>, Sender<()>, Receiver<()>);
//! struct MemoryStop(Sender<()>);
//! struct MemoryConnection(Sender<(Vec<u8>, Sender<Vec<u8>>)>);
//!
//! impl Transport for Memory {
//!     type Listener = MemoryListener;
//!     type Connection = MemoryConnection;
//!     fn listen(&self) -> io::Result<MemoryListener> {
//!         let (stop_tx, stop_rx) = bounded(1);
//!         Ok(MemoryListener(self.1.clone(), stop_tx, stop_rx))
//!     }
//!     fn connect(&self, _: Duration) -> io::Result<MemoryConnection> {
//!         Ok(MemoryConnection(self.0.clone()))
//!     }
//!     fn describe(&self) -> String { "memory".into() }
//! }
//! impl Listener for MemoryListener {
//!     type Stopper = MemoryStop;
//!     fn stopper(&self) -> MemoryStop { MemoryStop(self.1.clone()) }
//!     fn serve(&mut self, events: &Sender<Event>) -> io::Result<()> {
//!         loop {
//!             crossbeam_channel::select! {
//!                 recv(self.0) -> msg => {
//!                     let (line, reply_to) = msg.unwrap();
//!                     let Some(reply) = exchange(events, Peer::default(), Ok(line)) else { return Ok(()) };
//!                     let _ = reply_to.send(reply.line.into_bytes());
//!                 }
//!                 recv(self.2) -> _ => return Ok(()),
//!             }
//!         }
//!     }
//! }
//! impl Stopper for MemoryStop { fn stop(&self) { let _ = self.0.try_send(()); } }
//! impl Connection for MemoryConnection {
//!     fn round_trip(&mut self, line: &[u8], deadline: Instant) -> io::Result<Vec<u8>> {
//!         let (tx, rx) = bounded(1);
//!         self.0.send((line.to_vec(), tx)).unwrap();
//!         rx.recv_deadline(deadline).map_err(|_| io::ErrorKind::TimedOut.into())
//!     }
//! }
//!
//! /// Grants succeed and are remembered.
//! struct Record(Vec<ProcessId>);
//! impl Granter for Record {
//!     fn name(&self) -> &str { "record" }
//!     fn grant(&mut self, _target: ProcessId, client: ProcessId, _: &Deadline) -> io::Result<()> {
//!         self.0.push(client);
//!         Ok(())
//!     }
//!     fn revoke(&mut self, _target: ProcessId, _: &Deadline) -> io::Result<()> { Ok(()) }
//! }
//!
//! /// A pretend target with PID 4242 that ends when told to, in a world
//! /// where every process is its own, started at tick 1.
//! struct Pretend(Sender<Exit>, Receiver<Exit>, bool);
//! const TARGET: Pid = Pid::new(4242).unwrap();
//! impl Processes for Pretend {
//!     fn process(&self, pid: Pid) -> io::Result<Option<ProcessInfo>> {
//!         let id = ProcessId { pid, start_time: 1 };
//!         let state = ProcessState::Sleeping;
//!         let (uid, euid, kernel_thread) = (1000, 1000, false);
//!         Ok(Some(ProcessInfo { id, parent: None, process: pid, state, uid, euid, kernel_thread }))
//!     }
//! }
//! impl Supervisor for Pretend {
//!     fn spawn(&mut self) -> io::Result<Pid> { self.2 = true; Ok(TARGET) }
//!     fn exits(&self) -> Receiver<Exit> { self.1.clone() }
//!     fn pid(&self) -> Option<Pid> { self.2.then_some(TARGET) }
//!     fn signal(&mut self, signal: i32) -> io::Result<()> {
//!         self.2 = false;
//!         self.0.send(Exit { pid: TARGET, status: ExitStatus::Signal(signal) }).unwrap();
//!         Ok(())
//!     }
//!     fn terminate(&mut self) -> io::Result<()> { self.signal(15) }
//!     fn kill(&mut self) -> io::Result<()> { self.signal(9) }
//! }
//!
//! let (tx, rx) = bounded(8);
//! let memory = Memory(tx, rx);
//! let (exit_tx, exit_rx) = bounded(1);
//! let controller = Controller::new(memory.clone(), Record(vec![]), Pretend(exit_tx, exit_rx, false));
//! let running = std::thread::spawn(move || controller.run());
//!
//! let client = Client::new(memory);
//! assert_eq!(client.target_pid().unwrap(), TARGET);
//! // A debugger the client runs (a grant never goes to the controller).
//! client.grant_access(Pid::new(77).unwrap()).unwrap();
//! client.terminate().unwrap();
//! assert_eq!(running.join().unwrap().unwrap(), ExitStatus::Signal(15));
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod agent;
pub mod audit;
mod auditing;
mod authorize;
mod client;
mod controller;
mod deadline;
mod error;
mod event_loop;
mod granter;
mod grants;
mod inspector;
mod limits;
pub mod log_limit;
mod notifier;
mod process;
pub mod profile;
pub mod protocol;
mod restart;
mod sampler;
mod signals;
pub mod stacks;
mod supervisor;
pub mod tasks;
#[cfg(any(test, feature = "test-log"))]
pub mod test_log;
mod transport;
pub mod tree;
mod worker;

pub use agent::{Agent, AgentSession, AgentState, NoAgent};
pub use audit::{Audit, AuditEvent, AuditRecord, AuditResult, NoAudit, ProcessFacts, RevokeCause};
pub use authorize::other_user;
pub use client::{Client, Session, AGENT_FDS, DEFAULT_TIMEOUT, GRANT_TIMEOUT};
pub use controller::{Controller, ShutdownHandle, DEFAULT_GRANT_DEADLINE, DEFAULT_STACK_DEADLINE};
pub use deadline::Deadline;
pub use error::{Error, ErrorKind};
pub use granter::Granter;
pub use inspector::{Inspector, NoInspector, StackReader};
pub use limits::CLIENT_GRACE;
pub use log_limit::LogLimit;
pub use notifier::{NoNotifier, Notifier};
pub use process::{InvalidPid, Pid, ProcessId, ProcessInfo, ProcessState, Processes};
pub use restart::{Restart, RestartPolicy};
pub use signals::{DEFAULT_GRACE, PASS_SIGNALS, STOP_SIGNALS, SUSPEND_SIGNALS};
pub use supervisor::{Exit, ExitStatus, Supervisor};
pub use transport::{
    exchange, Connection, Credentials, Event, GrantHolder, Incoming, Listener, Outgoing, Peer,
    Stopper, Transport,
};

#[cfg(test)]
mod tests;
