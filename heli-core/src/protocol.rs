//! The line protocol spoken between clients and the controller.
//!
//! Every message is one line of UTF-8 ending in `\n`, at most [`MAX_LINE`]
//! bytes long including the newline for a request, [`MAX_REPLY`] for a reply.
//! A client sends one request and reads one reply:
//!
//! | request | reply |
//! |---|---|
//! | `GET_TARGET_PID` | `TARGET_PID <pid>` |
//! | `GRANT_ACCESS <client> [TARGET <pid>] [FORCE] [FOR <secs>]` | `READY` once process `<client>` may ptrace the target, or process `<pid>` of the target's tree (the target or a descendant of it at the moment of the grant); `FORCE` takes the grant on that process over from another client; `FOR` limits the grant to `<secs>` seconds (1 to [`MAX_GRANT`]'s), within the controller's own limit if it has one |
//! | `REVOKE [<client>] [TARGET <pid>]` | `READY` once the grant on the target (or on process `<pid>`) is withdrawn; with `<client>`, only if that process holds it |
//! | `STATUS` | `STATUS pid=<pid> state=<state> ... holder=<client> grants=<process>:<client>,... command=<command line>`: `holder` is the client holding the grant on the target (`none`), `grants` every grant of the tree, the target's first (`none`) |
//! | `PS` | `PS <json>`: the supervised tree, a [`Tree`] as one line of JSON |
//! | `STACK` | `STACK <text>`: every thread's Python stack in the target, read without running anything in it; newlines in the text are written `\n`, backslashes `\\` |
//! | `STACK <pid>`, `STACK ALL` | the same for process `<pid>` of the tree, or for every process of it, each under a header `Process <pid> (<role>)...` |
//! | `STACKS [<pid>\|ALL]` | `STACKS <json>`: the same stacks as a list of [`ProcessStacks`], one line of JSON (a process whose stacks cannot be read is listed with `skipped`, for `ALL`) |
//! | `TASKS [<pid>]` | `TASKS <json>`: the asyncio tasks of the target (or of process `<pid>` of its tree), read from its memory: an [`AsyncTasks`] as one line of JSON |
//! | `AGENT_ATTACH [<pid>]` | `AGENT <pid> <python-version>` once the agent in the target (or in process `<pid>` of its tree) has scheduled pdb in its main thread; the reply carries the client's ends of pdb's two sockets (`SCM_RIGHTS`, on a transport that can pass file descriptors); authorized as `GRANT_ACCESS` for the asking process on that process would be |
//! | `PROFILE <rate> <ms> [<pid>\|ALL]` | `READY` once a profile of the target (of process `<pid>`, or of every Python process of the tree) started on this connection: its stacks read `<rate>` times a second for `<ms>` milliseconds (0: until stopped), never stopping it; one profile per connection, on a transport with connections only (the FIFO's cannot tell when its client goes away); it ends when the connection closes |
//! | `SAMPLES [STOP]` | `SAMPLES <json>`: what the connection's profile counted since the last `SAMPLES`, a [`Samples`] as one line of JSON; with `ended` set (why) once it is over, then the profile is gone; `STOP` ends it first |
//! | `TERMINATE` | `READY`, then the controller stops the target and exits |
//! | `AUDIT [<secs>]` | `AUDIT <json>`: this controller's newest [audit records](crate::audit) (of the last `<secs>` seconds), oldest first, as one line of JSON (a list of [`AuditRecord`](crate::AuditRecord) objects); as many of the newest as fit in a reply |
//!
//! Any request may instead be answered by `ERROR: <message>`.
//!
//! Commands are case-insensitive and the reply follows the request's case
//! ([`Dialect`]): the published Python implementation of this system speaks
//! lowercase (`get_target_pid` -> `target_pid 123`, errors as
//! `error : <message>`), its README documents uppercase. Replies are parsed
//! in either form.
//!
//! # Examples
//!
//! ```
//! use heli_core::protocol::{parse_request, Dialect, GrantRequest, Reply, Request};
//! use heli_core::Pid;
//!
//! let (request, dialect) = parse_request(b"grant_access 42").unwrap();
//! assert_eq!(request, Request::GrantAccess(GrantRequest::new(Pid::new(42).unwrap())));
//! assert_eq!(dialect, Dialect::Lower);
//! assert_eq!(Reply::Ready.encode(dialect), "ready\n");
//!
//! let err = parse_request(b"GRANT_ACCESS -1").unwrap_err();
//! assert_eq!(Reply::error(&err).encode(Dialect::Upper), "ERROR: Invalid PID\n");
//! ```

use std::fmt;
use std::time::Duration;

use crate::error::{Error, ErrorKind};
use crate::process::Pid;
use crate::profile::{ProfileRequest, Samples, MAX_RATE};
use crate::stacks::ProcessStacks;
use crate::tasks::AsyncTasks;
use crate::tree::Tree;

/// The longest request line a controller accepts, newline included.
///
/// It equals `PIPE_BUF` on Linux, so a request written to a FIFO in one
/// `write` is never interleaved with another client's.
pub const MAX_LINE: usize = 4096;

/// The longest reply line a client accepts, newline included: a `STACK`
/// reply carries every thread's traceback (see [`LineBuffer::for_replies`]).
/// A controller cuts a stack dump to fit.
pub const MAX_REPLY: usize = 4 << 20;

/// A request from a client to the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Request {
    /// `GET_TARGET_PID`: which process is the target?
    GetTargetPid,
    /// `GRANT_ACCESS <client> [TARGET <pid>] [FORCE]`: let process
    /// `<client>` (and its descendants) ptrace the target, or the process
    /// `<pid>` of the target's tree.
    GrantAccess(GrantRequest),
    /// `STATUS`: what the controller and its target are doing.
    Status,
    /// `PS`: the supervised tree (the target and its descendants, and the
    /// processes a subreaper controller adopted).
    Ps,
    /// `STACK [<pid>|ALL]`: the stacks of the target, of process `<pid>` of
    /// its tree, or of every process of the tree, as text, read without
    /// stopping anything.
    Stack(Scope),
    /// `STACKS [<pid>|ALL]`: as [`Stack`](Request::Stack), as JSON (a list
    /// of [`ProcessStacks`]).
    Stacks(Scope),
    /// `REVOKE [<client>] [TARGET <pid>]`: withdraw the grant on the target
    /// (or on process `<pid>`); with a client, only if that process holds
    /// it (a client that detached must not withdraw the grant another
    /// client took over since).
    Revoke(RevokeRequest),
    /// `TERMINATE`: stop the target and the controller.
    Terminate,
    /// `TASKS [<pid>]`: the asyncio tasks of the target, or of process
    /// `<pid>` of its tree, as JSON (an [`AsyncTasks`]).
    Tasks(Option<Pid>),
    /// `AGENT_ATTACH [<pid>]`: have the agent in the target (or in process
    /// `<pid>` of its tree) run pdb, and pass the client pdb's sockets
    /// (see [`Agent`](crate::Agent)).
    AgentAttach(Option<Pid>),
    /// `PROFILE <rate> <ms> [<pid>|ALL]`: start sampling stacks for this
    /// connection (see [`profile`](crate::profile)).
    Profile(ProfileRequest),
    /// `SAMPLES [STOP]`: what the connection's profile counted since the
    /// last collection; `true`: stop it first.
    Samples(bool),
    /// `AUDIT [<secs>]`: this controller's newest audit records, of the
    /// last `<secs>` seconds (all it keeps without).
    Audit(Option<u64>),
}

/// What `GRANT_ACCESS` asks for.
///
/// # Examples
///
/// ```
/// use heli_core::protocol::{GrantRequest, Request};
/// use heli_core::Pid;
///
/// let pid = |raw| Pid::new(raw).unwrap();
/// let grant = GrantRequest::new(pid(4242)).process(pid(4250)).force(true);
/// assert_eq!(
///     Request::GrantAccess(grant).to_string(),
///     "GRANT_ACCESS 4242 TARGET 4250 FORCE"
/// );
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct GrantRequest {
    /// The process to be let in (a client, or the debugger it runs).
    pub client: Pid,
    /// The process of the tree to let it into; `None`: the target.
    pub process: Option<Pid>,
    /// Take the grant over from another client that holds it.
    pub force: bool,
    /// How long the grant may last (whole seconds on the wire); `None`:
    /// as long as the controller allows.
    pub duration: Option<Duration>,
}

impl GrantRequest {
    /// A grant for `client` on the target, not forced.
    pub fn new(client: Pid) -> GrantRequest {
        GrantRequest {
            client,
            process: None,
            force: false,
            duration: None,
        }
    }

    /// The same grant on `process` of the tree instead.
    pub fn process(mut self, process: Pid) -> GrantRequest {
        self.process = Some(process);
        self
    }

    /// The same grant, taken over from another holder when `force`.
    pub fn force(mut self, force: bool) -> GrantRequest {
        self.force = force;
        self
    }

    /// The same grant, for `duration` at most (rounded up to whole
    /// seconds when sent).
    pub fn lasting(mut self, duration: Duration) -> GrantRequest {
        self.duration = Some(duration);
        self
    }
}

/// The longest time limit a `GRANT_ACCESS ... FOR <secs>` may ask for: a
/// week.
pub const MAX_GRANT: Duration = Duration::from_secs(7 * 24 * 3600);

/// `duration` as whole seconds, rounded up: the unit of `FOR` and of
/// `STATUS`'s `time_left` (0 only for no time at all; `u64::MAX` at most).
///
/// # Examples
///
/// ```
/// use heli_core::protocol::whole_seconds;
/// use std::time::Duration;
///
/// assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
/// assert_eq!(whole_seconds(Duration::from_secs(60)), 60);
/// assert_eq!(whole_seconds(Duration::ZERO), 0);
/// assert_eq!(whole_seconds(Duration::MAX), u64::MAX);
/// ```
pub fn whole_seconds(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// What `REVOKE` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RevokeRequest {
    /// Withdraw the grant only if this process holds it.
    pub client: Option<Pid>,
    /// The process of the tree whose grant is withdrawn; `None`: the
    /// target.
    pub process: Option<Pid>,
}

impl RevokeRequest {
    /// Withdraws the grant on the target, whoever holds it.
    pub fn new() -> RevokeRequest {
        RevokeRequest::default()
    }

    /// Only if `client` holds it.
    pub fn client(mut self, client: Pid) -> RevokeRequest {
        self.client = Some(client);
        self
    }

    /// On `process` of the tree instead of the target.
    pub fn process(mut self, process: Pid) -> RevokeRequest {
        self.process = Some(process);
        self
    }
}

/// Which processes of the tree a stack request reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// The target.
    #[default]
    Target,
    /// One process of the tree.
    Process(Pid),
    /// Every process of the tree.
    All,
}

impl Request {
    /// The command word, in `dialect`.
    pub fn command(&self, dialect: Dialect) -> &'static str {
        let upper = match self {
            Request::GetTargetPid => "GET_TARGET_PID",
            Request::GrantAccess(_) => "GRANT_ACCESS",
            Request::Status => "STATUS",
            Request::Ps => "PS",
            Request::Stack(_) => "STACK",
            Request::Stacks(_) => "STACKS",
            Request::Revoke(_) => "REVOKE",
            Request::Terminate => "TERMINATE",
            Request::AgentAttach(_) => "AGENT_ATTACH",
            Request::Profile(_) => "PROFILE",
            Request::Samples(_) => "SAMPLES",
            Request::Tasks(_) => "TASKS",
            Request::Audit(_) => "AUDIT",
        };
        dialect.apply(upper)
    }

    /// The request as a line, newline included.
    pub fn encode(&self, dialect: Dialect) -> String {
        let mut line = self.command(dialect).to_owned();
        let mut word = |text: &str| {
            line.push(' ');
            line.push_str(text);
        };
        let target = dialect.apply("TARGET");
        match *self {
            Request::GrantAccess(grant) => {
                word(&grant.client.to_string());
                if let Some(process) = grant.process {
                    word(target);
                    word(&process.to_string());
                }
                if grant.force {
                    word(dialect.apply("FORCE"));
                }
                if let Some(duration) = grant.duration {
                    word(dialect.apply("FOR"));
                    word(&whole_seconds(duration).to_string());
                }
            }
            Request::Revoke(revoke) => {
                if let Some(client) = revoke.client {
                    word(&client.to_string());
                }
                if let Some(process) = revoke.process {
                    word(target);
                    word(&process.to_string());
                }
            }
            Request::Stack(scope) | Request::Stacks(scope) => match scope {
                Scope::Target => {}
                Scope::Process(pid) => word(&pid.to_string()),
                Scope::All => word(dialect.apply("ALL")),
            },
            Request::AgentAttach(process) | Request::Tasks(process) => {
                if let Some(process) = process {
                    word(&process.to_string());
                }
            }
            Request::Profile(profile) => {
                word(&profile.rate.to_string());
                word(&profile.duration_ms.to_string());
                match profile.scope {
                    Scope::Target => {}
                    Scope::Process(pid) => word(&pid.to_string()),
                    Scope::All => word(dialect.apply("ALL")),
                }
            }
            Request::Samples(stop) => {
                if stop {
                    word(dialect.apply("STOP"));
                }
            }
            Request::Audit(since) => {
                if let Some(since) = since {
                    word(&since.to_string());
                }
            }
            Request::GetTargetPid | Request::Status | Request::Ps | Request::Terminate => {}
        }
        line.push('\n');
        line
    }

    /// The client a `GRANT_ACCESS` asks rights for; `None` for other
    /// requests.
    pub fn grant_pid(&self) -> Option<Pid> {
        match *self {
            Request::GrantAccess(grant) => Some(grant.client),
            _ => None,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode(Dialect::Upper).trim_end())
    }
}

/// A reply from the controller.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// `TARGET_PID <pid>`.
    TargetPid(Pid),
    /// `READY`: the request was carried out.
    Ready,
    /// `ERROR: <message>`.
    Error(String),
    /// `STATUS key=value ... command=<command line>`.
    Status(Status),
    /// `STACK <text>`, the text on one line (see [`Reply::encode`]).
    Stack(String),
    /// `PS <json>`: the supervised tree, as one line of JSON.
    Ps(Tree),
    /// `STACKS <json>`: the stacks of the processes asked for, as one line
    /// of JSON (a list of [`ProcessStacks`]).
    Stacks(Vec<ProcessStacks>),
    /// `TASKS <json>`: the asyncio tasks of the process asked for, as one
    /// line of JSON.
    Tasks(AsyncTasks),
    /// `AUDIT <json>`: audit records, oldest first, each the JSON object
    /// of an [`AuditRecord`](crate::AuditRecord).
    Audit(Vec<serde_json::Value>),
    /// `AGENT <pid> <python-version>`: the agent in process `pid` has
    /// scheduled pdb; the version (the rest of the line) is the CPython
    /// the process runs, which the client's pdb must match. The client's
    /// ends of pdb's sockets travel with the line, not in it.
    Agent {
        /// The process pdb runs in.
        pid: Pid,
        /// Its CPython version (`3.14.0`).
        python: String,
    },
    /// `SAMPLES <json>`: what a profile counted since the last collection.
    Samples(Samples),
}

/// The controller's answer to `STATUS`.
///
/// On the wire: `STATUS` then `key=value` words, `command=` last, taking the
/// rest of the line (so it may hold spaces). Other values hold no white space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The target's process id.
    pub pid: Pid,
    /// `running`, or `stopping` once asked to end.
    pub state: String,
    /// Seconds since the target started.
    pub uptime_secs: u64,
    /// The granter in use.
    pub granter: String,
    /// The process that holds the grant on the target, if any.
    pub holder: Option<Pid>,
    /// Every grant in force in the tree, the target's first (one ptracer
    /// per process under Yama). On the wire:
    /// `grants=<process>:<client>,...` (`grants=none`).
    pub grants: Vec<TreeGrant>,
    /// More facts, in order (for instance `ptrace_scope`).
    pub extra: Vec<(String, String)>,
    /// The target's command line.
    pub command: String,
}

/// A grant in force on one process of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TreeGrant {
    /// The process of the tree the client may ptrace.
    pub process: Pid,
    /// The client that holds the grant.
    pub client: Pid,
}

impl Status {
    /// The status of target `pid` with every other field empty.
    pub fn new(pid: Pid) -> Status {
        Status {
            pid,
            state: String::new(),
            uptime_secs: 0,
            granter: String::new(),
            holder: None,
            grants: Vec::new(),
            extra: Vec::new(),
            command: String::new(),
        }
    }

    fn encode(&self) -> String {
        let word = |value: &str| -> String {
            let cleaned: String = value
                .chars()
                .map(|c| {
                    if c.is_whitespace() || c == '=' {
                        '_'
                    } else {
                        c
                    }
                })
                .collect();
            if cleaned.is_empty() {
                "-".to_owned()
            } else {
                cleaned
            }
        };
        let mut line = format!(
            "pid={} state={} uptime={} granter={} holder={}",
            self.pid,
            word(&self.state),
            self.uptime_secs,
            word(&self.granter),
            self.holder
                .map_or_else(|| "none".to_owned(), |pid| pid.to_string()),
        );
        if self.grants.is_empty() {
            line.push_str(" grants=none");
        } else {
            let grants: Vec<String> = self
                .grants
                .iter()
                .map(|grant| format!("{}:{}", grant.process, grant.client))
                .collect();
            line.push_str(&format!(" grants={}", grants.join(",")));
        }
        for (key, value) in &self.extra {
            line.push_str(&format!(" {}={}", word(key), word(value)));
        }
        line.push_str(" command=");
        line.push_str(&self.command.replace(['\n', '\r'], " "));
        line
    }

    fn parse(text: &str) -> Option<Status> {
        // `command=` starts a word: an extra fact may be named `last_command`.
        let command_at = text
            .match_indices("command=")
            .map(|(at, _)| at)
            .find(|&at| at == 0 || text.as_bytes()[at - 1].is_ascii_whitespace());
        let (fields, command) = match command_at {
            Some(at) => (&text[..at], text[at + "command=".len()..].to_owned()),
            None => (text, String::new()),
        };
        let mut pid = None;
        let (mut state, mut uptime_secs, mut granter) = (String::new(), 0, String::new());
        let (mut holder, mut grants, mut extra) = (None, Vec::new(), Vec::new());
        for field in fields.split_ascii_whitespace() {
            let (key, value) = field.split_once('=')?;
            match key {
                "pid" => pid = Some(value.parse().ok()?),
                "state" => state = value.to_owned(),
                "uptime" => uptime_secs = value.parse().ok()?,
                "granter" => granter = value.to_owned(),
                "holder" if value == "none" => holder = None,
                "holder" => holder = Some(value.parse().ok()?),
                "grants" if value == "none" => grants.clear(),
                "grants" => {
                    for pair in value.split(',') {
                        let (process, client) = pair.split_once(':')?;
                        grants.push(TreeGrant {
                            process: process.parse().ok()?,
                            client: client.parse().ok()?,
                        });
                    }
                }
                _ => extra.push((key.to_owned(), value.to_owned())),
            }
        }
        Some(Status {
            pid: pid?,
            state,
            uptime_secs,
            granter,
            holder,
            grants,
            extra,
            command,
        })
    }

    /// The value of an [`extra`](Status::extra) fact.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Reply {
    /// The reply that reports `err` to the client.
    pub fn error(err: &Error) -> Reply {
        Reply::Error(err.message().to_owned())
    }

    /// The reply as a line in `dialect`, newline included.
    ///
    /// Newlines inside an error message are replaced by spaces so that a reply
    /// is always exactly one line.
    pub fn encode(&self, dialect: Dialect) -> String {
        match self {
            Reply::TargetPid(pid) => format!("{} {}\n", dialect.apply("TARGET_PID"), pid),
            Reply::Ready => format!("{}\n", dialect.apply("READY")),
            Reply::Status(status) => format!("{} {}\n", dialect.apply("STATUS"), status.encode()),
            Reply::Stack(text) => {
                let escaped = text.replace('\\', "\\\\").replace('\n', "\\n");
                format!("{} {escaped}\n", dialect.apply("STACK"))
            }
            Reply::Ps(tree) => format!("{} {}\n", dialect.apply("PS"), json(tree)),
            Reply::Stacks(stacks) => format!("{} {}\n", dialect.apply("STACKS"), json(stacks)),
            Reply::Samples(samples) => format!("{} {}\n", dialect.apply("SAMPLES"), json(samples)),
            Reply::Tasks(tasks) => format!("{} {}\n", dialect.apply("TASKS"), json(tasks)),
            Reply::Audit(records) => format!("{} {}\n", dialect.apply("AUDIT"), json(records)),
            Reply::Agent { pid, python } => format!(
                "{} {pid} {}\n",
                dialect.apply("AGENT"),
                python.replace(['\n', '\r'], " ")
            ),
            Reply::Error(message) => {
                let message = message.replace(['\n', '\r'], " ");
                match dialect {
                    Dialect::Upper => format!("ERROR: {message}\n"),
                    Dialect::Lower => format!("error : {message}\n"),
                }
            }
        }
    }

    /// Parses a reply line (with or without its newline) in either dialect.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::MalformedReply`] when the line is none of the replies.
    pub fn parse(line: &str) -> Result<Reply, Error> {
        let line = line.trim_end_matches(['\n', '\r']);
        let malformed = || {
            Error::new(
                ErrorKind::MalformedReply,
                format!("Unexpected reply from the controller: {line:?}"),
            )
        };
        let (word, rest) = match line.find([' ', ':']) {
            Some(at) => (&line[..at], &line[at..]),
            None => (line, ""),
        };
        if word.eq_ignore_ascii_case("error") {
            let message = rest.trim_start().strip_prefix(':').ok_or_else(malformed)?;
            return Ok(Reply::Error(message.trim_start().to_owned()));
        }
        if word.eq_ignore_ascii_case("ready") && rest.trim().is_empty() {
            return Ok(Reply::Ready);
        }
        if word.eq_ignore_ascii_case("stacks") {
            return serde_json::from_str(rest)
                .map(Reply::Stacks)
                .map_err(|_| malformed());
        }
        if word.eq_ignore_ascii_case("samples") {
            return serde_json::from_str(rest)
                .map(Reply::Samples)
                .map_err(|_| malformed());
        }
        if word.eq_ignore_ascii_case("tasks") {
            return serde_json::from_str(rest)
                .map(Reply::Tasks)
                .map_err(|_| malformed());
        }
        if word.eq_ignore_ascii_case("audit") {
            return serde_json::from_str(rest)
                .map(Reply::Audit)
                .map_err(|_| malformed());
        }
        if word.eq_ignore_ascii_case("ps") {
            return serde_json::from_str(rest)
                .map(Reply::Ps)
                .map_err(|_| malformed());
        }
        if word.eq_ignore_ascii_case("stack") {
            return Ok(Reply::Stack(unescape(
                rest.strip_prefix(' ').unwrap_or(rest),
            )));
        }
        if word.eq_ignore_ascii_case("status") {
            return Status::parse(rest).map(Reply::Status).ok_or_else(malformed);
        }
        if word.eq_ignore_ascii_case("agent") {
            // `AGENT <pid> <python>`: the version is the rest of the line.
            let rest = rest.strip_prefix(' ').ok_or_else(malformed)?;
            let (pid, python) = rest.split_once(' ').unwrap_or((rest, ""));
            let pid = pid.parse().map_err(|_| malformed())?;
            let python = python.to_owned();
            return Ok(Reply::Agent { pid, python });
        }
        if word.eq_ignore_ascii_case("target_pid") {
            return match rest.trim().parse() {
                Ok(pid) => Ok(Reply::TargetPid(pid)),
                Err(_) => Err(malformed()),
            };
        }
        Err(malformed())
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode(Dialect::Upper).trim_end())
    }
}

/// The letter case a client speaks; replies are written in the request's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// `GET_TARGET_PID` / `ERROR: ...`, as the original README documents.
    #[default]
    Upper,
    /// `get_target_pid` / `error : ...`, as the original Python code speaks.
    Lower,
}

impl Dialect {
    /// The dialect of a command word: lowercase if it has lowercase letters
    /// and no uppercase one; uppercase otherwise (an empty word too).
    pub fn of(word: &str) -> Dialect {
        let lower = word.chars().any(|c| c.is_ascii_lowercase());
        let upper = word.chars().any(|c| c.is_ascii_uppercase());
        if lower && !upper {
            Dialect::Lower
        } else {
            Dialect::Upper
        }
    }

    fn apply(self, upper: &'static str) -> &'static str {
        match (self, upper) {
            (Dialect::Upper, _) => upper,
            (Dialect::Lower, "GET_TARGET_PID") => "get_target_pid",
            (Dialect::Lower, "GRANT_ACCESS") => "grant_access",
            (Dialect::Lower, "REVOKE") => "revoke",
            (Dialect::Lower, "TERMINATE") => "terminate",
            (Dialect::Lower, "TARGET_PID") => "target_pid",
            (Dialect::Lower, "READY") => "ready",
            (Dialect::Lower, "STATUS") => "status",
            (Dialect::Lower, "STACK") => "stack",
            (Dialect::Lower, "FORCE") => "force",
            (Dialect::Lower, "TARGET") => "target",
            (Dialect::Lower, "ALL") => "all",
            (Dialect::Lower, "PS") => "ps",
            (Dialect::Lower, "STACKS") => "stacks",
            (Dialect::Lower, "AGENT_ATTACH") => "agent_attach",
            (Dialect::Lower, "AGENT") => "agent",
            (Dialect::Lower, "PROFILE") => "profile",
            (Dialect::Lower, "SAMPLES") => "samples",
            (Dialect::Lower, "STOP") => "stop",
            (Dialect::Lower, "TASKS") => "tasks",
            (Dialect::Lower, "AUDIT") => "audit",
            (Dialect::Lower, other) => other,
        }
    }
}

/// Parses one request line, with or without its trailing newline.
///
/// On error, the [`Dialect`] to answer in is still known when the line was
/// text: use [`dialect_of_line`].
///
/// # Errors
///
/// [`ErrorKind::LineTooLong`], [`ErrorKind::NotUtf8`],
/// [`ErrorKind::EmptyLine`], [`ErrorKind::UnknownCommand`],
/// [`ErrorKind::InvalidPid`] or [`ErrorKind::UnexpectedArgument`]; the
/// error's message is the one to send back.
pub fn parse_request(line: &[u8]) -> Result<(Request, Dialect), Error> {
    let line = strip_newline(line);
    if line.len() >= MAX_LINE {
        return Err(LineBuffer::new().too_long());
    }
    let text = std::str::from_utf8(line)
        .map_err(|_| Error::new(ErrorKind::NotUtf8, "Request is not valid UTF-8"))?;
    let mut words = text.split_ascii_whitespace();
    let Some(command) = words.next() else {
        return Err(Error::new(ErrorKind::EmptyLine, "Empty request"));
    };
    let dialect = Dialect::of(command);
    let invalid_pid = || Error::new(ErrorKind::InvalidPid, "Invalid PID");
    let request = if command.eq_ignore_ascii_case("GET_TARGET_PID") {
        Request::GetTargetPid
    } else if command.eq_ignore_ascii_case("TERMINATE") {
        Request::Terminate
    } else if command.eq_ignore_ascii_case("REVOKE") {
        // REVOKE [<client>] [TARGET <pid>]
        let mut revoke = RevokeRequest::new();
        let mut next = words.next();
        if let Some(word) = next.filter(|word| !word.eq_ignore_ascii_case("TARGET")) {
            revoke.client = Some(word.parse().map_err(|_| invalid_pid())?);
            next = words.next();
        }
        if let Some(word) = next {
            if !word.eq_ignore_ascii_case("TARGET") {
                return Err(invalid_pid());
            }
            revoke.process = Some(target_pid(words.next())?);
        }
        if words.next().is_some() {
            return Err(invalid_pid());
        }
        Request::Revoke(revoke)
    } else if command.eq_ignore_ascii_case("STATUS") {
        Request::Status
    } else if command.eq_ignore_ascii_case("PS") {
        Request::Ps
    } else if command.eq_ignore_ascii_case("STACK") {
        Request::Stack(scope(words.next())?)
    } else if command.eq_ignore_ascii_case("STACKS") {
        Request::Stacks(scope(words.next())?)
    } else if command.eq_ignore_ascii_case("PROFILE") {
        // PROFILE <rate> <ms> [<pid>|ALL]
        let rate = words.next().and_then(|word| word.parse::<u32>().ok());
        let rate = rate
            .filter(|rate| (1..=MAX_RATE).contains(rate))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UnexpectedArgument,
                    format!("PROFILE takes a rate of 1 to {MAX_RATE} samples a second first"),
                )
            })?;
        let duration_ms = words.next().and_then(|word| word.parse::<u64>().ok());
        let duration_ms = duration_ms.ok_or_else(|| {
            Error::new(
                ErrorKind::UnexpectedArgument,
                "PROFILE takes a duration in milliseconds (0: until stopped) after the rate",
            )
        })?;
        Request::Profile(ProfileRequest::new(scope(words.next())?, rate).duration_ms(duration_ms))
    } else if command.eq_ignore_ascii_case("SAMPLES") {
        // SAMPLES [STOP]
        let stop = words.next();
        if stop.is_some_and(|word| !word.eq_ignore_ascii_case("STOP")) {
            return Err(Error::new(
                ErrorKind::UnexpectedArgument,
                "SAMPLES takes STOP or nothing",
            ));
        }
        Request::Samples(stop.is_some())
    } else if command.eq_ignore_ascii_case("AUDIT") {
        // AUDIT [<secs>]
        let since = words.next().map(|word| word.parse::<u64>());
        Request::Audit(since.transpose().map_err(|_| {
            Error::new(
                ErrorKind::UnexpectedArgument,
                "AUDIT takes a number of seconds or nothing",
            )
        })?)
    } else if command.eq_ignore_ascii_case("TASKS") {
        // TASKS [<pid>]
        let process = words.next().map(|word| word.parse::<Pid>());
        Request::Tasks(process.transpose().map_err(|_| invalid_pid())?)
    } else if command.eq_ignore_ascii_case("AGENT_ATTACH") {
        // AGENT_ATTACH [<pid>]
        let process = words.next().map(|word| word.parse::<Pid>());
        Request::AgentAttach(process.transpose().map_err(|_| invalid_pid())?)
    } else if command.eq_ignore_ascii_case("GRANT_ACCESS") {
        // GRANT_ACCESS <client> [TARGET <pid>] [FORCE] [FOR <secs>]
        let client = words.next().and_then(|word| word.parse::<Pid>().ok());
        let mut grant = GrantRequest::new(client.ok_or_else(invalid_pid)?);
        let mut next = words.next();
        if next.is_some_and(|word| word.eq_ignore_ascii_case("TARGET")) {
            grant.process = Some(target_pid(words.next())?);
            next = words.next();
        }
        if next.is_some_and(|word| word.eq_ignore_ascii_case("FORCE")) {
            grant.force = true;
            next = words.next();
        }
        if next.is_some_and(|word| word.eq_ignore_ascii_case("FOR")) {
            grant.duration = Some(grant_duration(words.next())?);
            next = words.next();
        }
        if next.is_some() {
            return Err(invalid_pid());
        }
        Request::GrantAccess(grant)
    } else {
        let mut shown: String = command.chars().take(64).collect();
        if shown.len() < command.len() {
            shown.push_str("...");
        }
        return Err(Error::new(
            ErrorKind::UnknownCommand,
            format!("Unknown command: {}", shown.escape_debug()),
        ));
    };
    if words.next().is_some() {
        let takes = match request {
            Request::Stack(_) | Request::Stacks(_) => "one argument at most (a PID or ALL)",
            Request::Profile(_) => "three arguments at most (a rate, milliseconds, a PID or ALL)",
            Request::Samples(_) => "one argument at most (STOP)",
            Request::AgentAttach(_) | Request::Tasks(_) => "one argument at most (a PID)",
            Request::Audit(_) => "one argument at most (seconds)",
            _ => "no argument",
        };
        return Err(Error::new(
            ErrorKind::UnexpectedArgument,
            format!("{} takes {takes}", request.command(dialect)),
        ));
    }
    Ok((request, dialect))
}

/// The pid after `TARGET`.
/// The seconds after `FOR`: 1 to [`MAX_GRANT`]'s.
fn grant_duration(word: Option<&str>) -> Result<Duration, Error> {
    let most = MAX_GRANT.as_secs();
    word.and_then(|word| word.parse::<u64>().ok())
        .filter(|secs| (1..=most).contains(secs))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidDuration,
                format!("Invalid duration after FOR: whole seconds, 1 to {most} (a week)"),
            )
        })
}

fn target_pid(word: Option<&str>) -> Result<Pid, Error> {
    word.and_then(|word| word.parse().ok())
        .ok_or_else(|| Error::new(ErrorKind::InvalidPid, "Invalid PID after TARGET"))
}

/// The scope of `STACK`, `STACKS` and `PROFILE`: nothing (the target), a pid, or `ALL`.
fn scope(word: Option<&str>) -> Result<Scope, Error> {
    match word {
        None => Ok(Scope::Target),
        Some(word) if word.eq_ignore_ascii_case("ALL") => Ok(Scope::All),
        Some(word) => word
            .parse()
            .map(Scope::Process)
            .map_err(|_| Error::new(ErrorKind::InvalidPid, "Invalid PID")),
    }
}

/// The dialect to answer a line in, even a line that does not parse.
pub fn dialect_of_line(line: &[u8]) -> Dialect {
    let first = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty())
        .unwrap_or_default();
    Dialect::of(&String::from_utf8_lossy(first))
}

/// `value` as one line of JSON (serde_json escapes newlines in strings).
fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

/// Undoes the escaping of [`Reply::Stack`]: `\n` is a newline, `\\` a
/// backslash.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits a byte stream into lines of at most [`MAX_LINE`] bytes (requests),
/// or [`MAX_REPLY`] bytes for [`for_replies`](LineBuffer::for_replies).
///
/// Transports feed it what they read and take complete lines out. A line that
/// grows past the limit yields one [`ErrorKind::LineTooLong`] error as soon as
/// it does, and the rest of it, up to its newline, is dropped: a peer can make
/// the buffer grow no larger than the limit.
///
/// # Examples
///
/// ```
/// use heli_core::protocol::LineBuffer;
///
/// let mut lines = LineBuffer::new();
/// lines.extend(b"GET_TARGET_PID\nTERM");
/// assert_eq!(lines.next_line().unwrap().unwrap(), b"GET_TARGET_PID\n");
/// assert!(lines.next_line().is_none());
/// lines.extend(b"INATE\n");
/// assert_eq!(lines.next_line().unwrap().unwrap(), b"TERMINATE\n");
/// ```
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already searched for a newline.
    scanned: usize,
    /// Dropping an over-long line until its newline.
    discarding: bool,
    /// The longest line, newline included.
    limit: usize,
    /// What its lines are, for the error message.
    what: &'static str,
}

impl Default for LineBuffer {
    fn default() -> Self {
        LineBuffer::new()
    }
}

impl LineBuffer {
    /// An empty buffer for requests: lines of at most [`MAX_LINE`] bytes.
    pub fn new() -> Self {
        LineBuffer {
            buf: Vec::new(),
            scanned: 0,
            discarding: false,
            limit: MAX_LINE,
            what: "Request",
        }
    }

    /// An empty buffer for replies: lines of at most [`MAX_REPLY`] bytes.
    pub fn for_replies() -> Self {
        LineBuffer {
            limit: MAX_REPLY,
            what: "Reply",
            ..LineBuffer::new()
        }
    }

    fn too_long(&self) -> Error {
        Error::new(
            ErrorKind::LineTooLong,
            format!("{} longer than {} bytes", self.what, self.limit),
        )
    }

    /// Appends bytes read from the peer.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether part of a line is waiting for its newline.
    pub fn has_partial_line(&self) -> bool {
        !self.buf.is_empty() || self.discarding
    }

    /// The next complete line (newline included), an error for an over-long
    /// line, or `None` until more bytes arrive.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, Error>> {
        loop {
            match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                Some(at) => {
                    let end = self.scanned + at + 1;
                    let line: Vec<u8> = self.buf.drain(..end).collect();
                    self.scanned = 0;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    if line.len() > self.limit {
                        return Some(Err(self.too_long()));
                    }
                    return Some(Ok(line));
                }
                None if self.discarding => {
                    self.buf.clear();
                    self.scanned = 0;
                    return None;
                }
                None if self.buf.len() >= self.limit => {
                    self.buf.clear();
                    self.scanned = 0;
                    self.discarding = true;
                    return Some(Err(self.too_long()));
                }
                None => {
                    self.scanned = self.buf.len();
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: u32) -> Pid {
        Pid::new(raw).unwrap()
    }

    fn grant(client: u32) -> Request {
        Request::GrantAccess(GrantRequest::new(p(client)))
    }

    fn take_over(client: u32) -> Request {
        Request::GrantAccess(GrantRequest::new(p(client)).force(true))
    }

    fn profile(scope: Scope, rate: u32, duration_ms: u64) -> Request {
        Request::Profile(ProfileRequest::new(scope, rate).duration_ms(duration_ms))
    }

    fn grant_on(client: u32, process: u32) -> GrantRequest {
        GrantRequest::new(p(client)).process(p(process))
    }

    fn revoke(client: Option<u32>, process: Option<u32>) -> Request {
        let mut revoke = RevokeRequest::new();
        revoke.client = client.map(p);
        revoke.process = process.map(p);
        Request::Revoke(revoke)
    }

    #[test]
    fn requests_in_both_dialects() {
        // Each dialect, with lines in it and what they ask.
        let upper: &[(&[u8], Request)] = &[
            (b"GET_TARGET_PID\n", Request::GetTargetPid),
            (b"Get_Target_Pid", Request::GetTargetPid),
            (b"GRANT_ACCESS 42\n", grant(42)),
            (b"  TERMINATE  \n", Request::Terminate),
            (b"REVOKE\n", revoke(None, None)),
            (b"GRANT_ACCESS 5 FORCE\n", take_over(5)),
            (
                b"GRANT_ACCESS 5 TARGET 4243\n",
                Request::GrantAccess(grant_on(5, 4243)),
            ),
            (
                b"GRANT_ACCESS 5 Target 4243 FORCE\n",
                Request::GrantAccess(grant_on(5, 4243).force(true)),
            ),
            (b"REVOKE 5 TARGET 4243\n", revoke(Some(5), Some(4243))),
            (b"REVOKE TARGET 4243\n", revoke(None, Some(4243))),
            (b"PS\n", Request::Ps),
            (b"STACK\n", Request::Stack(Scope::Target)),
            (b"STACK 4243\n", Request::Stack(Scope::Process(p(4243)))),
            (b"STACK ALL\n", Request::Stack(Scope::All)),
            (b"STACKS\n", Request::Stacks(Scope::Target)),
            (b"STACKS 0042\n", Request::Stacks(Scope::Process(p(42)))),
            (b"STACKS All\n", Request::Stacks(Scope::All)),
            (b"AGENT_ATTACH\n", Request::AgentAttach(None)),
            (b"Agent_Attach 4243\n", Request::AgentAttach(Some(p(4243)))),
            (b"TASKS\n", Request::Tasks(None)),
            (b"Tasks 4243\n", Request::Tasks(Some(p(4243)))),
            (b"PROFILE 100 0\n", profile(Scope::Target, 100, 0)),
            (
                b"PROFILE 10000 30000 ALL\n",
                profile(Scope::All, 10_000, 30_000),
            ),
            (
                b"Profile 1 5 4243\n",
                profile(Scope::Process(p(4243)), 1, 5),
            ),
            (b"SAMPLES\n", Request::Samples(false)),
            (b"SAMPLES Stop\n", Request::Samples(true)),
        ];
        let lower: &[(&[u8], Request)] = &[
            (b"get_target_pid\n", Request::GetTargetPid),
            (b"grant_access 42\r\n", grant(42)),
            (b"terminate\n", Request::Terminate),
            (b"grant_access 5 force\n", take_over(5)),
            (b"status\n", Request::Status),
            (b"revoke 17\n", revoke(Some(17), None)),
            (b"grant_access\t2147483647\n", grant(2147483647)),
            (
                b"grant_access 5 target 6 force\n",
                Request::GrantAccess(grant_on(5, 6).force(true)),
            ),
            (b"revoke target 6\n", revoke(None, Some(6))),
            (b"ps\n", Request::Ps),
            (b"stack all\n", Request::Stack(Scope::All)),
            (b"stacks 6\n", Request::Stacks(Scope::Process(p(6)))),
            (b"agent_attach\n", Request::AgentAttach(None)),
            (b"agent_attach 0006\r\n", Request::AgentAttach(Some(p(6)))),
            (b"tasks 6\n", Request::Tasks(Some(p(6)))),
            (b"profile 250 1000 all\n", profile(Scope::All, 250, 1000)),
            (b"samples stop\n", Request::Samples(true)),
            (b"audit 60\n", Request::Audit(Some(60))),
        ];
        for (dialect, cases) in [(Dialect::Upper, upper), (Dialect::Lower, lower)] {
            for (line, request) in cases {
                assert_eq!(
                    parse_request(line).unwrap(),
                    (*request, dialect),
                    "{line:?}"
                );
            }
        }
    }

    #[test]
    fn every_request_round_trips() {
        for request in [
            Request::GetTargetPid,
            grant(7),
            revoke(None, None),
            revoke(Some(8), None),
            revoke(None, Some(10)),
            revoke(Some(8), Some(10)),
            take_over(9),
            Request::GrantAccess(grant_on(9, 10)),
            Request::GrantAccess(grant_on(9, 10).force(true)),
            Request::Status,
            Request::Ps,
            Request::Stack(Scope::Target),
            Request::Stack(Scope::Process(p(11))),
            Request::Stack(Scope::All),
            Request::Stacks(Scope::Target),
            Request::Stacks(Scope::Process(p(11))),
            Request::Stacks(Scope::All),
            Request::Terminate,
            Request::AgentAttach(None),
            Request::AgentAttach(Some(p(12))),
            Request::Tasks(None),
            Request::Tasks(Some(p(13))),
            profile(Scope::Target, 100, 0),
            profile(Scope::Process(p(14)), 1, 1),
            profile(Scope::All, 10_000, u64::MAX),
            Request::Samples(false),
            Request::Samples(true),
            Request::Audit(None),
            Request::Audit(Some(3600)),
        ] {
            for dialect in [Dialect::Upper, Dialect::Lower] {
                let line = request.encode(dialect);
                assert_eq!(parse_request(line.as_bytes()).unwrap(), (request, dialect));
            }
        }
    }

    #[test]
    fn request_errors() {
        // Each error, with the lines that get it.
        let cases: &[(ErrorKind, &str, &[&[u8]])] = &[
            (
                ErrorKind::UnknownCommand,
                "Unknown command: FOO",
                &[b"FOO\n"],
            ),
            (
                ErrorKind::UnknownCommand,
                "Unknown command: attach",
                &[b"attach now\n"],
            ),
            (
                ErrorKind::UnknownCommand,
                "Unknown command: GET\\0PID",
                &[b"GET\0PID\n"],
            ),
            (
                ErrorKind::InvalidPid,
                "Invalid PID",
                &[
                    b"GRANT_ACCESS\n",
                    b"GRANT_ACCESS abc\n",
                    b"GRANT_ACCESS -5\n",
                    b"GRANT_ACCESS +5\n",
                    b"GRANT_ACCESS 0\n",
                    b"GRANT_ACCESS 2147483648\n",
                    b"GRANT_ACCESS 99999999999999999999\n",
                    b"GRANT_ACCESS 1 2\n",
                    b"REVOKE x\n",
                    b"GRANT_ACCESS 5 NOW\n",
                    b"GRANT_ACCESS 5 FORCE x\n",
                    b"REVOKE 1 2\n",
                    b"REVOKE 1 2 3\n",
                    b"REVOKE 1 FOO 3\n",
                    b"GRANT_ACCESS 5 TARGET 6 NOW\n",
                    b"GRANT_ACCESS 5 TARGET 6 FORCE x\n",
                    b"GRANT_ACCESS 5 FORCE TARGET 6\n",
                    b"REVOKE 5 TARGET 6 7\n",
                    b"STACK abc\n",
                    b"STACKS -1\n",
                    b"STACK 0\n",
                    b"STACKS ALLE\n",
                    b"AGENT_ATTACH 0\n",
                    b"AGENT_ATTACH ALL\n",
                    b"agent_attach -1\n",
                    b"TASKS ALL\n",
                    b"tasks 0\n",
                ],
            ),
            (
                ErrorKind::InvalidPid,
                "Invalid PID after TARGET",
                &[
                    b"GRANT_ACCESS 5 TARGET\n",
                    b"GRANT_ACCESS 5 TARGET abc\n",
                    b"GRANT_ACCESS 5 TARGET FORCE\n",
                    b"GRANT_ACCESS 5 TARGET 0\n",
                    b"REVOKE TARGET\n",
                    b"REVOKE 5 TARGET x\n",
                    b"revoke target -3\n",
                ],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "STACK takes one argument at most (a PID or ALL)",
                &[b"STACK 5 6\n", b"STACK ALL now\n"],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "STACKS takes one argument at most (a PID or ALL)",
                &[b"STACKS ALL ALL\n"],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "AGENT_ATTACH takes one argument at most (a PID)",
                &[b"AGENT_ATTACH 5 6\n"],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "agent_attach takes one argument at most (a PID)",
                &[b"agent_attach 5 force\n"],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "AUDIT takes a number of seconds or nothing",
                &[
                    b"AUDIT 1h\n",
                    b"audit -5\n",
                    b"AUDIT 99999999999999999999\n",
                ],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "audit takes one argument at most (seconds)",
                &[b"audit 5 6\n"],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "TASKS takes one argument at most (a PID)",
                &[b"TASKS 5 6\n"],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "SAMPLES takes one argument at most (STOP)",
                &[b"SAMPLES STOP now\n"],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "PROFILE takes three arguments at most (a rate, milliseconds, a PID or ALL)",
                &[b"PROFILE 100 1000 ALL 5\n"],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "PS takes no argument",
                &[b"PS ALL\n", b"PS 5\n"],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "STATUS takes no argument",
                &[b"STATUS now\n"],
            ),
            (
                ErrorKind::UnexpectedArgument,
                "TERMINATE takes no argument",
                &[b"TERMINATE now\n"],
            ),
            (ErrorKind::EmptyLine, "Empty request", &[b"\n", b"   \n"]),
            (
                ErrorKind::NotUtf8,
                "Request is not valid UTF-8",
                &[b"\xff\xfe\n"],
            ),
        ];
        for (kind, message, lines) in cases {
            for line in *lines {
                let err = parse_request(line).unwrap_err();
                assert_eq!(err.kind(), *kind, "{line:?}");
                assert_eq!(err.to_string(), *message, "{line:?}");
            }
        }
        let long = vec![b'A'; MAX_LINE];
        assert_eq!(
            parse_request(&long).unwrap_err().kind(),
            ErrorKind::LineTooLong
        );
        let long_unknown = "X".repeat(1000);
        let err = parse_request(long_unknown.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Unknown command: {}...", "X".repeat(64))
        );
        // Up to 64 characters, the command is shown whole.
        let err = parse_request("é".repeat(64).as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("Unknown command: {}", "é".repeat(64))
        );
    }

    #[test]
    fn requests_and_replies_are_shown_as_their_documented_line() {
        assert_eq!(take_over(5).to_string(), "GRANT_ACCESS 5 FORCE");
        assert_eq!(revoke(None, None).to_string(), "REVOKE");
        assert_eq!(
            Request::GrantAccess(grant_on(5, 6).force(true)).to_string(),
            "GRANT_ACCESS 5 TARGET 6 FORCE"
        );
        assert_eq!(
            revoke(Some(5), Some(6)).encode(Dialect::Lower),
            "revoke 5 target 6\n"
        );
        assert_eq!(revoke(None, Some(6)).to_string(), "REVOKE TARGET 6");
        assert_eq!(Request::Stack(Scope::Target).to_string(), "STACK");
        assert_eq!(Request::Stacks(Scope::All).to_string(), "STACKS ALL");
        assert_eq!(
            Request::Stack(Scope::Process(p(7))).encode(Dialect::Lower),
            "stack 7\n"
        );
        assert_eq!(Request::Ps.encode(Dialect::Lower), "ps\n");
        assert_eq!(Request::AgentAttach(None).to_string(), "AGENT_ATTACH");
        assert_eq!(
            Request::AgentAttach(Some(p(7))).encode(Dialect::Lower),
            "agent_attach 7\n"
        );
        let agent = Reply::Agent {
            pid: p(7),
            python: "3.14.0".into(),
        };
        assert_eq!(agent.to_string(), "AGENT 7 3.14.0");
        assert_eq!(agent.encode(Dialect::Lower), "agent 7 3.14.0\n");
        assert_eq!(Reply::TargetPid(p(12)).to_string(), "TARGET_PID 12");
        assert_eq!(Reply::Error("x".into()).to_string(), "ERROR: x");
        assert_eq!(Reply::Ready.to_string(), "READY");
    }

    #[test]
    fn replies_follow_the_dialect() {
        assert_eq!(
            Reply::TargetPid(p(12)).encode(Dialect::Upper),
            "TARGET_PID 12\n"
        );
        assert_eq!(
            Reply::TargetPid(p(12)).encode(Dialect::Lower),
            "target_pid 12\n"
        );
        assert_eq!(Reply::Ready.encode(Dialect::Lower), "ready\n");
        assert_eq!(
            Reply::Error("x".into()).encode(Dialect::Upper),
            "ERROR: x\n"
        );
        assert_eq!(
            Reply::Error("x".into()).encode(Dialect::Lower),
            "error : x\n"
        );
        assert_eq!(
            Reply::Error("a\nb".into()).encode(Dialect::Upper),
            "ERROR: a b\n"
        );
        let err = parse_request(b"bogus").unwrap_err();
        assert_eq!(
            Reply::error(&err).encode(dialect_of_line(b"bogus")),
            "error : Unknown command: bogus\n"
        );
    }

    #[test]
    fn status_round_trips_with_spaces_in_the_command() {
        let status = Status {
            pid: p(42),
            state: "running".into(),
            uptime_secs: 3600,
            granter: "yama".into(),
            holder: Some(p(77)),
            grants: vec![
                TreeGrant {
                    process: p(42),
                    client: p(77),
                },
                TreeGrant {
                    process: p(43),
                    client: p(78),
                },
            ],
            extra: vec![
                ("ptrace_scope".into(), "1".into()),
                ("name".into(), "web 1".into()),
            ],
            command: "python3.14 worker.py --queue a=b".into(),
        };
        let line = Reply::Status(status.clone()).encode(Dialect::Upper);
        assert_eq!(
            line,
            "STATUS pid=42 state=running uptime=3600 granter=yama holder=77 grants=42:77,43:78 ptrace_scope=1 name=web_1 command=python3.14 worker.py --queue a=b\n"
        );
        let mut expected = status.clone();
        expected.extra[1].1 = "web_1".into();
        assert_eq!(
            Reply::parse(&line).unwrap(),
            Reply::Status(expected.clone())
        );
        let lower = Reply::Status(status).encode(Dialect::Lower);
        assert!(lower.starts_with("status pid=42 "));
        assert_eq!(
            Reply::parse(&lower).unwrap(),
            Reply::Status(expected.clone())
        );
        assert_eq!(expected.get("ptrace_scope"), Some("1"));
        let none = Reply::Status(Status {
            holder: None,
            ..Status::new(p(1))
        })
        .encode(Dialect::Upper);
        assert_eq!(
            none,
            "STATUS pid=1 state=- uptime=0 granter=- holder=none grants=none command=\n"
        );
        for bad in [
            "STATUS",
            "STATUS state=running",
            "STATUS pid=x",
            "STATUS pid=1 uptime=soon",
            "STATUS pid=1 junk",
            "STATUS pid=1 grants=5",
            "STATUS pid=1 grants=5:x",
            "STATUS pid=1 grants=5:6,",
            "STATUS pid=1 grants=0:6",
        ] {
            assert_eq!(
                Reply::parse(bad).unwrap_err().kind(),
                ErrorKind::MalformedReply,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn status_extra_fact_ending_in_command() {
        // Found by fuzz/fuzz_targets/round_trip.rs: `command=` inside a key
        // was taken for the command line, and the reply did not parse.
        let status = Status {
            holder: None,
            extra: vec![("last_command".into(), "attach".into())],
            command: "python3.14 app.py".into(),
            ..Status::new(p(42))
        };
        let line = Reply::Status(status.clone()).encode(Dialect::Upper);
        assert_eq!(
            line,
            "STATUS pid=42 state=- uptime=0 granter=- holder=none grants=none last_command=attach command=python3.14 app.py\n"
        );
        let expected = Status {
            state: "-".into(),
            granter: "-".into(),
            ..status
        };
        assert_eq!(Reply::parse(&line).unwrap(), Reply::Status(expected));
    }

    #[test]
    fn grant_pid_names_the_process_of_a_grant_only() {
        assert_eq!(grant(7).grant_pid(), Some(p(7)));
        assert_eq!(take_over(8).grant_pid(), Some(p(8)));
        assert_eq!(Request::GrantAccess(grant_on(8, 9)).grant_pid(), Some(p(8)));
        for other in [
            Request::GetTargetPid,
            Request::Status,
            Request::Ps,
            Request::Stack(Scope::Target),
            Request::Stacks(Scope::Process(p(9))),
            Request::AgentAttach(Some(p(9))),
            revoke(Some(9), None),
            revoke(None, None),
            revoke(Some(9), Some(8)),
            Request::Terminate,
        ] {
            assert_eq!(other.grant_pid(), None, "{other}");
        }
    }

    #[test]
    fn stacks_travel_on_one_line() {
        let text = "Thread 1 \"main\"\n  File \"C:\\x\\n.py\", line 3, in f\n";
        for dialect in [Dialect::Upper, Dialect::Lower] {
            let line = Reply::Stack(text.into()).encode(dialect);
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            assert_eq!(Reply::parse(&line).unwrap(), Reply::Stack(text.into()));
        }
        assert_eq!(Reply::parse("STACK ").unwrap(), Reply::Stack(String::new()));
    }

    #[test]
    fn replies_parse_in_both_dialects() {
        for dialect in [Dialect::Upper, Dialect::Lower] {
            for reply in [
                Reply::TargetPid(p(99)),
                Reply::Ready,
                Reply::Error("Target process not running".into()),
            ] {
                assert_eq!(Reply::parse(&reply.encode(dialect)).unwrap(), reply);
            }
        }
        assert_eq!(
            Reply::parse("ERROR:no space").unwrap(),
            Reply::Error("no space".into())
        );
        for bad in [
            "",
            "READY now",
            "TARGET_PID",
            "TARGET_PID x",
            "ERRORS: x",
            "hello",
        ] {
            assert_eq!(
                Reply::parse(bad).unwrap_err().kind(),
                ErrorKind::MalformedReply,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn agent_replies_carry_the_pid_and_the_rest_of_the_line() {
        let agent = |pid, python: &str| Reply::Agent {
            pid: p(pid),
            python: python.into(),
        };
        for dialect in [Dialect::Upper, Dialect::Lower] {
            for reply in [
                agent(4242, "3.14.0"),
                agent(1, ""),
                agent(5, "3.14.0+ (a build)"),
            ] {
                let line = reply.encode(dialect);
                assert_eq!(line.matches('\n').count(), 1, "{line:?}");
                assert_eq!(Reply::parse(&line).unwrap(), reply, "{line:?}");
            }
        }
        // Line breaks in the version are not the line's.
        let line = agent(5, "3.14\n0\r").encode(Dialect::Upper);
        assert_eq!(line, "AGENT 5 3.14 0 \n");
        assert_eq!(Reply::parse(&line).unwrap(), agent(5, "3.14 0 "));
        assert_eq!(Reply::parse("agent 9").unwrap(), agent(9, ""));
        for bad in [
            "AGENT",
            "AGENT ",
            "AGENT x 3.14",
            "AGENT  5 3.14",
            "AGENT 0 3.14",
            "AGENT:5",
        ] {
            assert_eq!(
                Reply::parse(bad).unwrap_err().kind(),
                ErrorKind::MalformedReply,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_status_without_grants_says_none_and_an_old_one_parses() {
        // A controller of the previous release sends no `grants=`.
        let old = "STATUS pid=42 state=running uptime=1 granter=yama holder=77 command=x";
        let Reply::Status(status) = Reply::parse(old).unwrap() else {
            panic!("not a status");
        };
        assert_eq!((status.holder, status.grants.len()), (Some(p(77)), 0));
        let one = Status {
            grants: vec![TreeGrant {
                process: p(43),
                client: p(9),
            }],
            ..Status::new(p(42))
        };
        let line = Reply::Status(one.clone()).encode(Dialect::Lower);
        assert!(line.contains(" holder=none grants=43:9 "), "{line}");
        let Reply::Status(back) = Reply::parse(&line).unwrap() else {
            panic!("not a status");
        };
        assert_eq!(back.grants, one.grants);
    }

    #[test]
    fn ps_and_stacks_replies_round_trip_as_one_line_of_json() {
        use crate::stacks::{Activity, Frame, ThreadStack};
        use crate::tree::TreeProcess;

        let mut target = TreeProcess::new(p(4242));
        target.parent = Some(p(1));
        target.target = true;
        target.state = 'S';
        target.threads = 3;
        target.cpu_percent = 12.5;
        target.rss_bytes = 1 << 20;
        target.python = Some("3.14.0".into());
        target.holder = Some(p(77));
        target.command = "python3.14 -m gunicorn -w 2 app:app\n\"quoted\"".into();
        let mut worker = TreeProcess::new(p(4243));
        worker.parent = Some(p(4242));
        worker.state = 'R';
        worker.command = "gunicorn: worker [app]".into();
        let tree = Tree::new(vec![target, worker], true);

        let mut thread = ThreadStack::new(4243);
        thread.name = Some("main\\thread".into());
        thread.main = true;
        thread.activity = Some(Activity::Idle);
        thread.gil = Some(false);
        thread
            .frames
            .push(Frame::new("handle", "/srv/app.py", Some(12)));
        thread
            .frames
            .push(Frame::new("<module>", "C:\\x\n.py", None));
        let mut stacks = ProcessStacks::new(p(4243));
        stacks.parent = Some(p(4242));
        stacks.python = Some("3.14.0".into());
        stacks.threads.push(thread);
        let mut skipped = ProcessStacks::new(p(4244));
        skipped.skipped = Some("not a Python process".into());
        skipped.command = "sh -c 'sleep 1'".into();
        let mut task = crate::tasks::AsyncTask::new(0x7f00_dead_beef, "worker\n\"1\"");
        task.coroutine_stack
            .push(Frame::new("main", "/srv/app.py", Some(3)));
        task.awaited_by.push(0x7f00_0000_0010);
        task.thread_id = 4243;
        let mut tasks = crate::tasks::AsyncTasks::new(p(4243));
        tasks.tasks.push(task);
        tasks.running_loops.push(4243);
        tasks.note = Some("partial".into());
        let mut samples = crate::profile::Samples::default();
        samples.frames.push(Frame::new("main", "app\n.py", Some(1)));
        let mut stack = crate::profile::SampledStack::new(p(4243), 4244, true, vec![0], 7);
        stack.thread_name = Some("w\"orker".into());
        samples.stacks.push(stack);
        samples.ended = Some("stopped by the client".into());
        (
            samples.due,
            samples.taken,
            samples.dropped,
            samples.elapsed_ms,
        ) = (10, 9, 1, 100);

        for dialect in [Dialect::Upper, Dialect::Lower] {
            for reply in [
                Reply::Ps(tree.clone()),
                Reply::Ps(Tree::default()),
                Reply::Stacks(vec![stacks.clone(), skipped.clone()]),
                Reply::Stacks(Vec::new()),
                Reply::Tasks(tasks.clone()),
                Reply::Tasks(crate::tasks::AsyncTasks::new(p(9))),
                Reply::Samples(samples.clone()),
                Reply::Samples(crate::profile::Samples::default()),
            ] {
                let line = reply.encode(dialect);
                assert_eq!(line.matches('\n').count(), 1, "{line:?}");
                assert_eq!(Reply::parse(&line).unwrap(), reply, "{line:?}");
            }
        }
        assert!(Reply::Ps(Tree::default())
            .encode(Dialect::Lower)
            .starts_with("ps {"));
        assert!(Reply::Stacks(Vec::new())
            .encode(Dialect::Upper)
            .starts_with("STACKS ["));
        // Facts the controller fills in may be left out by an older sender.
        let line = r#"PS {"processes":[{"pid":7,"parent":null,"state":"S","threads":1,"cpu_percent":0.0,"rss_bytes":0,"uptime_secs":0,"uid":0,"python":null,"command":""}],"subreaper":false}"#;
        let Reply::Ps(tree) = Reply::parse(line).unwrap() else {
            panic!("not a tree");
        };
        assert_eq!(tree.processes[0].holder, None);
        assert!(!tree.processes[0].target);
        for bad in [
            "PS",
            "PS {",
            "PS []",
            "STACKS {}",
            "STACKS [{\"pid\":0}]",
            "STACKS",
            "TASKS",
            "TASKS []",
            "SAMPLES",
            "SAMPLES []",
            r#"PS {"processes":[{"pid":-1}],"subreaper":false}"#,
        ] {
            assert_eq!(
                Reply::parse(bad).unwrap_err().kind(),
                ErrorKind::MalformedReply,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn line_buffer_splits_and_limits() {
        let mut lines = LineBuffer::new();
        lines.extend(b"a\nb\n\nc");
        assert_eq!(lines.next_line().unwrap().unwrap(), b"a\n");
        assert_eq!(lines.next_line().unwrap().unwrap(), b"b\n");
        assert_eq!(lines.next_line().unwrap().unwrap(), b"\n");
        assert!(lines.next_line().is_none());
        assert!(lines.has_partial_line());

        // An over-long line is reported once, as soon as it is too long, and
        // dropped up to its newline; the next line is intact.
        let mut lines = LineBuffer::new();
        lines.extend(&vec![b'x'; MAX_LINE + 10]);
        assert_eq!(
            lines.next_line().unwrap().unwrap_err().kind(),
            ErrorKind::LineTooLong
        );
        assert!(lines.next_line().is_none());
        lines.extend(&vec![b'x'; 3 * MAX_LINE]);
        assert!(lines.next_line().is_none());
        assert!(lines.buf.len() <= MAX_LINE);
        lines.extend(b"xx\nREADY\n");
        assert_eq!(lines.next_line().unwrap().unwrap(), b"READY\n");
        assert!(lines.next_line().is_none());
        assert!(!lines.has_partial_line());

        // Exactly MAX_LINE bytes with the newline is accepted; one more is not.
        let mut ok = vec![b'y'; MAX_LINE - 1];
        ok.push(b'\n');
        let mut lines = LineBuffer::new();
        lines.extend(&ok);
        assert_eq!(lines.next_line().unwrap().unwrap().len(), MAX_LINE);
        let mut bad = vec![b'y'; MAX_LINE];
        bad.push(b'\n');
        lines.extend(&bad);
        assert!(lines.next_line().unwrap().is_err());
        assert!(lines.next_line().is_none());
    }

    #[test]
    fn reply_buffers_take_long_lines_up_to_their_own_limit() {
        let mut long = vec![b'z'; 100_000];
        long.push(b'\n');
        let mut lines = LineBuffer::for_replies();
        lines.extend(&long);
        assert_eq!(lines.next_line().unwrap().unwrap().len(), 100_001);
        let mut lines = LineBuffer::for_replies();
        lines.extend(&vec![b'z'; MAX_REPLY]);
        let err = lines.next_line().unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LineTooLong);
        assert_eq!(
            err.to_string(),
            format!("Reply longer than {MAX_REPLY} bytes")
        );
    }
}
