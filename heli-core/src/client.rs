//! The client side: one request per connection, each with a deadline.

use std::os::fd::OwnedFd;
use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::process::Pid;
use crate::profile::{ProfileRequest, Samples};
use crate::protocol::{GrantRequest, Reply, Request, RevokeRequest, Scope, Status};
use crate::stacks::ProcessStacks;
use crate::tasks::AsyncTasks;
use crate::transport::{Connection, Transport};
use crate::tree::Tree;

/// How long a client waits for the controller by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// How many file descriptors an `AGENT` reply carries: the client's ends
/// of pdb's stream and of its interrupt stream (see
/// [`AgentSession`](crate::AgentSession)).
pub const AGENT_FDS: usize = 2;

/// How long a client waits for the answer to a grant or revoke at least:
/// the controller gives one up to
/// [`DEFAULT_GRANT_DEADLINE`](crate::DEFAULT_GRANT_DEADLINE) (a remote
/// execution waits that long for the target), then says why it failed.
pub const GRANT_TIMEOUT: Duration = Duration::from_secs(6);

/// Talks to a controller over a [`Transport`].
///
/// Every call connects, sends one request and waits for its reply for at
/// most the [timeout](Client::timeout) (2 s by default; a grant or revoke
/// at least [`GRANT_TIMEOUT`], as the controller may take that long to
/// answer, and says why when it fails): a client never hangs
/// on a controller that is gone, busy or broken.
///
/// # Examples
///
/// ```no_run
/// # fn demo<T: heli_core::Transport>(transport: T) -> Result<(), heli_core::Error> {
/// use heli_core::Client;
///
/// use heli_core::Pid;
///
/// let client = Client::new(transport);
/// let target = client.target_pid()?;
/// client.grant_access(Pid::this())?;
/// println!("may now ptrace {target}");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client<T> {
    transport: T,
    timeout: Duration,
    grant_timeout: Duration,
}

impl<T: Transport> Client<T> {
    /// A client of the controller listening on `transport`.
    pub fn new(transport: T) -> Self {
        Client {
            transport,
            timeout: DEFAULT_TIMEOUT,
            grant_timeout: GRANT_TIMEOUT,
        }
    }

    /// How long to wait for each reply, connecting included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long to wait at least for the answer to a grant or revoke
    /// (default [`GRANT_TIMEOUT`]; the [timeout](Client::timeout) when that
    /// is longer).
    pub fn grant_timeout(mut self, timeout: Duration) -> Self {
        self.grant_timeout = timeout;
        self
    }

    /// The transport this client uses.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Connects for several requests on one connection: a grant asked on a
    /// [`Session`] lasts as long as the session where the transport has
    /// connections (Unix socket), so keep it open while the debugger runs.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRunning`] when no controller listens, else as
    /// [`request`](Client::request).
    pub fn session(&self) -> Result<Session<T::Connection>, Error> {
        let connection = self.transport.connect(self.timeout).map_err(|err| {
            let error = Error::io(
                format!(
                    "Cannot reach the controller at {}",
                    self.transport.describe()
                ),
                err,
            );
            if error.kind() == ErrorKind::NotRunning {
                Error::new(
                    ErrorKind::NotRunning,
                    format!(
                        "Controller not running (nothing listens at {})",
                        self.transport.describe()
                    ),
                )
            } else {
                error
            }
        })?;
        Ok(Session {
            connection,
            timeout: self.timeout,
            grant_timeout: self.grant_timeout.max(self.timeout),
        })
    }

    /// Sends `request` on a connection of its own and returns the reply;
    /// an `ERROR:` reply becomes an [`ErrorKind::Refused`] error carrying the
    /// controller's message.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRunning`] when no controller listens,
    /// [`ErrorKind::Timeout`], [`ErrorKind::Refused`],
    /// [`ErrorKind::MalformedReply`] or [`ErrorKind::Io`].
    pub fn request(&self, request: Request) -> Result<Reply, Error> {
        self.session()?.request(request)
    }

    /// `GET_TARGET_PID`: the target's process id.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn target_pid(&self) -> Result<Pid, Error> {
        self.session()?.target_pid()
    }

    /// `GRANT_ACCESS <pid>`: returns once `pid` may ptrace the target.
    ///
    /// On a transport with connections (Unix socket) a grant ends when the
    /// connection that asked for it closes — here, as soon as this call
    /// returns: keep a [`Session`] open for as long as the grant is needed.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn grant_access(&self, pid: Pid) -> Result<(), Error> {
        self.session()?.grant_access(pid)
    }

    /// `GRANT_ACCESS <client> [TARGET <pid>] [FORCE]`: returns once the
    /// client may ptrace the process of the tree `grant` names; as
    /// [`grant_access`](Client::grant_access) otherwise.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn grant(&self, grant: GrantRequest) -> Result<(), Error> {
        self.session()?.grant(grant)
    }

    /// `REVOKE <pid>`: withdraws the grant on the target, if `pid` holds it
    /// (the controller refuses when another client took the grant over
    /// since).
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn revoke(&self, pid: Pid) -> Result<(), Error> {
        self.session()?.revoke(pid)
    }

    /// `REVOKE [<client>] [TARGET <pid>]`: withdraws the grant `revoke`
    /// names.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn revoke_grant(&self, revoke: RevokeRequest) -> Result<(), Error> {
        self.session()?.revoke_grant(revoke)
    }

    /// `PS`: the supervised tree.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn ps(&self) -> Result<Tree, Error> {
        self.session()?.ps()
    }

    /// `STACKS [<pid>|ALL]`: the stacks of the processes of the tree
    /// `scope` names, read without stopping them.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn stacks(&self, scope: Scope) -> Result<Vec<ProcessStacks>, Error> {
        self.session()?.stacks(scope)
    }

    /// `TASKS [<pid>]`: the asyncio tasks of the target (or of process
    /// `pid` of its tree), read from its memory without stopping it; draw
    /// them with [`tasks_text`](crate::tasks::tasks_text).
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn tasks(&self, pid: Option<Pid>) -> Result<AsyncTasks, Error> {
        self.session()?.tasks(pid)
    }

    /// `STATUS`: what the controller and its target are doing.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn status(&self) -> Result<Status, Error> {
        self.session()?.status()
    }

    /// `STACK`: every thread's stack in the target, read without stopping
    /// it or running anything in it; no ptrace right is given to the client.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn stack(&self) -> Result<String, Error> {
        self.session()?.stack()
    }

    /// `TERMINATE`: the controller stops the target and exits.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn terminate(&self) -> Result<(), Error> {
        self.session()?.terminate()
    }

    /// `AGENT_ATTACH [<pid>]`: has the agent in the target (or in process
    /// `pid` of its tree) run pdb in its main thread; returns that
    /// process, the CPython version it runs (the client's pdb must be of
    /// the same minor version), and the client's ends of pdb's stream and
    /// of its interrupt stream ([`AGENT_FDS`], in that order). The session
    /// lasts as long as they are open, not as the connection.
    ///
    /// Waits as long as a grant (see
    /// [`grant_timeout`](Client::grant_timeout)).
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request); [`ErrorKind::MalformedReply`] when
    /// the reply came without both file descriptors (a transport that
    /// cannot pass them).
    pub fn agent_attach(&self, pid: Option<Pid>) -> Result<(Pid, String, Vec<OwnedFd>), Error> {
        self.session()?.agent_attach(pid)
    }
}

/// One connection to a controller, for several requests; see
/// [`Client::session`]. Each request waits at most the client's timeout.
#[derive(Debug)]
pub struct Session<C> {
    connection: C,
    timeout: Duration,
    grant_timeout: Duration,
}

impl<C: Connection> Session<C> {
    /// Sends `request` and returns the reply; an `ERROR:` reply becomes an
    /// [`ErrorKind::Refused`] error carrying the controller's message.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn request(&mut self, request: Request) -> Result<Reply, Error> {
        let timeout = self.timeout_for(request);
        match self.connection.request(request, timeout)? {
            Reply::Error(message) => Err(Error::new(ErrorKind::Refused, message)),
            reply => Ok(reply),
        }
    }

    /// How long to wait for the reply to `request`.
    fn timeout_for(&self, request: Request) -> Duration {
        match request {
            Request::GrantAccess(_) | Request::Revoke(_) | Request::AgentAttach(_) => {
                self.grant_timeout
            }
            _ => self.timeout,
        }
    }

    /// `AGENT_ATTACH [<pid>]`; see [`Client::agent_attach`].
    ///
    /// # Errors
    ///
    /// As [`Client::agent_attach`].
    pub fn agent_attach(
        &mut self,
        process: Option<Pid>,
    ) -> Result<(Pid, String, Vec<OwnedFd>), Error> {
        let request = Request::AgentAttach(process);
        let timeout = self.timeout_for(request);
        let (reply, fds) = self
            .connection
            .request_with_fds(request, timeout, AGENT_FDS)?;
        match reply {
            Reply::Agent { pid, python } if fds.len() == AGENT_FDS => Ok((pid, python, fds)),
            Reply::Agent { .. } => Err(Error::new(
                ErrorKind::MalformedReply,
                format!(
                    "The reply to {request} came with {} file descriptors, not {AGENT_FDS} \
                     (pdb's sockets): the transport cannot pass them",
                    fds.len()
                ),
            )),
            Reply::Error(message) => Err(Error::new(ErrorKind::Refused, message)),
            other => Err(unexpected(request, &other)),
        }
    }

    /// `GET_TARGET_PID`; see [`Client::target_pid`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn target_pid(&mut self) -> Result<Pid, Error> {
        match self.request(Request::GetTargetPid)? {
            Reply::TargetPid(pid) => Ok(pid),
            other => Err(unexpected(Request::GetTargetPid, &other)),
        }
    }

    /// `GRANT_ACCESS <pid>`; see [`Client::grant_access`]. Refused while
    /// another client holds the grant.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn grant_access(&mut self, pid: Pid) -> Result<(), Error> {
        self.grant(GrantRequest::new(pid))
    }

    /// `GRANT_ACCESS <pid> FORCE`: as [`grant_access`](Self::grant_access),
    /// taking the grant over from whichever client holds it.
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn take_over(&mut self, pid: Pid) -> Result<(), Error> {
        self.grant(GrantRequest::new(pid).force(true))
    }

    /// `REVOKE <pid>`; see [`Client::revoke`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn revoke(&mut self, pid: Pid) -> Result<(), Error> {
        self.revoke_grant(RevokeRequest::new().client(pid))
    }

    /// `GRANT_ACCESS <client> [TARGET <pid>] [FORCE]`; see [`Client::grant`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn grant(&mut self, grant: GrantRequest) -> Result<(), Error> {
        self.expect_ready(Request::GrantAccess(grant))
    }

    /// `REVOKE [<client>] [TARGET <pid>]`; see [`Client::revoke_grant`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn revoke_grant(&mut self, revoke: RevokeRequest) -> Result<(), Error> {
        self.expect_ready(Request::Revoke(revoke))
    }

    /// `PS`; see [`Client::ps`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn ps(&mut self) -> Result<Tree, Error> {
        match self.request(Request::Ps)? {
            Reply::Ps(tree) => Ok(tree),
            other => Err(unexpected(Request::Ps, &other)),
        }
    }

    /// `STACKS [<pid>|ALL]`; see [`Client::stacks`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn stacks(&mut self, scope: Scope) -> Result<Vec<ProcessStacks>, Error> {
        let request = Request::Stacks(scope);
        match self.request(request)? {
            Reply::Stacks(stacks) => Ok(stacks),
            other => Err(unexpected(request, &other)),
        }
    }

    /// `TASKS [<pid>]`; see [`Client::tasks`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn tasks(&mut self, pid: Option<Pid>) -> Result<AsyncTasks, Error> {
        let request = Request::Tasks(pid);
        match self.request(request)? {
            Reply::Tasks(tasks) => Ok(tasks),
            other => Err(unexpected(request, &other)),
        }
    }

    /// `STATUS`; see [`Client::status`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn status(&mut self) -> Result<Status, Error> {
        match self.request(Request::Status)? {
            Reply::Status(status) => Ok(status),
            other => Err(unexpected(Request::Status, &other)),
        }
    }

    /// `STACK`; see [`Client::stack`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn stack(&mut self) -> Result<String, Error> {
        let request = Request::Stack(Scope::Target);
        match self.request(request)? {
            Reply::Stack(text) => Ok(text),
            other => Err(unexpected(request, &other)),
        }
    }

    /// `TERMINATE`; see [`Client::terminate`].
    ///
    /// # Errors
    ///
    /// As [`Client::request`].
    pub fn terminate(&mut self) -> Result<(), Error> {
        self.expect_ready(Request::Terminate)
    }

    /// `PROFILE`: starts sampling the stacks `profile` names on this
    /// session's connection; collect with [`samples`](Session::samples)
    /// until one says it [`ended`](Samples::ended). Closing the session
    /// stops it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use heli_core::profile::ProfileRequest;
    /// use heli_core::protocol::Scope;
    /// # fn profile<C: heli_core::Connection>(session: &mut heli_core::Session<C>) -> Result<(), heli_core::Error> {
    /// session.profile(ProfileRequest::new(Scope::Target, 100).duration_ms(2_000))?;
    /// loop {
    ///     std::thread::sleep(std::time::Duration::from_millis(500));
    ///     let samples = session.samples(false)?;
    ///     println!("{} of {} samples taken", samples.taken, samples.due);
    ///     if let Some(why) = samples.ended {
    ///         println!("ended: {why}");
    ///         return Ok(());
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Client::request`]; refused on the FIFO transport.
    pub fn profile(&mut self, profile: ProfileRequest) -> Result<(), Error> {
        self.expect_ready(Request::Profile(profile))
    }

    /// `SAMPLES [STOP]`: what this connection's profile counted since the
    /// last call (stopping it first if `stop`).
    ///
    /// # Errors
    ///
    /// As [`Client::request`]; refused when no profile runs on this
    /// connection.
    pub fn samples(&mut self, stop: bool) -> Result<Samples, Error> {
        let request = Request::Samples(stop);
        match self.request(request)? {
            Reply::Samples(samples) => Ok(samples),
            other => Err(unexpected(request, &other)),
        }
    }

    fn expect_ready(&mut self, request: Request) -> Result<(), Error> {
        match self.request(request)? {
            Reply::Ready => Ok(()),
            other => Err(unexpected(request, &other)),
        }
    }
}

fn unexpected(request: Request, reply: &Reply) -> Error {
    Error::new(
        ErrorKind::MalformedReply,
        format!("Unexpected reply to {request}: {reply}"),
    )
}
