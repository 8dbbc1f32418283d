//! The grants of the supervised tree as the controller keeps them: at most
//! one in force per process (Yama keeps one ptracer per process), each
//! keyed by the process's identity (pid and start time, so a recycled pid
//! inherits nothing), the grants being made, and the note of which
//! connections hold grants that the listener reads.
//!
//! The book only keeps the facts; the event loop decides when they change
//! and has the granter carry the changes out.
//!
//! A grant being withdrawn is still in force until its revoke succeeded
//! (or its process is gone): it stays in the book as [`Revoking`], listed
//! with the others, and a revoke that failed is tried again until one
//! succeeds. It no longer blocks another client's grant on its process:
//! Yama keeps one ptracer per process, so granting another client
//! withdraws the old grant too (that grant is then its revoke).

use std::time::{Duration, Instant};

use crate::authorize::GrantRecord;
use crate::process::{Pid, ProcessId};
use crate::transport::GrantHolder;
use crate::worker::JobId;

/// A grant being made.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    pub(crate) id: JobId,
    /// What to record when it succeeds.
    pub(crate) record: GrantRecord,
    /// Who held the grant on that process (or was being granted it) before.
    pub(crate) previous: Option<GrantRecord>,
    /// A REVOKE of that process came after it was asked for: that revoke,
    /// queued behind it, withdraws it, so it is not recorded.
    pub(crate) revoked: bool,
    /// The connection that asked for it closed: it is not recorded, and
    /// is withdrawn.
    pub(crate) closed: bool,
    /// The run of the target it was asked for in, and that target: a
    /// grant made for a target that has since ended is no grant.
    pub(crate) run: u64,
    pub(crate) target: Pid,
    /// How long it may last once made; `None`: until withdrawn.
    pub(crate) lasts: Option<Duration>,
    /// Whether the transport verified the client it is for (a limit then
    /// ends its debuggers: see [`limits`](crate::limits)).
    pub(crate) verified: bool,
}

/// A grant in force being withdrawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Revoking {
    pub(crate) record: GrantRecord,
    pub(crate) phase: RevokePhase,
    /// How many revokes of it failed in a row: each waits twice as long
    /// before the next ([`retry_delay`]).
    pub(crate) failures: u32,
}

/// The wait before the first retry of a failed revoke.
pub(crate) const FIRST_RETRY: Duration = Duration::from_secs(1);

/// The longest wait between two retries.
pub(crate) const LAST_RETRY: Duration = Duration::from_secs(60);

/// The wait after `failures` revokes of one grant failed in a row: 1 s,
/// 2 s, 4 s... up to a minute, so that a process a revoke cannot reach
/// does not keep the granter busy.
pub(crate) fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(6))
        .min(LAST_RETRY)
}

/// Where the withdrawal of a grant is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RevokePhase {
    /// The granter's work `JobId` withdraws it.
    Running(JobId),
    /// Its last revoke failed: tried again at this instant.
    Retry(Instant),
}

/// The grants in force and in progress.
#[derive(Debug)]
pub(crate) struct GrantBook {
    /// In force, oldest first; one per process at most.
    held: Vec<GrantRecord>,
    /// In force but being withdrawn, oldest first; one per process at most.
    revoking: Vec<Revoking>,
    /// Being made, oldest first (the granter makes them in order).
    pending: Vec<Pending>,
    /// The connections of `held`, as the listener sees them.
    holder: GrantHolder,
}

impl GrantBook {
    /// An empty book that keeps `holder` equal to the connections holding
    /// grants.
    pub(crate) fn new(holder: GrantHolder) -> GrantBook {
        holder.set([]);
        GrantBook {
            held: Vec::new(),
            revoking: Vec::new(),
            pending: Vec::new(),
            holder,
        }
    }

    /// The grants in force and not being withdrawn, oldest first.
    #[cfg(test)]
    pub(crate) fn held(&self) -> &[GrantRecord] {
        &self.held
    }

    /// Every grant in force: those held, then those being withdrawn.
    pub(crate) fn in_force(&self) -> impl Iterator<Item = &GrantRecord> {
        let revoking = self.revoking.iter().map(|revoking| &revoking.record);
        self.held.iter().chain(revoking)
    }

    /// The grants being withdrawn, oldest first.
    pub(crate) fn revoking(&self) -> &[Revoking] {
        &self.revoking
    }

    /// Notes that the granter's work `job` withdraws `grant` (now or
    /// again), in place of any other withdrawal on its process.
    pub(crate) fn revoke(&mut self, grant: GrantRecord, job: JobId) {
        let failures = self
            .revoking
            .iter()
            .find(|revoking| revoking.record == grant)
            .map_or(0, |revoking| revoking.failures);
        self.revoking
            .retain(|revoking| revoking.record.process != grant.process);
        self.revoking.push(Revoking {
            record: grant,
            phase: RevokePhase::Running(job),
            failures,
        });
    }

    /// The granter's work `job` ended: a withdrawal it made (`done`) or
    /// whose process is gone is over; one that failed is tried again after
    /// [`retry_delay`] from `now`. The withdrawal, if `job` was one.
    pub(crate) fn revoke_ended(
        &mut self,
        job: JobId,
        done: bool,
        gone: impl Fn(ProcessId) -> bool,
        now: Instant,
    ) -> Option<Revoking> {
        let at = self
            .revoking
            .iter()
            .position(|revoking| revoking.phase == RevokePhase::Running(job))?;
        if done || gone(self.revoking[at].record.process) {
            return Some(self.revoking.remove(at));
        }
        let revoking = &mut self.revoking[at];
        revoking.failures = revoking.failures.saturating_add(1);
        revoking.phase = RevokePhase::Retry(now + retry_delay(revoking.failures));
        Some(*revoking)
    }

    /// Forgets the withdrawals of processes that are `gone` (a grant on a
    /// process that exited is in force nowhere).
    pub(crate) fn forget_gone(&mut self, gone: impl Fn(ProcessId) -> bool) {
        self.revoking
            .retain(|revoking| !gone(revoking.record.process));
    }

    /// The failed withdrawals to try again by `now`: none on a process a
    /// grant is being made on (that grant replaces it, or, if it fails,
    /// the withdrawal is tried after it).
    pub(crate) fn retries_due(&self, now: Instant) -> Vec<GrantRecord> {
        self.revoking
            .iter()
            .filter(|revoking| {
                matches!(revoking.phase, RevokePhase::Retry(at) if at <= now)
                    && !self.is_pending(revoking.record.process)
            })
            .map(|revoking| revoking.record)
            .collect()
    }

    /// Puts the next try of the withdrawal on `process` off until `at`.
    pub(crate) fn postpone(&mut self, process: ProcessId, at: Instant) {
        for revoking in &mut self.revoking {
            if revoking.record.process == process {
                revoking.phase = RevokePhase::Retry(at);
            }
        }
    }

    /// When the next failed withdrawal is to be tried again.
    pub(crate) fn next_retry(&self) -> Option<Instant> {
        self.revoking
            .iter()
            .filter(|revoking| !self.is_pending(revoking.record.process))
            .filter_map(|revoking| match revoking.phase {
                RevokePhase::Retry(at) => Some(at),
                RevokePhase::Running(_) => None,
            })
            .min()
    }

    /// The grant in force on `process`, if its holder `runs`.
    pub(crate) fn held_on(
        &self,
        process: ProcessId,
        runs: impl Fn(ProcessId) -> bool,
    ) -> Option<GrantRecord> {
        self.held
            .iter()
            .find(|grant| grant.process == process)
            .copied()
            .filter(|grant| runs(grant.holder))
    }

    /// The grant on `process` as it will stand once the grants in progress
    /// are made: the newest of them not withdrawn (the granter makes them in
    /// order, and Yama keeps one ptracer), else the one in force; either
    /// only if its holder `runs`. Another client's grant and a REVOKE are
    /// weighed against it: either, queued behind a grant in progress, would
    /// take its access away once its client was told `READY`.
    pub(crate) fn to_be(
        &self,
        process: ProcessId,
        runs: impl Fn(ProcessId) -> bool,
    ) -> Option<GrantRecord> {
        self.pending
            .iter()
            .rev()
            .find(|pending| {
                !pending.revoked && !pending.closed && pending.record.process == process
            })
            .map(|pending| pending.record)
            .filter(|grant| runs(grant.holder))
            .or_else(|| self.held_on(process, runs))
    }

    /// The process of pid `pid` that a grant is on, is being made for, or
    /// is being withdrawn from.
    pub(crate) fn process_of(&self, pid: Pid) -> Option<ProcessId> {
        let pending = self.pending.iter().rev().filter(|pending| !pending.revoked);
        pending
            .map(|pending| pending.record.process)
            .chain(self.held.iter().map(|grant| grant.process))
            .chain(self.revoking.iter().map(|revoking| revoking.record.process))
            .find(|process| process.pid == pid)
    }

    /// Notes a grant being made.
    pub(crate) fn ask(&mut self, pending: Pending) {
        self.pending.push(pending);
    }

    /// The grant being made as work `id`, no longer pending.
    pub(crate) fn take_pending(&mut self, id: JobId) -> Option<Pending> {
        let at = self.pending.iter().position(|pending| pending.id == id)?;
        Some(self.pending.remove(at))
    }

    /// Whether a grant on `process` is being made.
    pub(crate) fn is_pending(&self, process: ProcessId) -> bool {
        self.pending
            .iter()
            .any(|pending| pending.record.process == process)
    }

    /// `connection` closed: none of the grants being made for it stays.
    pub(crate) fn close(&mut self, connection: u64) {
        for pending in &mut self.pending {
            if pending.record.connection == connection {
                pending.closed = true;
            }
        }
    }

    /// A revoke of `process` is queued: none of the grants being made on
    /// it stays.
    pub(crate) fn withdraw_pending(&mut self, process: ProcessId) {
        for pending in &mut self.pending {
            if pending.record.process == process {
                pending.revoked = true;
            }
        }
    }

    /// Records a grant in force, in place of any other on its process
    /// (one being withdrawn included: Yama keeps one ptracer).
    pub(crate) fn record(&mut self, grant: GrantRecord) {
        self.held.retain(|held| held.process != grant.process);
        self.revoking
            .retain(|revoking| revoking.record.process != grant.process);
        self.held.push(grant);
        self.sync();
    }

    /// Takes the grants in force that `which` picks out of the book.
    pub(crate) fn take(&mut self, which: impl Fn(&GrantRecord) -> bool) -> Vec<GrantRecord> {
        let (taken, kept) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|grant| which(grant));
        self.held = kept;
        self.sync();
        taken
    }

    /// Whether `holder` holds a grant in force, or is being granted one.
    pub(crate) fn holds(&self, holder: ProcessId) -> bool {
        let pending = self.pending.iter().filter(|pending| !pending.closed);
        pending
            .map(|pending| &pending.record)
            .chain(&self.held)
            .any(|grant| grant.holder == holder)
    }

    /// When the next grant in force runs out of time.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.held.iter().filter_map(|grant| grant.expires).min()
    }

    /// Has the listener close `connection`, telling its client `why`.
    pub(crate) fn hang_up(&self, connection: u64, why: &str) -> bool {
        self.holder.close(connection, why)
    }

    /// Keeps the listener's note equal to the connections holding grants.
    fn sync(&self) {
        self.holder
            .set(self.held.iter().map(|grant| grant.connection));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(pid: u32, start_time: u64) -> ProcessId {
        ProcessId {
            pid: Pid::new(pid).unwrap(),
            start_time,
        }
    }

    fn grant(process: ProcessId, holder: u32, connection: u64) -> GrantRecord {
        GrantRecord {
            holder: id(holder, 1),
            process,
            connection,
            expires: None,
        }
    }

    fn pending(id: JobId, record: GrantRecord) -> Pending {
        Pending {
            id,
            record,
            previous: None,
            revoked: false,
            closed: false,
            run: 1,
            target: Pid::new(10).unwrap(),
            lasts: None,
            verified: true,
        }
    }

    #[test]
    fn one_grant_per_process_and_the_listener_sees_their_connections() {
        let holder = GrantHolder::default();
        let mut book = GrantBook::new(holder.clone());
        let (target, worker) = (id(10, 5), id(11, 6));
        book.record(grant(target, 77, 3));
        book.record(grant(worker, 88, 4));
        assert!(holder.holds(3) && holder.holds(4));
        // A take-over replaces the grant on its process only.
        book.record(grant(target, 99, 5));
        assert_eq!(book.held().len(), 2);
        assert!(!holder.holds(3) && holder.holds(4) && holder.holds(5));
        assert_eq!(book.held_on(target, |_| true).unwrap().holder.pid.get(), 99);
        // A holder that no longer runs holds nothing.
        assert_eq!(book.held_on(target, |_| false), None);
        // Taking a connection's grants leaves the others.
        let taken = book.take(|grant| grant.connection == 4);
        assert_eq!(taken, [grant(worker, 88, 4)]);
        assert!(!holder.holds(4) && holder.holds(5));
        // A recycled pid is another process: it holds nothing.
        assert_eq!(book.held_on(id(10, 7), |_| true), None);
        assert_eq!(book.process_of(Pid::new(10).unwrap()), Some(target));
        assert_eq!(book.process_of(Pid::new(11).unwrap()), None);
    }

    #[test]
    fn the_grant_to_be_is_the_newest_pending_one_not_withdrawn() {
        let mut book = GrantBook::new(GrantHolder::default());
        let (target, worker) = (id(10, 5), id(11, 6));
        book.record(grant(target, 77, 3));
        book.ask(pending(1, grant(target, 88, 4)));
        book.ask(pending(2, grant(worker, 99, 5)));
        let holder_of = |book: &GrantBook, process| {
            book.to_be(process, |_| true)
                .map(|grant| grant.holder.pid.get())
        };
        assert_eq!(holder_of(&book, target), Some(88));
        assert_eq!(holder_of(&book, worker), Some(99));
        assert_eq!(
            book.process_of(Pid::new(11).unwrap()),
            Some(worker),
            "a pending grant names its process"
        );
        // A revoke of the worker withdraws its pending grant only.
        book.withdraw_pending(worker);
        assert_eq!(holder_of(&book, worker), None);
        assert_eq!(holder_of(&book, target), Some(88));
        // The pending grant's holder has exited: the one in force counts,
        // if its own holder runs.
        let runs = |holder: ProcessId| holder.pid.get() != 88;
        assert_eq!(book.to_be(target, runs).unwrap().holder.pid.get(), 77);
        assert_eq!(book.take_pending(1).unwrap().record.holder.pid.get(), 88);
        assert!(book.take_pending(1).is_none());
        assert_eq!(holder_of(&book, target), Some(77));
    }

    #[test]
    fn a_closed_connections_pending_grants_are_marked_and_count_for_nothing() {
        let mut book = GrantBook::new(GrantHolder::default());
        let (target, worker) = (id(10, 5), id(11, 6));
        book.record(grant(target, 77, 3));
        book.ask(pending(1, grant(target, 88, 4)));
        book.ask(pending(2, grant(worker, 99, 5)));
        assert!(book.is_pending(target) && book.is_pending(worker));
        book.close(4);
        // The grant to be on the target is the one in force again.
        assert_eq!(book.to_be(target, |_| true).unwrap().holder.pid.get(), 77);
        assert_eq!(book.to_be(worker, |_| true).unwrap().holder.pid.get(), 99);
        assert!(book.take_pending(1).unwrap().closed);
        assert!(!book.take_pending(2).unwrap().closed);
        assert!(!book.is_pending(target));
    }

    #[test]
    fn a_grant_being_withdrawn_is_in_force_until_its_revoke_succeeds() {
        let holder = GrantHolder::default();
        let mut book = GrantBook::new(holder.clone());
        let (target, worker) = (id(10, 5), id(11, 6));
        let on_worker = grant(worker, 77, 3);
        book.record(on_worker);
        let taken = book.take(|grant| grant.connection == 3);
        book.revoke(taken[0], 1);
        // Still in force, though its connection holds nothing.
        assert_eq!(book.in_force().copied().collect::<Vec<_>>(), [on_worker]);
        assert!(!holder.holds(3));
        assert_eq!(book.next_retry(), None);
        // It failed: tried again at its time.
        let now = Instant::now();
        let later = now + FIRST_RETRY;
        let failed = book.revoke_ended(1, false, |_| false, now).unwrap();
        assert_eq!(failed.phase, RevokePhase::Retry(later));
        assert_eq!(book.next_retry(), Some(later));
        assert!(book.retries_due(now).is_empty());
        assert_eq!(book.retries_due(later), [on_worker]);
        // Not while a grant is being made on its process.
        book.ask(pending(2, grant(worker, 88, 4)));
        assert!(book.retries_due(later).is_empty());
        assert_eq!(book.next_retry(), None);
        book.take_pending(2);
        book.revoke(on_worker, 3);
        // Another job's end is not its.
        assert!(book.revoke_ended(9, true, |_| false, later).is_none());
        assert!(book.revoke_ended(3, true, |_| false, later).is_some());
        assert_eq!(book.in_force().count(), 0);
        // One whose process is gone is forgotten, failed or not.
        book.revoke(grant(target, 77, 3), 4);
        book.forget_gone(|process| process == target);
        assert_eq!(book.in_force().count(), 0);
        // A new grant on its process replaces a withdrawal.
        book.revoke(on_worker, 5);
        book.record(grant(worker, 99, 6));
        assert_eq!(book.revoking().len(), 0);
        assert_eq!(book.in_force().count(), 1);
    }

    #[test]
    fn each_failed_revoke_of_a_grant_waits_twice_as_long_up_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_delay(u32::MAX), LAST_RETRY);
        let mut book = GrantBook::new(GrantHolder::default());
        let on_worker = grant(id(11, 6), 77, 3);
        let now = Instant::now();
        for (job, failures) in (1..=4).zip(1..) {
            book.revoke(on_worker, job);
            let failed = book.revoke_ended(job, false, |_| false, now).unwrap();
            assert_eq!(failed.failures, failures);
            assert_eq!(
                failed.phase,
                RevokePhase::Retry(now + retry_delay(failures))
            );
        }
        // A grant made again starts over.
        book.revoke(grant(id(11, 6), 88, 4), 9);
        assert_eq!(book.revoking()[0].failures, 0);
    }
}
