//! The audit trail: who looked inside which process, when, how, and for
//! how long.
//!
//! The controller's event loop drafts an [`AuditRecord`] for every grant,
//! refusal, revoke, stack dump, profile, `STATUS`, `TERMINATE` and attach
//! through the agent, and hands it, without waiting, to an audit thread of
//! its own. That thread completes the record with what it takes time to
//! learn (the verified peer's executable, command line and user name,
//! through [`Audit::describe`]), keeps the newest records in memory (for
//! `AUDIT`), and gives each to [`Audit::record`] (heli-transport's
//! `AuditLog` appends it to a JSON Lines file).
//!
//! The loop never blocks on either: a stuck file (a hung NFS mount) or a
//! peer whose command line cannot be read holds up the audit thread only.
//! Records the thread has no room for are counted, warned about and said
//! in `STATUS` (`audit=failing:...`): none is lost silently.

use std::io;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::process::{Pid, ProcessId};

/// Where the controller's audit records go: a file, a log service, a test's
/// list.
///
/// Its calls are made on the controller's audit thread, one at a time,
/// never on the event loop: a call that blocks delays the records after it
/// (the loop queues up to [`AUDIT_QUEUE`] of them, then counts those it
/// drops), never the service.
///
/// # Examples
///
/// ```
/// use heli_core::{Audit, AuditRecord};
///
/// /// Keeps the JSON lines it is given.
/// #[derive(Default)]
/// struct Lines(Vec<String>);
/// impl Audit for Lines {
///     fn record(&mut self, record: &AuditRecord) -> std::io::Result<()> {
///         self.0.push(record.to_json_line());
///         Ok(())
///     }
/// }
/// let mut lines = Lines::default();
/// lines.record(&AuditRecord::new(heli_core::AuditEvent::Status))?;
/// assert!(lines.0[0].contains(r#""event":"status""#));
/// // By default an audit cannot tell what a process runs.
/// let me = heli_core::ProcessId { pid: heli_core::Pid::this(), start_time: 1 };
/// assert!(lines.describe(me).is_none());
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Audit {
    /// Records `record` for good (for a file: written and flushed).
    ///
    /// # Errors
    ///
    /// When it could not be recorded (a full disk): the controller logs it
    /// to stderr, says `audit=failing:<reason>` in `STATUS` until a record
    /// succeeds again, and runs on.
    fn record(&mut self, record: &AuditRecord) -> io::Result<()>;

    /// What can be learnt of the verified process `id`: its executable,
    /// command line and user name, or `None` (the default) when this audit
    /// cannot tell. Called on the audit thread; an implementation must
    /// bound how long it waits (reading a hostile process's command line
    /// can block on its memory map's lock), and must not describe a process
    /// that reused `id`'s pid.
    fn describe(&mut self, id: ProcessId) -> Option<ProcessFacts> {
        let _ = id;
        None
    }
}

/// Records nothing: the [`Controller`](crate::Controller)'s default (the
/// newest records are still kept in memory for `AUDIT`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoAudit;

impl Audit for NoAudit {
    fn record(&mut self, _: &AuditRecord) -> io::Result<()> {
        Ok(())
    }
}

/// Implements [`Audit`] for wrappers of an audit (`&mut U`, `Box<U>`) by
/// handing every call to the audit they hold.
macro_rules! forward_audit {
    ($($wrapper:ty),*) => {$(
        impl<U: Audit + ?Sized> Audit for $wrapper {
            fn record(&mut self, record: &AuditRecord) -> io::Result<()> {
                (**self).record(record)
            }
            fn describe(&mut self, id: ProcessId) -> Option<ProcessFacts> {
                (**self).describe(id)
            }
        }
    )*};
}

forward_audit!(&mut U, Box<U>);

/// `Some` audit records what it holds; `None` records nothing, as
/// [`NoAudit`] does.
impl<U: Audit> Audit for Option<U> {
    fn record(&mut self, record: &AuditRecord) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), |audit| audit.record(record))
    }
    fn describe(&mut self, id: ProcessId) -> Option<ProcessFacts> {
        self.as_mut().and_then(|audit| audit.describe(id))
    }
}

/// How many drafted records the loop queues for the audit thread before
/// it counts the next ones as lost (the thread is stuck on the file).
pub const AUDIT_QUEUE: usize = 1024;

/// What [`Audit::describe`] learnt of a process.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessFacts {
    /// Its user's name, if the user database names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Its executable (`/proc/PID/exe`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Its command line, arguments joined by spaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Why a fact is missing (e.g. the command line could not be read in
    /// time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What happened, in an [`AuditRecord`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditEvent {
    /// A grant was asked for (`GRANT_ACCESS`): with `ok`, the grantee may
    /// attach from now on (an attach's start).
    Grant,
    /// A request was refused by the policy (or for being busy).
    Refusal,
    /// A grant ended (an attach's end): [`AuditRecord::cause`] says why,
    /// [`AuditRecord::duration_ms`] how long it lasted.
    Revoke,
    /// `AGENT_ATTACH`: pdb was started in a process through its agent.
    AgentAttach,
    /// `STACK`, `STACKS`, `PS` or `TASKS`: a read of the tree.
    StackDump,
    /// `PROFILE`: a profile started.
    ProfileStart,
    /// A profile ended (collected for the last time, or its connection
    /// closed).
    ProfileEnd,
    /// `STATUS`.
    Status,
    /// `TERMINATE`.
    Terminate,
    /// The controller ended the debuggers of a client still debugging
    /// after its time was up (see
    /// [`Controller::max_grant`](crate::Controller::max_grant)):
    /// [`AuditRecord::reason`] says how many processes got which signal.
    DebuggersEnded,
}

/// Why a grant ended, in a [`AuditEvent::Revoke`] record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RevokeCause {
    /// `REVOKE` from its client.
    Request,
    /// Its connection closed.
    Disconnect,
    /// Its time ran out (a time-limited grant).
    Expired,
    /// The process it was on exited (or the target's whole tree, with the
    /// target).
    ProcessExit,
    /// Another client took it over (`FORCE`).
    TakenOver,
}

/// How a request ended, in an [`AuditRecord`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditResult {
    /// Done.
    Ok,
    /// The policy said no.
    Refused,
    /// Allowed, but it did not work.
    Failed,
}

/// Who asked, as far as the transport verified it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditPeer {
    /// Whether the transport verified it (a Unix socket's `SO_PEERCRED`);
    /// `false` for the FIFO transport: then only what the request claimed
    /// is given ([`claimed_pid`](AuditPeer::claimed_pid)), never guessed.
    pub verified: bool,
    /// Its user id (verified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Its process (verified), when visible from here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<Pid>,
    /// Its start time, in clock ticks after boot (with `pid`, its identity).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// Its user name, executable and command line.
    #[serde(flatten)]
    pub facts: ProcessFacts,
    /// The pid the request named as its client, unverified (FIFO).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed_pid: Option<Pid>,
}

/// A process a record is about, by identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AuditProcess {
    /// Its pid.
    pub pid: u32,
    /// Its start time (clock ticks after boot), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// Its executable and command line, when learnt (a grantee's).
    #[serde(flatten)]
    pub facts: ProcessFacts,
}

impl AuditProcess {
    /// The process `id`, facts unknown yet.
    pub fn of(id: ProcessId) -> AuditProcess {
        AuditProcess {
            pid: id.pid.get(),
            start_time: Some(id.start_time),
            facts: ProcessFacts::default(),
        }
    }
}

/// One audit record: one JSON object on one line
/// ([`to_json_line`](AuditRecord::to_json_line)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AuditRecord {
    /// When, in UTC with milliseconds (RFC 3339:
    /// `2026-12-02T15:20:23.042Z`).
    pub time: String,
    /// This controller's run: `<pid>@<start time>` of the controller, so
    /// controllers sharing a file are told apart.
    pub session: String,
    /// The connection the request came on (0: none, FIFO).
    pub connection: u64,
    /// What happened.
    pub event: AuditEvent,
    /// The request, as the protocol writes it (none for what the
    /// controller did of its own: a revoke at a disconnect or exit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Who asked (or whose grant ended).
    pub peer: AuditPeer,
    /// The process granted the right to attach (a grant's, a revoke's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grantee: Option<AuditProcess>,
    /// The process of the tree looked into (or the target).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<AuditProcess>,
    /// How: the granter's name (`yama`, `noop`) for a grant, `agent` for an
    /// attach through the agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// How it ended.
    pub result: AuditResult,
    /// Why a grant ended (revokes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<RevokeCause>,
    /// How long it lasted, in milliseconds: a grant's life at its revoke, a
    /// profile's at its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it was refused or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AuditRecord {
    /// A record of `event` now, with result `ok` and nothing else known.
    pub fn new(event: AuditEvent) -> AuditRecord {
        AuditRecord {
            time: rfc3339_millis(SystemTime::now()),
            session: String::new(),
            connection: 0,
            event,
            request: None,
            peer: AuditPeer::default(),
            grantee: None,
            process: None,
            method: None,
            result: AuditResult::Ok,
            cause: None,
            duration_ms: None,
            reason: None,
        }
    }

    /// The record as one line of JSON, newline included.
    pub fn to_json_line(&self) -> String {
        // Nothing here can fail to serialize: strings, numbers, enums.
        let mut line = serde_json::to_string(self).unwrap_or_else(|err| {
            format!(
                "{{\"event\":\"unserializable\",\"reason\":{:?}}}",
                err.to_string()
            )
        });
        line.push('\n');
        line
    }
}

/// `at` in UTC as RFC 3339 with milliseconds (`2026-12-02T15:20:23.042Z`).
pub fn rfc3339_millis(at: SystemTime) -> String {
    match jiff::Timestamp::try_from(at) {
        Ok(at) => at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Err(_) => "1970-01-01T00:00:00.000Z".to_owned(),
    }
}

/// `duration` in whole milliseconds, as records give it.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Count(usize, usize);
    impl Audit for Count {
        fn record(&mut self, _: &AuditRecord) -> io::Result<()> {
            self.0 += 1;
            Err(io::Error::other("full"))
        }
        fn describe(&mut self, _: ProcessId) -> Option<ProcessFacts> {
            self.1 += 1;
            Some(ProcessFacts {
                exe: Some("/bin/x".into()),
                ..ProcessFacts::default()
            })
        }
    }

    fn use_all(audit: &mut dyn Audit) {
        let record = AuditRecord::new(AuditEvent::Status);
        assert_eq!(audit.record(&record).unwrap_err().to_string(), "full");
        let id = ProcessId {
            pid: Pid::this(),
            start_time: 1,
        };
        assert_eq!(audit.describe(id).unwrap().exe.as_deref(), Some("/bin/x"));
    }

    #[test]
    fn wrappers_forward_every_call() {
        let mut count = Count::default();
        use_all(&mut &mut count);
        assert_eq!((count.0, count.1), (1, 1));
        let mut boxed: Box<Count> = Box::default();
        use_all(&mut boxed);
        assert_eq!((boxed.0, boxed.1), (1, 1));
        let mut some = Some(Count::default());
        use_all(&mut some);
        let none: &mut Option<Count> = &mut None;
        assert!(none.record(&AuditRecord::new(AuditEvent::Status)).is_ok());
        let id = ProcessId {
            pid: Pid::this(),
            start_time: 1,
        };
        assert!(none.describe(id).is_none());
        assert!(NoAudit.record(&AuditRecord::new(AuditEvent::Grant)).is_ok());
    }

    #[test]
    fn a_record_is_one_line_of_json_with_only_what_is_known() {
        let mut record = AuditRecord::new(AuditEvent::Revoke);
        record.cause = Some(RevokeCause::Expired);
        record.duration_ms = Some(1500);
        record.peer.claimed_pid = Pid::new(77);
        let line = record.to_json_line();
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["event"], "revoke");
        assert_eq!(value["cause"], "expired");
        assert_eq!(value["duration_ms"], 1500);
        assert_eq!(value["result"], "ok");
        assert_eq!(
            value["peer"],
            serde_json::json!({"verified": false, "claimed_pid": 77})
        );
        assert!(value.get("reason").is_none() && value.get("grantee").is_none());
    }

    #[test]
    fn times_are_utc_with_milliseconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_230_823_042);
        assert_eq!(rfc3339_millis(at), "2026-12-02T17:00:23.042Z");
        assert_eq!(
            rfc3339_millis(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }
}
