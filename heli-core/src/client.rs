//! The client side: one request per connection, each with a deadline.

use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind};
use crate::protocol::{Reply, Request};
use crate::transport::{Connection, Transport};

/// How long a client waits for the controller by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Talks to a controller over a [`Transport`].
///
/// Every call connects, sends one request and waits for its reply for at
/// most the [timeout](Client::timeout) (2 s by default): a client never hangs
/// on a controller that is gone, busy or broken.
///
/// # Examples
///
/// ```no_run
/// # fn demo<T: heli_core::Transport>(transport: T) -> Result<(), heli_core::Error> {
/// use heli_core::Client;
///
/// let client = Client::new(transport);
/// let target = client.target_pid()?;
/// client.grant_access(std::process::id())?;
/// println!("may now ptrace {target}");
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client<T> {
    transport: T,
    timeout: Duration,
}

impl<T: Transport> Client<T> {
    /// A client of the controller listening on `transport`.
    pub fn new(transport: T) -> Self {
        Client {
            transport,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// How long to wait for each reply, connecting included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The transport this client uses.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Sends `request` and returns the reply; an `ERROR:` reply becomes an
    /// [`ErrorKind::Refused`] error carrying the controller's message.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotRunning`] when no controller listens,
    /// [`ErrorKind::Timeout`], [`ErrorKind::Refused`],
    /// [`ErrorKind::MalformedReply`] or [`ErrorKind::Io`].
    pub fn request(&self, request: Request) -> Result<Reply, Error> {
        let deadline = Instant::now() + self.timeout;
        let mut connection = self.transport.connect(self.timeout).map_err(|err| {
            let mut error = Error::io(
                format!(
                    "Cannot reach the controller at {}",
                    self.transport.describe()
                ),
                err,
            );
            if error.kind() == ErrorKind::NotRunning {
                error = Error::new(
                    ErrorKind::NotRunning,
                    format!(
                        "Controller not running (nothing listens at {})",
                        self.transport.describe()
                    ),
                );
            }
            error
        })?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        match connection.request(request, remaining)? {
            Reply::Error(message) => Err(Error::new(ErrorKind::Refused, message)),
            reply => Ok(reply),
        }
    }

    /// `GET_TARGET_PID`: the target's process id.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn target_pid(&self) -> Result<u32, Error> {
        match self.request(Request::GetTargetPid)? {
            Reply::TargetPid(pid) => Ok(pid),
            other => Err(unexpected(Request::GetTargetPid, &other)),
        }
    }

    /// `GRANT_ACCESS <pid>`: returns once `pid` may ptrace the target.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn grant_access(&self, pid: u32) -> Result<(), Error> {
        self.expect_ready(Request::GrantAccess(pid))
    }

    /// `REVOKE <pid>`: withdraws the grant, if `pid` holds it (the
    /// controller refuses when another client took the grant over since).
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn revoke(&self, pid: u32) -> Result<(), Error> {
        self.expect_ready(Request::Revoke(Some(pid)))
    }

    /// `TERMINATE`: the controller stops the target and exits.
    ///
    /// # Errors
    ///
    /// As [`request`](Client::request).
    pub fn terminate(&self) -> Result<(), Error> {
        self.expect_ready(Request::Terminate)
    }

    fn expect_ready(&self, request: Request) -> Result<(), Error> {
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
