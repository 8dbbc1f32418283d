//! Who may be granted what, and who may withdraw it: one policy for every
//! transport.
//!
//! A transport reports what it verified about the process at the other end
//! of a request ([`Peer`]); the controller decides here, with the facts of
//! a [`Processes`] table. A transport that verifies nothing (named pipes)
//! gets the same policy with nothing verified.

use std::io;
use std::time::Instant;

use crate::process::{Pid, ProcessId, Processes};
use crate::transport::Peer;

/// A refusal: the message for the client, after `ERROR:`.
pub(crate) type Refusal = String;

/// A grant in force on one process of the tree, as the controller made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GrantRecord {
    /// The process that may ptrace `process`.
    pub(crate) holder: ProcessId,
    /// The process of the tree it may ptrace (the target, or a descendant
    /// of it).
    pub(crate) process: ProcessId,
    /// The connection that asked for it (0 on a connectionless transport,
    /// where no grant is tied to a connection).
    pub(crate) connection: u64,
    /// When its time limit ends it (`GRANT_ACCESS ... FOR`, or the
    /// controller's longest grant); `None`: never.
    pub(crate) expires: Option<Instant>,
}

/// The process a `GRANT_ACCESS <requested>` from `peer` would give rights
/// to: `requested` itself, or the process it is a thread of.
///
/// - A peer the transport authenticated may ask only for itself or one of
///   its descendants; the pid in the request is never trusted on its own.
/// - Whatever the transport could tell, a grant goes only to a process that
///   could be a client's debugger: not this controller, not the `target`
///   itself, not PID 1, not a kernel thread, and only a process whose real
///   and effective user are this controller's (not another user's, not a
///   setuid program's).
pub(crate) fn grantee(
    peer: &Peer,
    requested: Pid,
    target: Pid,
    processes: &impl Processes,
) -> Result<ProcessId, Refusal> {
    let asked = Asked {
        refused: format!("GRANT_ACCESS {requested} refused"),
        failed: "Grant failed",
    };
    vet(peer, requested, target, processes, &asked)
}

/// The process an `AGENT_ATTACH` from `peer` hands pdb's sockets to, by
/// the rules of [`grantee`]: the process that asks stands for the client
/// of a grant (the sockets give it what a grant would). `None` from a
/// transport that cannot authenticate (named pipes), which the rules let
/// anyone ask, as they do grants.
pub(crate) fn agent_client(
    peer: &Peer,
    target: Pid,
    processes: &impl Processes,
) -> Result<Option<ProcessId>, Refusal> {
    let Some(credentials) = &peer.credentials else {
        return Ok(None);
    };
    let Some(asking) = credentials.process else {
        return Err(
            "AGENT_ATTACH refused: your PID is unknown (pdb's sockets go only to a process \
             this controller knows)"
                .to_owned(),
        );
    };
    let asked = Asked {
        refused: format!("AGENT_ATTACH from PID {} refused", asking.pid),
        failed: "Attach failed",
    };
    vet(peer, asking.pid, target, processes, &asked).map(Some)
}

/// How refusals of a request name it.
struct Asked {
    /// `GRANT_ACCESS 77 refused`: before the rule it breaks.
    refused: String,
    /// `Grant failed`: before why it could not be decided.
    failed: &'static str,
}

/// The rules of [`grantee`], for a request `asked` names.
fn vet(
    peer: &Peer,
    requested: Pid,
    target: Pid,
    processes: &impl Processes,
    asked: &Asked,
) -> Result<ProcessId, Refusal> {
    let failed = asked.failed;
    let lookup = |pid: Pid| {
        processes
            .process(pid)
            .map_err(|err| format!("{failed}: cannot look up PID {pid}: {err}"))
    };
    // A thread stands for its process, which is what a granter names.
    let process = match lookup(requested)? {
        Some(info) if info.process == requested => Some(info),
        Some(info) => lookup(info.process)?,
        None => None,
    }
    .filter(|info| !info.state.is_gone());
    let refused = |why: String| format!("{}: {why}", asked.refused);
    if let Some(credentials) = &peer.credentials {
        let allowed = match (&process, credentials.process) {
            (Some(process), Some(asking)) => descends(processes, process.id.pid, asking),
            _ => false,
        };
        if !allowed {
            let you = credentials.process.map_or_else(
                || "your PID is unknown".to_owned(),
                |asking| format!("you are PID {}", asking.pid),
            );
            return Err(refused(format!(
                "it must be your own process or one of its descendants ({you})"
            )));
        }
    }
    let process = process.ok_or_else(|| format!("{failed}: no process with PID {requested}"))?;
    let pid = process.id.pid;
    let never = if pid == Pid::this() {
        Some("it is this controller".to_owned())
    } else if pid == target {
        Some("it is the target itself".to_owned())
    } else if pid.get() == 1 {
        Some("it is PID 1".to_owned())
    } else if process.kernel_thread {
        Some("it is a kernel thread".to_owned())
    } else {
        None
    };
    if let Some(why) = never {
        return Err(refused(why));
    }
    let me = lookup(Pid::this())?
        .map(|me| me.euid)
        .ok_or_else(|| format!("{failed}: cannot tell who this controller runs as"))?;
    if process.euid != me {
        return Err(refused(format!(
            "it runs as uid {} (effective), not as uid {me} like this controller{}",
            process.euid,
            if process.uid == me {
                " (a setuid program)"
            } else {
                ""
            }
        )));
    }
    if process.uid != me {
        return Err(refused(format!(
            "it belongs to uid {} (real), not to uid {me} like this controller",
            process.uid
        )));
    }
    Ok(process.id)
}

/// What a process of the tree is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// A grant (`GRANT_ACCESS ... TARGET <pid>`).
    Grant,
    /// Its stacks (`STACK <pid>`, `STACKS <pid>`).
    Stacks,
}

/// The process `requested` names, if the controller may let a client into
/// it (or read its stacks for one): a process of the tree at this moment
/// (checked with start times, so a reused pid does not pass), a process
/// (not a thread of one) that has not exited, not this controller, of this
/// controller's user ([`other_user`]).
///
/// The tree is the `target` and its descendants; when the controller is a
/// subreaper, `adopter` (the controller's own identity), every descendant
/// of the controller: the processes of the target's tree that it adopted
/// once their parent died, too.
///
/// The controller is the ancestor of its tree: it may do there what no
/// client may, and must not let that reach anything else.
pub(crate) fn tree_member(
    requested: Pid,
    target: ProcessId,
    adopter: Option<ProcessId>,
    processes: &impl Processes,
    what: Use,
) -> Result<ProcessId, Refusal> {
    let lookup = |pid: Pid| {
        processes
            .process(pid)
            .map_err(|err| format!("Cannot look up PID {pid}: {err}"))
    };
    let Some(info) = lookup(requested)? else {
        return Err(format!("PID {requested} is not running"));
    };
    if requested == Pid::this() {
        return Err(format!("PID {requested} is the controller itself"));
    }
    if info.process != requested {
        return Err(format!(
            "PID {requested} is a thread of process {}, not a process",
            info.process
        ));
    }
    if info.state.is_gone() {
        return Err(format!("PID {requested} has exited (zombie)"));
    }
    if !descends(processes, requested, adopter.unwrap_or(target)) {
        let verb = match what {
            Use::Grant => "granted",
            Use::Stacks => "read",
        };
        let who = match adopter {
            None => "and its descendants",
            Some(_) => "its descendants and the processes this controller adopted",
        };
        return Err(format!(
            "PID {requested} is not in the target's process tree (only the target, PID {}, \
             {who} may be {verb})",
            target.pid
        ));
    }
    let me = lookup(Pid::this())?
        .map(|me| me.euid)
        .ok_or_else(|| "Cannot tell who this controller runs as".to_owned())?;
    if let Some(why) = other_user(info.uid, info.euid, me) {
        return Err(format!("PID {requested} {why}"));
    }
    Ok(info.id)
}

/// Why a process of the tree whose real user is `uid` and effective user
/// `euid` is none of the controller's business, when the controller runs
/// as `me` (its effective user): `None` when both are `me`. A process of
/// another user (a setuid child, say) is not let into, nor read for a
/// client, though the controller, its ancestor, might be able to.
///
/// The one statement of the rule: the controller applies it to a request,
/// a granter again at the last moment before it acts on the process.
///
/// # Examples
///
/// ```
/// use heli_core::other_user;
///
/// assert_eq!(other_user(1000, 1000, 1000), None);
/// assert_eq!(
///     other_user(1000, 0, 1000).unwrap(),
///     "runs as another user (uid 1000, euid 0; the controller runs as 1000)"
/// );
/// ```
pub fn other_user(uid: u32, euid: u32, me: u32) -> Option<String> {
    (uid != me || euid != me).then(|| {
        format!("runs as another user (uid {uid}, euid {euid}; the controller runs as {me})")
    })
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

/// Whether `REVOKE [<named>]` from `peer` may withdraw `grant` (the grant
/// in force; `None` when nobody holds it: then there is nothing to protect).
///
/// Only the connection that asked for the grant, or the process that holds
/// it (asking on another connection), may withdraw it: a client must not
/// take away another client's access. `attach --force` (`GRANT_ACCESS
/// <pid> FORCE`) is the way to take a grant over. With a pid, `REVOKE
/// <pid>` also withdraws it only when `<pid>` holds it (a client that
/// detached must not withdraw the grant another client took over since).
/// On a transport without connections (named pipes) every request comes
/// from the connection of every grant: it cannot tell.
pub(crate) fn may_revoke(
    grant: Option<&GrantRecord>,
    peer: &Peer,
    named: Option<Pid>,
) -> Result<(), Refusal> {
    let Some(grant) = grant else {
        return Ok(());
    };
    let holder = grant.holder.pid;
    if let Some(named) = named.filter(|&named| named != holder) {
        return Err(format!(
            "The grant is held by client PID {holder}, not PID {named}: nothing revoked"
        ));
    }
    if peer.connection == grant.connection || peer.process() == Some(grant.holder) {
        return Ok(());
    }
    Err(format!(
        "REVOKE refused: the grant is held by client PID {holder}; only its connection or \
         that process may withdraw it (attach --force takes it over)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::table::{pid, Table};
    use crate::transport::Credentials;

    /// The target, as the controller runs it.
    const TARGET: u32 = 50;

    /// This process (the controller) and its target, 1 -> 100 (a shell) ->
    /// 200 (a client) -> 300 (its pdb); 400 is a stranger, 201 a thread of
    /// the client; everyone uid 1000.
    fn world() -> (Table, ProcessId) {
        let table = Table::default();
        table.add(1, 0, 1);
        table.add(Pid::this().get(), 1, 2);
        table.add(TARGET, Pid::this().get(), 3);
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

    fn ask(peer: &Peer, requested: u32, table: &Table) -> Result<ProcessId, Refusal> {
        grantee(peer, pid(requested), pid(TARGET), table)
    }

    #[test]
    fn an_authenticated_peer_may_ask_for_itself_and_its_descendants() {
        let (table, client) = world();
        let peer = authenticated(Some(client));
        assert_eq!(ask(&peer, 200, &table), Ok(client));
        assert_eq!(ask(&peer, 300, &table).unwrap().pid, pid(300));
        for other in [1, 100, 400, TARGET, Pid::this().get()] {
            let refusal = ask(&peer, other, &table).unwrap_err();
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
        assert_eq!(ask(&Peer::default(), 201, &table), Ok(client));
        // Authenticated: a thread of the asking process is the process.
        assert_eq!(ask(&authenticated(Some(client)), 201, &table), Ok(client));
    }

    #[test]
    fn an_authenticated_peer_whose_pid_is_unknown_may_ask_for_nothing() {
        let (table, _) = world();
        let refusal = ask(&authenticated(None), 200, &table).unwrap_err();
        assert!(refusal.ends_with("(your PID is unknown)"), "{refusal}");
    }

    #[test]
    fn a_peer_that_is_no_longer_the_process_that_connected_may_ask_for_nothing() {
        let (table, client) = world();
        let restarted = ProcessId {
            start_time: 19,
            ..client
        };
        let refusal = ask(&authenticated(Some(restarted)), 200, &table).unwrap_err();
        assert!(refusal.starts_with("GRANT_ACCESS 200 refused"), "{refusal}");
    }

    #[test]
    fn a_missing_or_exited_process_is_refused() {
        let (table, client) = world();
        let peer = authenticated(Some(client));
        assert_eq!(
            ask(&Peer::default(), 999, &table),
            Err("Grant failed: no process with PID 999".into())
        );
        table.edit(300, |info| {
            info.state = crate::process::ProcessState::Zombie;
        });
        assert_eq!(
            ask(&Peer::default(), 300, &table),
            Err("Grant failed: no process with PID 300".into())
        );
        // An authenticated peer learns nothing more than "not yours".
        for gone in [300, 999] {
            let refusal = ask(&peer, gone, &table).unwrap_err();
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
        // Besides the one of this controller, for its user.
        let me = Pid::this().get();
        let target = pid(TARGET);
        assert_eq!(
            grantee(&Peer::default(), pid(200), target, &counting),
            Ok(client)
        );
        assert_eq!(counting.1.take(), [200, me]);
        assert_eq!(
            grantee(&Peer::default(), pid(201), target, &counting),
            Ok(client)
        );
        assert_eq!(counting.1.take(), [201, 200, me]);
    }

    #[test]
    fn what_is_never_a_debugger_is_refused_whatever_the_transport_tells() {
        let (table, _) = world();
        table.add(2, 0, 1);
        table.edit(2, |info| info.kernel_thread = true);
        let unverified = Peer::default();
        for (requested, why) in [
            (Pid::this().get(), "it is this controller"),
            (TARGET, "it is the target itself"),
            (1, "it is PID 1"),
            (2, "it is a kernel thread"),
        ] {
            assert_eq!(
                ask(&unverified, requested, &table),
                Err(format!("GRANT_ACCESS {requested} refused: {why}")),
            );
        }
        // Anything else of the user may be named over named pipes.
        assert_eq!(ask(&unverified, 400, &table).unwrap().pid, pid(400));
    }

    #[test]
    fn only_processes_of_the_controllers_user_may_be_granted() {
        let (table, client) = world();
        let peer = authenticated(Some(client));
        // A descendant of another user, and a setuid one (real uid ours).
        table.add(301, 200, 31);
        table.edit(301, |info| (info.uid, info.euid) = (2000, 2000));
        table.add(302, 200, 32);
        table.edit(302, |info| info.euid = 0);
        table.add(303, 200, 33);
        table.edit(303, |info| info.uid = 0);
        for peer in [&peer, &Peer::default()] {
            assert_eq!(
                ask(peer, 301, &table),
                Err(
                    "GRANT_ACCESS 301 refused: it runs as uid 2000 (effective), not as uid \
                     1000 like this controller"
                        .into()
                )
            );
            assert_eq!(
                ask(peer, 302, &table),
                Err(
                    "GRANT_ACCESS 302 refused: it runs as uid 0 (effective), not as uid 1000 \
                     like this controller (a setuid program)"
                        .into()
                )
            );
            assert_eq!(
                ask(peer, 303, &table),
                Err(
                    "GRANT_ACCESS 303 refused: it belongs to uid 0 (real), not to uid 1000 \
                     like this controller"
                        .into()
                )
            );
        }
        // Where the controller cannot tell who it runs as, nothing passes.
        table.remove(Pid::this().get());
        assert_eq!(
            ask(&peer, 300, &table),
            Err("Grant failed: cannot tell who this controller runs as".into())
        );
    }

    #[test]
    fn an_agent_attach_goes_to_the_process_that_asks_by_the_rules_of_grants() {
        let (table, client) = world();
        let attach = |peer: &Peer, table: &Table| agent_client(peer, pid(TARGET), table);
        // The process that asks, verified.
        assert_eq!(
            attach(&authenticated(Some(client)), &table),
            Ok(Some(client))
        );
        // A transport that cannot tell who asks: as for grants, anyone
        // who reaches it (its files are private).
        assert_eq!(attach(&Peer::default(), &table), Ok(None));
        assert_eq!(
            attach(&authenticated(None), &table),
            Err(
                "AGENT_ATTACH refused: your PID is unknown (pdb's sockets go only to a \
                 process this controller knows)"
                    .into()
            )
        );
        // What may never be a client's, may not ask either.
        let target = table.identity(pid(TARGET)).unwrap().unwrap();
        assert_eq!(
            attach(&authenticated(Some(target)), &table),
            Err(format!(
                "AGENT_ATTACH from PID {TARGET} refused: it is the target itself"
            ))
        );
        table.edit(200, |info| info.euid = 0);
        assert_eq!(
            attach(&authenticated(Some(client)), &table),
            Err(
                "AGENT_ATTACH from PID 200 refused: it runs as uid 0 (effective), not as uid \
                 1000 like this controller (a setuid program)"
                    .into()
            )
        );
        table.edit(200, |info| info.euid = 1000);
        // A process that is not the one that connected (its pid reused).
        let reused = ProcessId {
            start_time: 99,
            ..client
        };
        assert_eq!(
            attach(&authenticated(Some(reused)), &table),
            Err(
                "AGENT_ATTACH from PID 200 refused: it must be your own process or one of its \
                 descendants (you are PID 200)"
                    .into()
            )
        );
        table.remove(Pid::this().get());
        assert_eq!(
            attach(&authenticated(Some(client)), &table),
            Err("Attach failed: cannot tell who this controller runs as".into())
        );
    }

    /// The target's tree beside `world()`: 50 (the target) -> 51 -> 52;
    /// 53 a thread of 51, 54 a zombie child, 55 a setuid child, 56 a child
    /// of another user.
    fn tree() -> (Table, ProcessId) {
        let (table, _) = world();
        let target = table.identity(pid(TARGET)).unwrap().unwrap();
        table.add(51, TARGET, 5);
        table.add(52, 51, 6);
        table.add(53, TARGET, 5);
        table.edit(53, |info| info.process = pid(51));
        table.add(54, TARGET, 7);
        table.edit(54, |info| info.state = crate::process::ProcessState::Zombie);
        table.add(55, TARGET, 8);
        table.edit(55, |info| info.euid = 0);
        table.add(56, 51, 9);
        table.edit(56, |info| (info.uid, info.euid) = (2000, 2000));
        (table, target)
    }

    fn member(requested: u32, table: &Table, target: ProcessId) -> Result<ProcessId, Refusal> {
        tree_member(pid(requested), target, None, table, Use::Grant)
    }

    #[test]
    fn the_target_and_its_descendants_are_members_of_its_tree() {
        let (table, target) = tree();
        assert_eq!(member(TARGET, &table, target), Ok(target));
        for (raw, start_time) in [(51, 5), (52, 6)] {
            let id = ProcessId {
                pid: pid(raw),
                start_time,
            };
            assert_eq!(member(raw, &table, target), Ok(id));
            assert_eq!(
                tree_member(pid(raw), target, None, &table, Use::Stacks),
                Ok(id)
            );
        }
    }

    #[test]
    fn every_process_outside_the_rules_is_refused_by_name() {
        let (table, target) = tree();
        let me = Pid::this().get();
        let outside = |n: u32| {
            format!(
                "PID {n} is not in the target's process tree (only the target, PID {TARGET}, \
                 and its descendants may be granted)"
            )
        };
        for (requested, refusal) in [
            (1, outside(1)),
            (100, outside(100)),
            (200, outside(200)),
            (400, outside(400)),
            (me, format!("PID {me} is the controller itself")),
            (
                53,
                "PID 53 is a thread of process 51, not a process".to_owned(),
            ),
            (54, "PID 54 has exited (zombie)".to_owned()),
            (999, "PID 999 is not running".to_owned()),
            (
                55,
                "PID 55 runs as another user (uid 1000, euid 0; the controller runs as 1000)"
                    .to_owned(),
            ),
            (
                56,
                "PID 56 runs as another user (uid 2000, euid 2000; the controller runs as 1000)"
                    .to_owned(),
            ),
        ] {
            assert_eq!(
                member(requested, &table, target),
                Err(refusal),
                "{requested}"
            );
        }
        // For stacks, the same rule says what it is for.
        assert_eq!(
            tree_member(pid(400), target, None, &table, Use::Stacks),
            Err(
                "PID 400 is not in the target's process tree (only the target, PID 50, and its \
                 descendants may be read)"
                    .into()
            )
        );
    }

    #[test]
    fn a_process_of_a_former_target_or_a_reused_pid_is_not_a_member() {
        let (table, target) = tree();
        // The target as it was before a restart: nothing is in its tree.
        let former = ProcessId {
            start_time: target.start_time - 1,
            ..target
        };
        assert!(member(51, &table, former)
            .unwrap_err()
            .contains("is not in the target's process tree"));
        assert!(member(TARGET, &table, former)
            .unwrap_err()
            .contains("is not in the target's process tree"));
        // 52's pid went to a process older than its parent claims to be: a
        // reused pid, whatever its parent field says.
        table.add(52, 51, 4);
        assert!(member(52, &table, target)
            .unwrap_err()
            .contains("is not in the target's process tree"));
        // Re-parented to init (its parent died, no subreaper): outside.
        table.add(52, 1, 6);
        assert!(member(52, &table, target)
            .unwrap_err()
            .contains("is not in the target's process tree"));
    }

    #[test]
    fn a_subreapers_tree_holds_the_processes_it_adopted() {
        let (table, target) = tree();
        let me = table.identity(Pid::this()).unwrap().unwrap();
        // 52's parent died: the controller, a subreaper, adopted it; 57 is
        // a child of it.
        table.add(52, Pid::this().get(), 6);
        table.add(57, 52, 10);
        for raw in [52, 57] {
            let adopted = table.identity(pid(raw)).unwrap().unwrap();
            assert_eq!(
                tree_member(pid(raw), target, Some(me), &table, Use::Grant),
                Ok(adopted)
            );
            // Not without the subreaper.
            assert!(member(raw, &table, target)
                .unwrap_err()
                .contains("is not in the target's process tree"));
        }
        // The target's own descendants still are; the controller itself,
        // and processes outside it, are not.
        assert!(tree_member(pid(51), target, Some(me), &table, Use::Grant).is_ok());
        let myself = Pid::this().get();
        assert_eq!(
            tree_member(pid(myself), target, Some(me), &table, Use::Grant),
            Err(format!("PID {myself} is the controller itself"))
        );
        assert_eq!(
            tree_member(pid(400), target, Some(me), &table, Use::Stacks),
            Err(format!(
                "PID 400 is not in the target's process tree (only the target, PID {TARGET}, \
                 its descendants and the processes this controller adopted may be read)"
            ))
        );
        // The same rules for them: another user's is refused.
        table.edit(57, |info| info.euid = 0);
        assert_eq!(
            tree_member(pid(57), target, Some(me), &table, Use::Grant),
            Err(
                "PID 57 runs as another user (uid 1000, euid 0; the controller runs as 1000)"
                    .into()
            )
        );
    }

    #[test]
    fn another_user_is_one_whose_real_or_effective_uid_differs() {
        assert_eq!(other_user(1000, 1000, 1000), None);
        for (uid, euid) in [(0, 1000), (1000, 0), (2000, 2000)] {
            assert_eq!(
                other_user(uid, euid, 1000),
                Some(format!(
                    "runs as another user (uid {uid}, euid {euid}; the controller runs as 1000)"
                ))
            );
        }
    }

    #[test]
    fn a_tree_member_is_refused_when_the_controllers_user_is_unknown() {
        let (table, target) = tree();
        table.remove(Pid::this().get());
        assert_eq!(
            member(51, &table, target),
            Err("Cannot tell who this controller runs as".into())
        );
    }

    #[test]
    fn revoke_needs_the_grants_connection_or_its_holder() {
        let (_, client) = world();
        let grant = GrantRecord {
            holder: client,
            process: client,
            connection: 3,
            expires: None,
        };
        let on = |connection: u64, process: Option<ProcessId>| Peer {
            connection,
            credentials: Some(Credentials { uid: 1000, process }),
        };
        let stranger = ProcessId {
            pid: pid(400),
            start_time: 40,
        };
        // Its own connection, or the holder process on another one.
        assert_eq!(
            may_revoke(Some(&grant), &on(3, Some(stranger)), None),
            Ok(())
        );
        assert_eq!(may_revoke(Some(&grant), &on(9, Some(client)), None), Ok(()));
        assert_eq!(
            may_revoke(Some(&grant), &on(3, Some(stranger)), Some(pid(200))),
            Ok(())
        );
        // Anyone else is told who holds it.
        let refusal = "REVOKE refused: the grant is held by client PID 200; only its \
                       connection or that process may withdraw it (attach --force takes it over)";
        assert_eq!(
            may_revoke(Some(&grant), &on(9, Some(stranger)), None),
            Err(refusal.into())
        );
        assert_eq!(
            may_revoke(Some(&grant), &on(9, None), Some(pid(200))),
            Err(refusal.into())
        );
        // A pid that is not the holder's: nothing revoked, whoever asks.
        assert_eq!(
            may_revoke(Some(&grant), &on(3, Some(client)), Some(pid(300))),
            Err("The grant is held by client PID 200, not PID 300: nothing revoked".into())
        );
        // Nobody holds it: nothing to protect.
        assert_eq!(
            may_revoke(None, &on(9, Some(stranger)), Some(pid(5))),
            Ok(())
        );
        // Named pipes cannot tell connections apart: a grant made there
        // (connection 0) may be withdrawn by any of their requests.
        let fifo_grant = GrantRecord {
            connection: 0,
            ..grant
        };
        assert_eq!(
            may_revoke(Some(&fifo_grant), &Peer::default(), None),
            Ok(())
        );
    }
}
