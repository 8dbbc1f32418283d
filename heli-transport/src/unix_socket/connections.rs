//! The listener's table of open connections: how many may be open at
//! once, when an idle one is closed, and which one makes room for a
//! newcomer at the limit.

use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use heli_core::protocol::{Dialect, Reply};
use heli_core::{GrantHolder, LogLimit};
use nix::sys::socket::{send, MsgFlags};

use crate::io::has_input;

/// How long a connection must have been idle before it may be closed to
/// make room: a client that has just connected, or just been answered,
/// has that long to send its next request however many connect after it.
pub(super) const EVICTABLE_AFTER: Duration = Duration::from_secs(1);

/// What a listener allows its connections (see
/// [`UnixSocketTransport`](crate::UnixSocketTransport)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Limits {
    /// How many connections may be open at once.
    pub(super) max_connections: usize,
    /// How long a connection may stay idle.
    pub(super) idle_timeout: Duration,
}

/// Where a connection is, as its thread and the table see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing unanswered and no line begun, since then.
    Idle(Instant),
    /// A request being read or answered: never closed from outside.
    Busy,
    /// Closed by the table or by its own thread (idle too long).
    Closed,
}

/// One open connection, shared by the thread that serves it and the table.
#[derive(Debug)]
pub(super) struct Slot {
    /// Its [`Peer::connection`](heli_core::Peer::connection).
    pub(super) id: u64,
    pub(super) stream: UnixStream,
    phase: Mutex<Phase>,
}

impl Slot {
    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks it busy before its thread reads from it; `false` once it was
    /// closed (the thread then stops serving it).
    pub(super) fn begin(&self) -> bool {
        let mut phase = self.phase();
        if *phase == Phase::Closed {
            return false;
        }
        *phase = Phase::Busy;
        true
    }

    /// Marks it idle from now on: everything it sent is answered.
    pub(super) fn rest(&self) {
        let mut phase = self.phase();
        if *phase != Phase::Closed {
            *phase = Phase::Idle(Instant::now());
        }
    }

    /// Since when it is idle; `None` while busy, or once closed.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        match *self.phase() {
            Phase::Idle(since) => Some(since),
            Phase::Busy | Phase::Closed => None,
        }
    }

    /// Closes it if it is idle, after telling the client `why` in an
    /// `ERROR:` line when that can be written without waiting; whether it
    /// did. Its thread wakes up (end of file) and finds it closed.
    pub(super) fn close_if_idle(&self, why: &str) -> bool {
        {
            let mut phase = self.phase();
            if !matches!(*phase, Phase::Idle(_)) {
                return false;
            }
            *phase = Phase::Closed;
        }
        self.shut(why);
        true
    }

    /// Closes it whatever it is doing (a request being answered gets no
    /// answer), telling the client `why` as [`close_if_idle`] does.
    ///
    /// [`close_if_idle`]: Slot::close_if_idle
    pub(super) fn close(&self, why: &str) {
        *self.phase() = Phase::Closed;
        self.shut(why);
    }

    fn shut(&self, why: &str) {
        let line = Reply::Error(why.to_owned()).encode(Dialect::Upper);
        let _ = send(
            self.stream.as_raw_fd(),
            line.as_bytes(),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        );
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// The open connections of a listener that is serving.
#[derive(Debug)]
pub(super) struct Connections {
    session: String,
    limits: Limits,
    holder: GrantHolder,
    open: Mutex<Vec<Arc<Slot>>>,
    /// Lines about connections closed to make room: anyone may cause them
    /// (a thousand idle connections, then new ones), as often as it likes.
    evictions: Mutex<LogLimit<()>>,
}

impl Connections {
    /// No connections yet, of session `session`, within `limits`, sparing
    /// the connection `holder` names.
    pub(super) fn new(session: &str, limits: Limits, holder: GrantHolder) -> Self {
        Connections {
            session: session.to_owned(),
            limits,
            holder,
            open: Mutex::new(Vec::new()),
            evictions: Mutex::new(LogLimit::new()),
        }
    }

    /// How long a connection may stay idle.
    pub(super) fn idle_timeout(&self) -> Duration {
        self.limits.idle_timeout
    }

    /// Whether connection `id` holds the grant: it is never closed for
    /// being idle.
    pub(super) fn holds_grant(&self, id: u64) -> bool {
        self.holder.holds(id)
    }

    /// Counts connection `id` in, idle from now on. At the limit, the
    /// connection idle longest makes room, if one may: idle for
    /// [`EVICTABLE_AFTER`] at least, not holding the grant, with nothing
    /// unread. When none may, the stream is handed back, to be refused.
    pub(super) fn admit(&self, id: u64, stream: UnixStream) -> Result<Arc<Slot>, UnixStream> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= self.limits.max_connections && !self.make_room(&mut open) {
            return Err(stream);
        }
        let slot = Arc::new(Slot {
            id,
            stream,
            phase: Mutex::new(Phase::Idle(Instant::now())),
        });
        open.push(Arc::clone(&slot));
        Ok(slot)
    }

    /// Closes the connection idle longest that may be closed, and takes it
    /// out of `open`; whether there was one.
    fn make_room(&self, open: &mut Vec<Arc<Slot>>) -> bool {
        let now = Instant::now();
        let mut idle: Vec<(Instant, usize)> = open
            .iter()
            .enumerate()
            .filter(|(_, slot)| !self.holds_grant(slot.id))
            .filter_map(|(at, slot)| Some((slot.idle_since()?, at)))
            .filter(|&(since, _)| now.duration_since(since) >= EVICTABLE_AFTER)
            .collect();
        idle.sort_unstable();
        let why = format!(
            "Connection closed: it was idle while session {} was full ({} connections); connect again",
            self.session, self.limits.max_connections
        );
        for (_, at) in idle {
            let slot = &open[at];
            // A request sent but not read yet is in flight.
            if has_input(slot.stream.as_fd()).unwrap_or(true) {
                continue;
            }
            if slot.close_if_idle(&why) {
                let allowed = self
                    .evictions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .check((), now);
                if let Some(note) = allowed {
                    log::info!(
                        "closed idle connection {} of session {} to make room for another{note}",
                        slot.id,
                        self.session
                    );
                }
                open.swap_remove(at);
                return true;
            }
        }
        false
    }

    /// Closes connection `id`, if open, whatever it is doing (the
    /// controller asked: its client's time is up), telling the client
    /// `why`.
    pub(super) fn close(&self, id: u64, why: &str) {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = open.iter().find(|slot| slot.id == id) {
            slot.close(why);
        }
    }

    /// Counts connection `id` out (once its thread is done with it).
    pub(super) fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = open.iter().position(|slot| slot.id == id) {
            open.swap_remove(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (UnixStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (ours, theirs)
    }

    fn limits(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            idle_timeout: Duration::from_secs(60),
        }
    }

    /// Makes `slot` look idle for longer than [`EVICTABLE_AFTER`].
    fn age(slot: &Slot) {
        *slot.phase() = Phase::Idle(Instant::now() - EVICTABLE_AFTER * 2);
    }

    #[test]
    fn the_connection_idle_longest_makes_room_unless_busy_or_holding_the_grant() {
        let holder = GrantHolder::default();
        let table = Connections::new("t", limits(3), holder);
        let (a, mut a_client) = pair();
        let (b, _b_client) = pair();
        let (c, _c_client) = pair();
        let a = table.admit(1, a).unwrap();
        let b = table.admit(2, b).unwrap();
        let c = table.admit(3, c).unwrap();
        // All recently active: the newcomer is refused.
        assert!(table.admit(4, pair().0).is_err());
        // A is busy: B, idle longest, goes.
        assert!(a.begin());
        age(&b);
        age(&c);
        *b.phase() = Phase::Idle(Instant::now() - EVICTABLE_AFTER * 3);
        let (d, _d_client) = pair();
        let d = table.admit(4, d).unwrap();
        assert!(!b.begin(), "B was closed");
        assert!(c.begin() && d.begin());
        // Nothing idle: refused.
        assert!(table.admit(5, pair().0).is_err());
        // A tells its client why when closed.
        a.rest();
        age(&a);
        assert!(a.close_if_idle("bye"));
        let mut told = String::new();
        a_client.read_to_string(&mut told).unwrap();
        assert_eq!(told, "ERROR: bye\n");
        assert!(!a.close_if_idle("twice"));
        table.remove(1);
        table.remove(1);
        assert!(table.admit(6, pair().0).is_ok());
    }

    #[test]
    fn the_controller_closes_a_connection_whatever_it_is_doing() {
        let table = Connections::new("t", limits(3), GrantHolder::default());
        let (a, mut a_client) = pair();
        let (b, _b_client) = pair();
        let a = table.admit(1, a).unwrap();
        let b = table.admit(2, b).unwrap();
        // Busy, even holding a grant: closed all the same.
        assert!(a.begin());
        table.close(1, "time is up");
        table.close(7, "no such connection");
        let mut told = String::new();
        a_client.read_to_string(&mut told).unwrap();
        assert_eq!(told, "ERROR: time is up\n");
        assert!(!a.begin(), "A was closed");
        assert!(b.begin(), "B was closed too");
    }

    #[test]
    fn unread_requests_are_in_flight() {
        let table = Connections::new("t", limits(1), GrantHolder::default());
        let (a, mut a_client) = pair();
        let a = table.admit(1, a).unwrap();
        age(&a);
        std::io::Write::write_all(&mut a_client, b"STATUS\n").unwrap();
        assert!(table.admit(2, pair().0).is_err());
        assert!(a.idle_since().is_some());
    }
}
