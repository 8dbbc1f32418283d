//! The controller's side of the [audit trail](crate::audit): the loop
//! drafts records and hands them over without waiting; an audit thread
//! completes them, keeps the newest in memory and records them.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use log::warn;

use crate::audit::{
    millis, Audit, AuditEvent, AuditPeer, AuditProcess, AuditRecord, AuditResult, ProcessFacts,
    RevokeCause, AUDIT_QUEUE,
};
use crate::authorize::GrantRecord;
use crate::process::ProcessId;
use crate::protocol::MAX_REPLY;
use crate::transport::Peer;

/// How many records the controller keeps in memory for `AUDIT`.
pub(crate) const RECENT_RECORDS: usize = 10_000;

/// How many bytes of records it keeps in memory at most: what one reply
/// holds.
pub(crate) const RECENT_BYTES: usize = MAX_REPLY - 4096;

/// How many processes' facts the audit thread remembers (a peer asking
/// again is not read again, except at a grant).
const FACTS_CACHE: usize = 256;

/// How long the controller waits at its end for the audit thread to
/// record what is queued.
const FLUSH_AT_END: Duration = Duration::from_secs(2);

/// What the loop and the audit thread share.
#[derive(Debug, Default)]
struct Shared {
    /// The newest records, oldest first, with when they were made.
    recent: Mutex<Recent>,
    /// Why the last record failed, if it did.
    failing: Mutex<Option<String>>,
    /// Records dropped because the audit thread's queue was full.
    lost: AtomicU64,
    /// Records that [`Audit::record`] failed to record (they are in
    /// memory, for `AUDIT`).
    unrecorded: AtomicU64,
}

#[derive(Debug, Default)]
struct Recent {
    lines: VecDeque<(SystemTime, String)>,
    bytes: usize,
}

impl Recent {
    /// Keeps `line`, made `at`, and forgets the oldest past `most` lines
    /// or `room` bytes.
    fn push(&mut self, at: SystemTime, line: String, most: usize, room: usize) {
        self.bytes += line.len();
        self.lines.push_back((at, line));
        while self.lines.len() > most || self.bytes > room {
            match self.lines.pop_front() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    /// The newest lines made at `from` or later (all without), oldest
    /// first, as many as fit `room` bytes with a separator each.
    fn newest(&self, from: Option<SystemTime>, room: usize) -> Vec<&str> {
        let mut room = room;
        let mut lines: Vec<&str> = Vec::new();
        for (at, line) in self.lines.iter().rev() {
            if from.is_some_and(|from| *at < from) || line.len() + 1 > room {
                break;
            }
            room -= line.len() + 1;
            lines.push(line);
        }
        lines.reverse();
        lines
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The loop's end of the audit trail.
#[derive(Debug)]
pub(crate) struct Auditing {
    tx: Option<Sender<AuditRecord>>,
    shared: Arc<Shared>,
    thread: Option<(thread::JoinHandle<()>, Receiver<()>)>,
    /// `<pid>@<start time>` of this controller.
    session: String,
    /// The granter's name: how grants are made.
    method: String,
    /// When each grant in force started, and who asked for it, by (its
    /// process, its holder).
    grants: HashMap<(ProcessId, ProcessId), (Instant, Peer)>,
    /// When each connection's profile started.
    profiles: HashMap<u64, Instant>,
    /// Whether the loss of records was warned about since the last
    /// record that was queued.
    warned_lost: bool,
}

impl Auditing {
    /// Starts the audit thread, recording with `audit`.
    pub(crate) fn start<U: Audit + Send + 'static>(
        audit: U,
        session: String,
        method: String,
    ) -> io::Result<Auditing> {
        let (tx, rx) = bounded(AUDIT_QUEUE);
        let (done_tx, done_rx) = bounded(1);
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = thread::Builder::new()
            .name("heli-audit".into())
            .spawn(move || {
                record_all(audit, &rx, &theirs);
                let _ = done_tx.send(());
            })?;
        Ok(Auditing {
            tx: Some(tx),
            shared,
            thread: Some((thread, done_rx)),
            session,
            method,
            grants: HashMap::new(),
            profiles: HashMap::new(),
            warned_lost: false,
        })
    }

    /// A record of `event` asked by `peer`, with what the transport
    /// verified of it.
    pub(crate) fn draft(&self, event: AuditEvent, peer: &Peer) -> AuditRecord {
        let mut record = AuditRecord::new(event);
        record.session.clone_from(&self.session);
        record.connection = peer.connection;
        record.peer = match peer.credentials {
            Some(credentials) => AuditPeer {
                verified: true,
                uid: Some(credentials.uid),
                pid: credentials.process.map(|id| id.pid),
                start_time: credentials.process.map(|id| id.start_time),
                ..AuditPeer::default()
            },
            None => AuditPeer::default(),
        };
        record
    }

    /// The granter's name.
    pub(crate) fn method(&self) -> &str {
        &self.method
    }

    /// Hands `record` to the audit thread without waiting: one it has no
    /// room for is counted as lost, and warned about.
    pub(crate) fn send(&mut self, record: AuditRecord) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(record) {
            Ok(()) => self.warned_lost = false,
            Err(TrySendError::Full(record) | TrySendError::Disconnected(record)) => {
                let lost = self.shared.lost.fetch_add(1, Ordering::Relaxed) + 1;
                if !self.warned_lost {
                    warn!(
                        "audit: the audit thread is stuck (the audit log does not take \
                         writes): a {:?} record is lost ({lost} in all; STATUS says audit_lost)",
                        record.event
                    );
                    self.warned_lost = true;
                }
            }
        }
    }

    /// Notes that `grant`, asked for by `peer`, is in force from now; a
    /// grant its holder asks for again while it is in force goes on from
    /// its first start (its revoke says how long the access lasted in all,
    /// not since the last request).
    pub(crate) fn grant_started(&mut self, grant: &GrantRecord, peer: Peer) {
        self.grants
            .entry((grant.process, grant.holder))
            .or_insert_with(|| (Instant::now(), peer));
    }

    /// Records that `grant` ended for `cause`, with how long it lasted;
    /// a grant whose start was not noted (never given to its client) or
    /// whose end was recorded already, is not recorded.
    pub(crate) fn grant_ended(&mut self, grant: &GrantRecord, cause: RevokeCause) {
        let Some((started, peer)) = self.grants.remove(&(grant.process, grant.holder)) else {
            return;
        };
        let mut record = self.draft(AuditEvent::Revoke, &peer);
        record.cause = Some(cause);
        record.grantee = Some(AuditProcess::of(grant.holder));
        record.process = Some(AuditProcess::of(grant.process));
        record.method = Some(self.method.clone());
        record.duration_ms = Some(millis(started.elapsed()));
        self.send(record);
    }

    /// Records that the controller sent `signal` to the debuggers of the
    /// verified client `holder` (on `connection`), whose time was up:
    /// `ended` is how many processes got it, or why none could.
    pub(crate) fn debuggers_ended(
        &mut self,
        holder: ProcessId,
        connection: u64,
        signal: i32,
        ended: &io::Result<usize>,
    ) {
        let mut record = AuditRecord::new(AuditEvent::DebuggersEnded);
        record.session.clone_from(&self.session);
        record.connection = connection;
        record.peer = AuditPeer {
            verified: true,
            pid: Some(holder.pid),
            start_time: Some(holder.start_time),
            ..AuditPeer::default()
        };
        record.grantee = Some(AuditProcess::of(holder));
        match ended {
            Ok(count) => {
                record.reason = Some(format!(
                    "its time was up: {count} of its processes sent signal {signal}"
                ));
            }
            Err(err) => {
                record.result = AuditResult::Failed;
                record.reason = Some(format!(
                    "its time was up, its debuggers cannot be ended: {err}"
                ));
            }
        }
        self.send(record);
    }

    /// Notes that a profile started on `connection`.
    pub(crate) fn profile_started(&mut self, connection: u64) {
        self.profiles.insert(connection, Instant::now());
    }

    /// How long the profile of `connection` ran, if one was noted; it is
    /// forgotten.
    pub(crate) fn profile_ended(&mut self, connection: u64) -> Option<u64> {
        self.profiles
            .remove(&connection)
            .map(|at| millis(at.elapsed()))
    }

    /// The newest records made within `since` (all without), as JSON
    /// values, oldest first, as many as fit in a reply.
    pub(crate) fn recent(&self, since: Option<Duration>) -> Vec<serde_json::Value> {
        let from = since.and_then(|since| SystemTime::now().checked_sub(since));
        let recent = lock(&self.shared.recent);
        recent
            .newest(from, RECENT_BYTES)
            .into_iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// `audit=ok` or `audit=failing:<why>`, and `audit_lost=<n>` once
    /// records were lost: for `STATUS`.
    pub(crate) fn status_fields(&self) -> Vec<(String, String)> {
        let word = match &*lock(&self.shared.failing) {
            None => "ok".to_owned(),
            Some(why) => format!("failing:{why}"),
        };
        let mut fields = vec![("audit".to_owned(), word)];
        let lost = self.shared.lost.load(Ordering::Relaxed);
        if lost > 0 {
            fields.push(("audit_lost".to_owned(), lost.to_string()));
        }
        let unrecorded = self.shared.unrecorded.load(Ordering::Relaxed);
        if unrecorded > 0 {
            fields.push(("audit_unrecorded".to_owned(), unrecorded.to_string()));
        }
        fields
    }
}

impl Drop for Auditing {
    /// Lets the audit thread record what is queued, for a short while at
    /// most (a stuck file must not keep the controller from ending).
    fn drop(&mut self) {
        self.tx = None;
        if let Some((thread, done)) = self.thread.take() {
            match done.recv_timeout(FLUSH_AT_END) {
                Ok(()) => {
                    let _ = thread.join();
                }
                Err(_) => warn!(
                    "audit: the audit thread did not finish within {FLUSH_AT_END:?}: \
                     the last records may not be recorded"
                ),
            }
        }
    }
}

/// The audit thread: completes, keeps and records every record until the
/// loop's end is dropped.
fn record_all<U: Audit>(mut audit: U, rx: &Receiver<AuditRecord>, shared: &Shared) {
    let mut facts: HashMap<ProcessId, Option<ProcessFacts>> = HashMap::new();
    // `anew`: not from the cache (a process that `exec`s keeps its pid and
    // start time, so the cache would tell what it ran before).
    let mut describe = |audit: &mut U, id: ProcessId, anew: bool| {
        if facts.len() >= FACTS_CACHE {
            facts.clear();
        }
        if anew {
            facts.remove(&id);
        }
        facts
            .entry(id)
            .or_insert_with(|| audit.describe(id))
            .clone()
            .unwrap_or_default()
    };
    for mut record in rx {
        // A grant is described anew: what the debugger granted runs at its
        // start matters more than a thread less.
        let anew = record.event == AuditEvent::Grant;
        if let (Some(pid), Some(start_time)) = (record.peer.pid, record.peer.start_time) {
            record.peer.facts = describe(&mut audit, ProcessId { pid, start_time }, anew);
        }
        // The grantee's facts at its grant (the attach's start): what
        // debugger, with what command line.
        if let Some(grantee) = record.grantee.as_mut() {
            let id = crate::process::Pid::new(grantee.pid)
                .zip(grantee.start_time)
                .map(|(pid, start_time)| ProcessId { pid, start_time });
            if let (Some(id), AuditEvent::Grant) = (id, record.event) {
                // Described with the peer just now when it is the peer.
                let same = record.peer.pid == Some(id.pid)
                    && record.peer.start_time == Some(id.start_time);
                grantee.facts = describe(&mut audit, id, !same);
            }
        }
        let line = record.to_json_line();
        {
            let kept = line.trim_end().to_owned();
            lock(&shared.recent).push(SystemTime::now(), kept, RECENT_RECORDS, RECENT_BYTES);
        }
        let result = audit.record(&record);
        let mut failing = lock(&shared.failing);
        match result {
            Ok(()) => {
                if let Some(why) = failing.take() {
                    let unrecorded = shared.unrecorded.load(Ordering::Relaxed);
                    log::info!(
                        "audit: records are recorded again (after: {why}; {unrecorded} \
                         records could not be recorded in all)"
                    );
                }
            }
            Err(err) => {
                shared.unrecorded.fetch_add(1, Ordering::Relaxed);
                if failing.is_none() {
                    warn!("audit: cannot record a {:?} record: {err} (the controller runs on; STATUS says audit=failing)", record.event);
                }
                *failing = Some(err.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::NoAudit;

    #[test]
    fn the_newest_records_are_kept_within_their_count_and_bytes() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs| start + Duration::from_secs(secs);
        let mut recent = Recent::default();
        for n in 0..5u64 {
            // Lines of 10 bytes: "record n.." padded.
            recent.push(at(n), format!("record {n:03}"), 4, 35);
        }
        // 4 at most, 35 bytes at most: the 3 newest (30 bytes).
        assert_eq!(recent.bytes, 30);
        assert_eq!(
            recent.newest(None, 100),
            ["record 002", "record 003", "record 004"]
        );
        // Made at 3 s or later; exactly at the boundary is kept.
        assert_eq!(
            recent.newest(Some(at(3)), 100),
            ["record 003", "record 004"]
        );
        // Room for two lines and their separators (11 bytes each): the
        // newest two; a byte less, one.
        assert_eq!(recent.newest(None, 22), ["record 003", "record 004"]);
        assert_eq!(recent.newest(None, 21), ["record 004"]);
        assert_eq!(recent.newest(None, 10), Vec::<&str>::new());
        // A count limit alone.
        let mut few = Recent::default();
        for n in 0..3u64 {
            few.push(at(n), format!("record {n:03}"), 2, 1000);
        }
        assert_eq!((few.lines.len(), few.bytes), (2, 20));
    }

    #[test]
    fn status_says_lost_and_unrecorded_records_once_there_are_any() {
        let auditing = Auditing::start(NoAudit, "1@1".into(), "test".into()).unwrap();
        assert_eq!(
            auditing.status_fields(),
            [("audit".to_owned(), "ok".to_owned())]
        );
        auditing.shared.lost.store(1, Ordering::Relaxed);
        auditing.shared.unrecorded.store(2, Ordering::Relaxed);
        *lock(&auditing.shared.failing) = Some("disk full".into());
        assert_eq!(
            auditing.status_fields(),
            [
                ("audit".to_owned(), "failing:disk full".to_owned()),
                ("audit_lost".to_owned(), "1".to_owned()),
                ("audit_unrecorded".to_owned(), "2".to_owned()),
            ]
        );
    }

    #[test]
    fn what_is_kept_fits_one_audit_reply() {
        let mut recent = Recent::default();
        for n in 0..6000 {
            let line = format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(1000));
            recent.push(SystemTime::now(), line, RECENT_RECORDS, RECENT_BYTES);
        }
        let values: Vec<serde_json::Value> = recent
            .newest(None, RECENT_BYTES)
            .into_iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert!(values.len() > 3000, "{}", values.len());
        let reply = crate::protocol::Reply::Audit(values).encode(crate::protocol::Dialect::Upper);
        assert!(reply.len() <= MAX_REPLY, "{}", reply.len());
    }

    /// An audit that counts what it is asked to describe, and records
    /// slowly when told to.
    #[derive(Clone, Default)]
    struct Counting {
        described: Arc<Mutex<Vec<ProcessId>>>,
        recorded: Arc<AtomicU64>,
        slow: Option<Duration>,
    }

    impl Audit for Counting {
        fn record(&mut self, _: &AuditRecord) -> io::Result<()> {
            if let Some(slow) = self.slow {
                thread::sleep(slow);
            }
            self.recorded.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn describe(&mut self, id: ProcessId) -> Option<ProcessFacts> {
            lock(&self.described).push(id);
            None
        }
    }

    fn id(pid: u32, start_time: u64) -> ProcessId {
        ProcessId {
            pid: crate::process::Pid::new(pid).unwrap(),
            start_time,
        }
    }

    fn from(process: ProcessId) -> Peer {
        Peer {
            connection: 1,
            credentials: Some(crate::transport::Credentials {
                uid: 1000,
                process: Some(process),
            }),
        }
    }

    #[test]
    fn a_process_is_described_once_but_anew_at_its_grant() {
        let audit = Counting::default();
        let mut auditing = Auditing::start(audit.clone(), "1@1".into(), "test".into()).unwrap();
        let (client, child) = (id(77, 500), id(78, 500));
        // Asking again: described once.
        for _ in 0..3 {
            let record = auditing.draft(AuditEvent::Status, &from(client));
            auditing.send(record);
        }
        let record = auditing.draft(AuditEvent::Status, &from(child));
        auditing.send(record);
        // Its own grant: the client anew, not twice.
        let mut grant = auditing.draft(AuditEvent::Grant, &from(client));
        grant.grantee = Some(AuditProcess::of(client));
        auditing.send(grant);
        // A grant for its child (the same start time, another pid): the
        // child anew too.
        let mut grant = auditing.draft(AuditEvent::Grant, &from(client));
        grant.grantee = Some(AuditProcess::of(child));
        auditing.send(grant);
        drop(auditing);
        assert_eq!(audit.recorded.load(Ordering::SeqCst), 6);
        assert_eq!(
            *lock(&audit.described),
            [client, child, client, client, child]
        );
    }

    #[test]
    fn the_end_waits_for_the_records_queued() {
        let audit = Counting {
            slow: Some(Duration::from_millis(20)),
            ..Counting::default()
        };
        let mut auditing = Auditing::start(audit.clone(), "1@1".into(), "test".into()).unwrap();
        for _ in 0..20 {
            let record = auditing.draft(AuditEvent::Status, &Peer::default());
            auditing.send(record);
        }
        drop(auditing);
        assert_eq!(audit.recorded.load(Ordering::SeqCst), 20);
    }

    #[test]
    fn lost_records_are_warned_about_once() {
        assert!(crate::test_log::capture(log::LevelFilter::Info));
        let me = thread::current().id();
        let warnings = || {
            crate::test_log::lines()
                .into_iter()
                .filter(|line| line.thread == me && line.text.contains("record is lost"))
                .count()
        };
        let audit = Counting {
            slow: Some(Duration::from_secs(3600)),
            ..Counting::default()
        };
        let mut auditing = Auditing::start(audit, "1@1".into(), "test".into()).unwrap();
        // The thread takes one and sticks (waited for: were it to take it
        // after the queue filled, a later send would succeed and a new run
        // of losses be warned about); the queue fills; the rest are lost.
        let record = auditing.draft(AuditEvent::Status, &Peer::default());
        auditing.send(record);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !auditing.tx.as_ref().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the audit thread never took a record"
            );
            thread::sleep(Duration::from_millis(5));
        }
        for _ in 0..AUDIT_QUEUE + 9 {
            let record = auditing.draft(AuditEvent::Status, &Peer::default());
            auditing.send(record);
        }
        assert!(auditing.shared.lost.load(Ordering::Relaxed) >= 8);
        assert_eq!(warnings(), 1);
        // Nothing is forgotten: the end gives up on the stuck thread.
        auditing.tx = None;
        auditing.thread = None;
    }

    #[test]
    fn a_flood_of_records_keeps_memory_bounded_and_counts_what_is_lost() {
        let mut auditing = Auditing::start(NoAudit, "1@1".into(), "test".into()).unwrap();
        let peer = Peer::default();
        let sent = 3 * RECENT_RECORDS;
        for n in 0..sent {
            let mut record = auditing.draft(AuditEvent::Status, &peer);
            record.reason = Some(format!("{n} {}", "x".repeat(600)));
            auditing.send(record);
        }
        // The thread catches up.
        let deadline = Instant::now() + Duration::from_secs(10);
        let settled = || {
            let kept = lock(&auditing.shared.recent).lines.len();
            (kept, lock(&auditing.shared.recent).bytes)
        };
        let mut last = settled();
        loop {
            thread::sleep(Duration::from_millis(100));
            let now = settled();
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let (kept, bytes) = settled();
        assert!(
            kept <= RECENT_RECORDS && bytes <= RECENT_BYTES,
            "{kept} {bytes}"
        );
        assert!(kept > 1000, "{kept}");
        // What a reply gets fits one, newest kept.
        let recent = auditing.recent(None);
        assert!(!recent.is_empty() && recent.len() <= kept);
        let encoded = serde_json::to_string(&recent).unwrap();
        assert!(encoded.len() < MAX_REPLY, "{}", encoded.len());
        let lost = auditing.shared.lost.load(Ordering::Relaxed);
        let newest = recent.last().unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_owned();
        if lost == 0 {
            assert!(newest.starts_with(&format!("{} ", sent - 1)));
        }
        // `AUDIT 0`: none made in the last 0 seconds; an hour: all kept.
        assert!(auditing.recent(Some(Duration::ZERO)).is_empty());
        assert_eq!(
            auditing.recent(Some(Duration::from_secs(3600))).len(),
            recent.len()
        );
        let fields = auditing.status_fields();
        assert_eq!(fields[0], ("audit".to_owned(), "ok".to_owned()));
        assert_eq!(fields.len(), if lost > 0 { 2 } else { 1 }, "{fields:?}");
    }
}
