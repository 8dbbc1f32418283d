//! Time limits on debugging: what the controller does once a client's time
//! is up.
//!
//! A grant with a time limit is withdrawn at its expiry (the grant book
//! keeps [`GrantRecord::expires`](crate::authorize::GrantRecord)): no new
//! attach can start. A debugger already attached may still be at work then
//! (pdb's session runs over its own socket once started), and ending it is
//! the client's part: it has [`CLIENT_GRACE`] more. After that the
//! controller ends what still runs of it itself: every process descended
//! from the client (SIGTERM, then SIGKILL after [`KILL_GRACE`]), and it
//! closes the client's connection. Only a client the transport verified
//! has a limit here: the pid a named pipe's request names proves nothing,
//! and nothing is ended on its word.
//!
//! A client may hold several sessions (a grant on another process of the
//! tree, an attach through the agent): its debuggers are ended once the
//! last of them is over, never while it holds a grant without a time
//! limit. A client that exited leaves nothing to find: what it ran was
//! handed to another parent.
//!
//! A session of pdb through the agent has a limit of its own besides: its
//! sockets were handed to the client, and whoever holds them now (the
//! client itself, a process it passed them to) can go on. At the end of
//! its grace the agent in the target shuts the session's sockets down
//! from inside (see [`Agent::hang_up`](crate::Agent::hang_up)).

use std::time::{Duration, Instant};

use crate::process::ProcessId;

/// How long after its time is up a client has to end its debugger before
/// the controller does (see [`Controller::max_grant`]).
///
/// [`Controller::max_grant`]: crate::Controller::max_grant
pub const CLIENT_GRACE: Duration = Duration::from_secs(5);

/// How long the debuggers of a client that outlived its time have to end
/// on SIGTERM before they get SIGKILL.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);

/// How long a client has to end its debugger once its time is up, and its
/// debuggers to end on SIGTERM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Graces {
    pub(crate) client: Duration,
    pub(crate) kill: Duration,
}

impl Default for Graces {
    fn default() -> Graces {
        Graces {
            client: CLIENT_GRACE,
            kill: KILL_GRACE,
        }
    }
}

/// The time limit of one session of a verified client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    /// The client: its descendants are its debuggers.
    pub(crate) holder: ProcessId,
    /// Its connection, closed once its time is up.
    pub(crate) connection: u64,
    /// When its time is up.
    pub(crate) expires: Instant,
    step: Step,
}

/// What is done next about a [`Limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// At this instant, the client's debuggers get SIGTERM.
    End(Instant),
    /// At this instant, those still running get SIGKILL.
    Kill(Instant),
}

/// What the controller is to do now about a client whose time is up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// Its grace is over: SIGTERM to its debuggers, close its connection.
    End(Limit),
    /// SIGKILL to those still running.
    Kill(Limit),
}

impl Limit {
    /// The limit of a session of `holder` on `connection`, up at
    /// `expires`, its debuggers ended `grace` later.
    pub(crate) fn new(
        holder: ProcessId,
        connection: u64,
        expires: Instant,
        grace: Duration,
    ) -> Limit {
        Limit {
            holder,
            connection,
            expires,
            step: Step::End(expires + grace),
        }
    }

    fn due_at(&self) -> Instant {
        match self.step {
            Step::End(at) | Step::Kill(at) => at,
        }
    }
}

/// The limit of one session of pdb through the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SessionLimit {
    /// The process the session is in.
    pub(crate) process: ProcessId,
    /// Its number there ([`AgentSession::id`](crate::AgentSession::id)).
    pub(crate) session: u64,
    /// When it is ended.
    end: Instant,
}

/// The limits being watched.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    limits: Vec<Limit>,
    sessions: Vec<SessionLimit>,
}

impl Limits {
    /// Watches `limit`. A client has one limit at most, up with the last
    /// of its sessions (its connection then closed): however many grants
    /// it asks for, the book holds one entry per client.
    pub(crate) fn add(&mut self, limit: Limit) {
        match self
            .limits
            .iter_mut()
            .find(|other| other.holder == limit.holder)
        {
            Some(other) if other.expires >= limit.expires => {}
            Some(other) => *other = limit,
            None => self.limits.push(limit),
        }
    }

    /// Watches session `session` of pdb through the agent in `process`,
    /// ended at `end`. The agent said which of the earlier sessions in
    /// that process are `still_on`: the others are over, and no longer
    /// watched (so a flood of sessions cannot grow the book).
    pub(crate) fn add_session(
        &mut self,
        process: ProcessId,
        session: u64,
        end: Instant,
        still_on: &[u64],
    ) {
        self.sessions
            .retain(|limit| limit.process != process || still_on.contains(&limit.session));
        self.sessions.push(SessionLimit {
            process,
            session,
            end,
        });
    }

    /// The sessions through the agent to end by `now`, no longer watched.
    pub(crate) fn sessions_due(&mut self, now: Instant) -> Vec<SessionLimit> {
        let (due, later) = self.sessions.drain(..).partition(|limit| limit.end <= now);
        self.sessions = later;
        due
    }

    /// Forgets the limits of clients that are `gone`: what they leave
    /// running is no longer theirs to find (it was handed to another
    /// parent).
    pub(crate) fn forget_gone(&mut self, gone: impl Fn(ProcessId) -> bool) {
        self.limits.retain(|limit| !gone(limit.holder));
    }

    /// When the next step is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let sessions = self.sessions.iter().map(|limit| limit.end);
        self.limits.iter().map(Limit::due_at).chain(sessions).min()
    }

    /// The steps due by `now`, the watched limits moved on past them. A
    /// limit whose client holds a grant in force (`holds`: one without a
    /// time limit) is over without a step: its debuggers may serve it.
    /// SIGKILL follows SIGTERM `kill_grace` later.
    pub(crate) fn due(
        &mut self,
        now: Instant,
        kill_grace: Duration,
        holds: impl Fn(ProcessId) -> bool,
    ) -> Vec<Due> {
        let mut due = Vec::new();
        let mut at = 0;
        while at < self.limits.len() {
            let limit = self.limits[at];
            if limit.due_at() > now {
                at += 1;
                continue;
            }
            match limit.step {
                Step::End(_) => {
                    if holds(limit.holder) {
                        self.limits.remove(at);
                        continue;
                    }
                    due.push(Due::End(limit));
                    self.limits[at].step = Step::Kill(now + kill_grace);
                    at += 1;
                }
                Step::Kill(_) => {
                    due.push(Due::Kill(limit));
                    self.limits.remove(at);
                }
            }
        }
        due
    }

    /// How many limits are watched.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.limits.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Pid;

    fn id(pid: u32) -> ProcessId {
        ProcessId {
            pid: Pid::new(pid).unwrap(),
            start_time: 1,
        }
    }

    #[test]
    fn a_client_is_given_its_grace_then_sigterm_then_sigkill() {
        let start = Instant::now();
        let mut limits = Limits::default();
        limits.add(Limit::new(
            id(10),
            3,
            start + Duration::from_secs(10),
            CLIENT_GRACE,
        ));
        assert_eq!(
            limits.next_due(),
            Some(start + Duration::from_secs(10) + CLIENT_GRACE)
        );
        let none = |_| false;
        // Up, but within its grace: nothing yet.
        assert!(limits
            .due(start + Duration::from_secs(11), KILL_GRACE, none)
            .is_empty());
        let end = start + Duration::from_secs(10) + CLIENT_GRACE;
        let due = limits.due(end, KILL_GRACE, none);
        assert!(
            matches!(due[..], [Due::End(ended)] if ended.holder == id(10) && ended.connection == 3)
        );
        assert_eq!(limits.next_due(), Some(end + KILL_GRACE));
        assert!(limits.due(end, KILL_GRACE, none).is_empty());
        let due = limits.due(end + KILL_GRACE, KILL_GRACE, none);
        assert!(matches!(due[..], [Due::Kill(killed)] if killed.holder == id(10)));
        assert_eq!((limits.len(), limits.next_due()), (0, None));
    }

    #[test]
    fn a_client_has_one_limit_up_with_its_last_session() {
        let start = Instant::now();
        let ends = |secs| start + Duration::from_secs(secs) + CLIENT_GRACE;
        let limit = |holder, connection, secs| {
            Limit::new(
                id(holder),
                connection,
                start + Duration::from_secs(secs),
                CLIENT_GRACE,
            )
        };
        let mut limits = Limits::default();
        limits.add(limit(10, 3, 10));
        limits.add(limit(10, 4, 60));
        limits.add(limit(10, 5, 30));
        limits.add(limit(20, 6, 10));
        assert_eq!(limits.len(), 2);
        // Client 20 holds a grant without a limit: its debuggers serve it.
        assert!(limits
            .due(ends(10), KILL_GRACE, |holder| holder == id(20))
            .is_empty());
        assert_eq!(limits.len(), 1);
        // Client 10 is ended once its last session is up, on its
        // connection.
        assert!(limits.due(ends(59), KILL_GRACE, |_| false).is_empty());
        let due = limits.due(ends(60), KILL_GRACE, |_| false);
        assert!(matches!(due[..], [Due::End(limit)] if limit.connection == 4));
    }

    #[test]
    fn the_limits_of_clients_gone_are_forgotten() {
        let start = Instant::now();
        let mut limits = Limits::default();
        for holder in [10, 20, 30] {
            limits.add(Limit::new(id(holder), 1, start, CLIENT_GRACE));
        }
        limits.forget_gone(|holder| holder != id(20));
        assert_eq!(limits.len(), 1);
        let due = limits.due(start + CLIENT_GRACE, KILL_GRACE, |_| false);
        assert!(matches!(due[..], [Due::End(limit)] if limit.holder == id(20)));
    }

    #[test]
    fn sessions_through_the_agent_are_ended_at_their_time_those_over_forgotten() {
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut limits = Limits::default();
        limits.add_session(id(10), 1, at(30), &[]);
        limits.add_session(id(20), 1, at(20), &[]);
        // Session 1 in PID 10 is still on (its sockets held): watched on.
        limits.add_session(id(10), 2, at(40), &[1]);
        assert_eq!(limits.next_due(), Some(at(20)));
        // Session 2 is over: session 3 replaces it, not session 1.
        limits.add_session(id(10), 3, at(50), &[1]);
        assert_eq!(limits.sessions.len(), 3);
        assert!(limits.sessions_due(at(19)).is_empty());
        let ended = |due: Vec<SessionLimit>| {
            due.iter()
                .map(|limit| (limit.process.pid.get(), limit.session))
                .collect::<Vec<_>>()
        };
        assert_eq!(ended(limits.sessions_due(at(30))), [(10, 1), (20, 1)]);
        assert_eq!(limits.next_due(), Some(at(50)));
        assert!(limits.sessions_due(at(30)).is_empty());
        assert_eq!(ended(limits.sessions_due(at(50))), [(10, 3)]);
        assert_eq!(limits.next_due(), None);
        // A client's limit and the sessions: the sooner is next.
        limits.add_session(id(10), 4, at(60), &[]);
        limits.add(Limit::new(id(30), 1, at(10), CLIENT_GRACE));
        assert_eq!(limits.next_due(), Some(at(10) + CLIENT_GRACE));
    }
}
