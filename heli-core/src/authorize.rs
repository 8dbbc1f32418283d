//! Who may be granted what, and who may withdraw it: one policy for every
//! transport.
//!
//! A transport reports what it verified about the process at the other end
//! of a request ([`Peer`]); the controller decides here, with the facts of
//! a [`Processes`] table. A transport that verifies nothing (named pipes)
//! gets the same policy with nothing verified.

use std::io;

use crate::process::{Pid, ProcessId, Processes};
use crate::transport::Peer;

/// A refusal: the message for the client, after `ERROR:`.
pub(crate) type Refusal = String;

/// The grant currently in force, as the controller made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GrantRecord {
    /// The process that may ptrace the target.
    pub(crate) holder: ProcessId,
    /// The target it may ptrace.
    pub(crate) target: ProcessId,
    /// The connection that asked for it (0 on a connectionless transport,
    /// where no grant is tied to a connection).
    pub(crate) connection: u64,
}

/// The process a `GRANT_ACCESS <requested>` from `peer` would give rights
/// to: `requested` itself, or the process it is a thread of.
///
/// A peer the transport authenticated may ask only for itself or one of its
/// descendants; the pid in the request is never trusted on its own.
pub(crate) fn grantee(
    peer: &Peer,
    requested: Pid,
    processes: &impl Processes,
) -> Result<ProcessId, Refusal> {
    let lookup = |pid: Pid| {
        processes
            .process(pid)
            .map_err(|err| format!("Grant failed: cannot look up PID {pid}: {err}"))
    };
    // A thread stands for its process, which is what a granter names.
    let process = match lookup(requested)? {
        Some(info) if info.process == requested => Some(info.id).filter(|_| !info.state.is_gone()),
        Some(info) => lookup(info.process)?
            .filter(|process| !process.state.is_gone())
            .map(|process| process.id),
        None => None,
    };
    if let Some(credentials) = &peer.credentials {
        let allowed = match (process, credentials.process) {
            (Some(process), Some(asking)) => descends(processes, process.pid, asking),
            _ => false,
        };
        if !allowed {
            let you = credentials.process.map_or_else(
                || "your PID is unknown".to_owned(),
                |asking| format!("you are PID {}", asking.pid),
            );
            return Err(format!(
                "GRANT_ACCESS {requested} refused: it must be your own process or one of its \
                 descendants ({you})"
            ));
        }
    }
    process.ok_or_else(|| format!("Grant failed: no process with PID {requested}"))
}

/// Whether `candidate` is `ancestor` or one of its descendants; an error of
/// the table counts as no, and is logged.
fn descends(processes: &impl Processes, candidate: Pid, ancestor: ProcessId) -> bool {
    processes
        .is_self_or_descendant(candidate, ancestor)
        .unwrap_or_else(|err: io::Error| {
            log::warn!(
                "cannot tell whether PID {candidate} descends from PID {}: {err}",
                ancestor.pid
            );
            false
        })
}

/// Whether `REVOKE [<named>]` may withdraw `grant`: a bare `REVOKE` always
/// may, a `REVOKE <pid>` only when `<pid>` holds it (a client that detached
/// must not withdraw the grant another client took over since).
pub(crate) fn may_revoke(grant: Option<&GrantRecord>, named: Option<Pid>) -> Result<(), Refusal> {
    match (grant, named) {
        (Some(grant), Some(named)) if grant.holder.pid != named => Err(format!(
            "The grant is held by client PID {}, not PID {named}: nothing revoked",
            grant.holder.pid
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::table::{pid, Table};
    use crate::transport::Credentials;

    /// 1 -> 100 (a shell) -> 200 (a client) -> 300 (its pdb); 400 is a
    /// stranger, 201 a thread of the client.
    fn world() -> (Table, ProcessId) {
        let table = Table::default();
        table.add(1, 0, 1);
        table.add(100, 1, 10);
        let client = table.add(200, 100, 20);
        table.add(300, 200, 30);
        table.add(400, 1, 40);
        table.add(201, 100, 20);
        table.edit(201, |info| info.process = pid(200));
        (table, client)
    }

    fn authenticated(process: Option<ProcessId>) -> Peer {
        Peer {
            connection: 7,
            credentials: Some(Credentials { uid: 1000, process }),
        }
    }

    #[test]
    fn an_authenticated_peer_may_ask_for_itself_and_its_descendants() {
        let (table, client) = world();
        let peer = authenticated(Some(client));
        assert_eq!(grantee(&peer, pid(200), &table), Ok(client));
        assert_eq!(grantee(&peer, pid(300), &table).unwrap().pid, pid(300));
        for other in [1, 100, 400] {
            let refusal = grantee(&peer, pid(other), &table).unwrap_err();
            assert_eq!(
                refusal,
                format!(
                    "GRANT_ACCESS {other} refused: it must be your own process or one of its \
                     descendants (you are PID 200)"
                )
            );
        }
    }

    #[test]
    fn a_thread_stands_for_its_process() {
        let (table, client) = world();
        // Unauthenticated (named pipes): the thread's process is named.
        assert_eq!(grantee(&Peer::default(), pid(201), &table), Ok(client));
        // Authenticated: a thread of the asking process is the process.
        assert_eq!(
            grantee(&authenticated(Some(client)), pid(201), &table),
            Ok(client)
        );
    }

    #[test]
    fn an_authenticated_peer_whose_pid_is_unknown_may_ask_for_nothing() {
        let (table, _) = world();
        let refusal = grantee(&authenticated(None), pid(200), &table).unwrap_err();
        assert!(refusal.ends_with("(your PID is unknown)"), "{refusal}");
    }

    #[test]
    fn a_peer_that_is_no_longer_the_process_that_connected_may_ask_for_nothing() {
        let (table, client) = world();
        let restarted = ProcessId {
            start_time: 19,
            ..client
        };
        let refusal = grantee(&authenticated(Some(restarted)), pid(200), &table).unwrap_err();
        assert!(refusal.starts_with("GRANT_ACCESS 200 refused"), "{refusal}");
    }

    #[test]
    fn a_missing_or_exited_process_is_refused() {
        let (table, client) = world();
        let peer = authenticated(Some(client));
        assert_eq!(
            grantee(&Peer::default(), pid(999), &table),
            Err("Grant failed: no process with PID 999".into())
        );
        table.edit(300, |info| {
            info.state = crate::process::ProcessState::Zombie;
        });
        assert_eq!(
            grantee(&Peer::default(), pid(300), &table),
            Err("Grant failed: no process with PID 300".into())
        );
        // An authenticated peer learns nothing more than "not yours".
        for gone in [300, 999] {
            let refusal = grantee(&peer, pid(gone), &table).unwrap_err();
            assert!(
                refusal.starts_with(&format!("GRANT_ACCESS {gone} refused")),
                "{refusal}"
            );
        }
    }

    /// Counts the reads of `table`, pid by pid.
    struct Counting<'a>(&'a Table, std::cell::RefCell<Vec<u32>>);
    impl Processes for Counting<'_> {
        fn process(&self, pid: Pid) -> io::Result<Option<crate::ProcessInfo>> {
            self.1.borrow_mut().push(pid.get());
            self.0.process(pid)
        }
    }

    #[test]
    fn a_process_is_judged_on_one_reading_and_a_thread_on_one_more() {
        let (table, client) = world();
        let counting = Counting(&table, Default::default());
        assert_eq!(grantee(&Peer::default(), pid(200), &counting), Ok(client));
        assert_eq!(counting.1.take(), [200]);
        assert_eq!(grantee(&Peer::default(), pid(201), &counting), Ok(client));
        assert_eq!(counting.1.take(), [201, 200]);
    }

    #[test]
    fn revoke_with_a_pid_needs_the_holder() {
        let (_, client) = world();
        let grant = GrantRecord {
            holder: client,
            target: client,
            connection: 3,
        };
        assert_eq!(may_revoke(Some(&grant), None), Ok(()));
        assert_eq!(may_revoke(Some(&grant), Some(pid(200))), Ok(()));
        assert_eq!(may_revoke(None, Some(pid(5))), Ok(()));
        assert_eq!(
            may_revoke(Some(&grant), Some(pid(300))),
            Err("The grant is held by client PID 200, not PID 300: nothing revoked".into())
        );
    }
}
