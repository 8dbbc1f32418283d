//! The audit trail ([`Audit`](crate::Audit)): which requests and which
//! ends of grants make which records, what `AUDIT` answers, and that a
//! failing or stuck audit neither stops nor blocks the controller; they
//! use the fakes of [`super`].

use super::*;
use crate::audit::{AuditEvent, AuditRecord, AuditResult, ProcessFacts, RevokeCause};
use crate::Audit;

/// An audit that keeps its records; clones share them.
#[derive(Clone, Default)]
struct Kept {
    records: Arc<Mutex<Vec<AuditRecord>>>,
    /// `record` fails while set, as a full disk does.
    fail: Arc<AtomicBool>,
    /// `record` waits on this while set: a file on a hung mount.
    stuck: Arc<Mutex<Option<Receiver<()>>>>,
}

impl Audit for Kept {
    fn record(&mut self, record: &AuditRecord) -> io::Result<()> {
        let stuck = self.stuck.lock().unwrap().clone();
        if let Some(stuck) = stuck {
            let _ = stuck.recv_timeout(HANG);
        }
        if self.fail.load(SeqCst) {
            return Err(io::Error::other("No space left on device"));
        }
        self.records.lock().unwrap().push(record.clone());
        Ok(())
    }

    fn describe(&mut self, id: ProcessId) -> Option<ProcessFacts> {
        Some(ProcessFacts {
            exe: Some(format!("/usr/bin/prog{}", id.pid)),
            ..ProcessFacts::default()
        })
    }
}

impl Kept {
    /// The records kept once `count` are there (within [`HANG`]).
    fn wait_for(&self, count: usize) -> Vec<AuditRecord> {
        wait_until(&format!("{count} audit records"), || {
            self.records.lock().unwrap().len() >= count
        });
        self.records.lock().unwrap().clone()
    }
}

fn events(records: &[AuditRecord]) -> Vec<(AuditEvent, AuditResult, Option<RevokeCause>)> {
    records
        .iter()
        .map(|record| (record.event, record.result, record.cause))
        .collect()
}

#[test]
fn grants_revokes_and_refusals_are_recorded_with_the_verified_peer() {
    let audit = Kept::default();
    let (fake, granter, target) = controller();
    let client_id = target.0.table.identity(pid(77)).unwrap().unwrap();
    fake.authenticate(Some(client_id));
    let running = start(controller_over(&fake, &granter, &target).audit(audit.clone()));

    // A grant, then its revoke by request.
    let mut session = fake.client().session().unwrap();
    session.grant_access(pid(77)).unwrap();
    thread::sleep(Duration::from_millis(30));
    session.revoke(pid(77)).unwrap();
    // Another peer's grant on a process that is not its own: refused.
    fake.authenticate(Some(client_id));
    let refused = fake.raw(b"GRANT_ACCESS 88\n");
    assert!(refused.starts_with("ERROR: "), "{refused}");
    // A grant that ends with its connection.
    session.grant_access(pid(77)).unwrap();
    drop(session);
    let records = audit.wait_for(4);
    assert_eq!(
        events(&records[..4]),
        [
            (AuditEvent::Grant, AuditResult::Ok, None),
            (
                AuditEvent::Revoke,
                AuditResult::Ok,
                Some(RevokeCause::Request)
            ),
            (AuditEvent::Refusal, AuditResult::Refused, None),
            (AuditEvent::Grant, AuditResult::Ok, None),
        ]
    );
    let records = audit.wait_for(5);
    assert_eq!(records[4].event, AuditEvent::Revoke);
    assert_eq!(records[4].cause, Some(RevokeCause::Disconnect));

    let grant = &records[0];
    assert!(grant.peer.verified);
    assert_eq!(grant.peer.uid, Some(1000));
    assert_eq!(grant.peer.pid, Some(pid(77)));
    assert_eq!(grant.peer.start_time, Some(77));
    assert_eq!(grant.peer.facts.exe.as_deref(), Some("/usr/bin/prog77"));
    let grantee = grant.grantee.as_ref().unwrap();
    assert_eq!((grantee.pid, grantee.start_time), (77, Some(77)));
    assert_eq!(grantee.facts.exe.as_deref(), Some("/usr/bin/prog77"));
    assert_eq!(grant.process.as_ref().unwrap().pid, PID.get());
    assert_eq!(grant.method.as_deref(), Some("recorder"));
    assert_eq!(grant.request.as_deref(), Some("GRANT_ACCESS 77"));
    assert!(grant
        .session
        .starts_with(&format!("{}@", std::process::id())));
    assert!(
        grant.time.ends_with('Z') && grant.time.len() == 24,
        "{}",
        grant.time
    );
    // The revoke says how long the grant lasted.
    assert!(records[1].duration_ms.unwrap() >= 30, "{:?}", records[1]);
    assert!(
        records[2].reason.as_deref().unwrap().contains("88"),
        "{:?}",
        records[2]
    );

    // AUDIT answers with the same records, as JSON.
    let Reply::Audit(answered) = Reply::parse(&fake.raw(b"AUDIT\n")).unwrap() else {
        panic!("not an AUDIT reply");
    };
    assert_eq!(answered.len(), 5);
    assert_eq!(answered[0]["event"], "grant");
    assert_eq!(answered[0]["peer"]["exe"], "/usr/bin/prog77");
    assert_eq!(answered[4]["cause"], "disconnect");
    // Recent ones only: none in the last 0 seconds but those just made.
    let status = fake.client().status().unwrap();
    assert!(
        status.extra.contains(&("audit".into(), "ok".into())),
        "{status:?}"
    );
    running.terminate(&fake);
    let records = audit.wait_for(7);
    assert_eq!(records[5].event, AuditEvent::Status);
    assert_eq!(records[6].event, AuditEvent::Terminate);
}

#[test]
fn an_unverified_peer_is_recorded_with_what_it_claimed_only() {
    let audit = Kept::default();
    let (fake, granter, target) = controller();
    let running = start(controller_over(&fake, &granter, &target).audit(audit.clone()));
    fake.client().grant_access(pid(77)).unwrap();
    let records = audit.wait_for(1);
    let value = serde_json::to_value(&records[0]).unwrap();
    assert_eq!(
        value["peer"],
        serde_json::json!({"verified": false, "claimed_pid": 77})
    );
    assert_eq!(value["grantee"]["pid"], 77);
    running.terminate(&fake);
}

#[test]
fn a_failing_audit_is_in_status_and_the_controller_serves_on() {
    let audit = Kept::default();
    audit.fail.store(true, SeqCst);
    let (fake, granter, target) = controller();
    let running = start(controller_over(&fake, &granter, &target).audit(audit.clone()));
    let client = fake.client();
    client.status().unwrap();
    let failing = (
        "audit".to_owned(),
        "failing:No_space_left_on_device".to_owned(),
    );
    wait_until("audit=failing", || {
        client.status().unwrap().extra.contains(&failing)
    });
    assert!(running
        .logged()
        .iter()
        .all(|(_, text)| !text.contains("cannot record")));
    assert!(crate::test_log::lines()
        .iter()
        .any(|line| line.text.contains("audit: cannot record")));
    // Space again: back to ok, and the records kept in memory say all.
    audit.fail.store(false, SeqCst);
    let ok = ("audit".to_owned(), "ok".to_owned());
    wait_until("audit=ok", || client.status().unwrap().extra.contains(&ok));
    let status = client.status().unwrap();
    assert!(
        status
            .extra
            .iter()
            .any(|(key, _)| key == "audit_unrecorded"),
        "{status:?}"
    );
    running.terminate(&fake);
}

#[test]
fn a_stuck_audit_never_blocks_the_loop_and_lost_records_are_counted() {
    let audit = Kept::default();
    let (unstick, stuck) = bounded::<()>(0);
    *audit.stuck.lock().unwrap() = Some(stuck);
    let (fake, granter, target) = controller();
    let running = start(controller_over(&fake, &granter, &target).audit(audit.clone()));
    let client = fake.client();
    // Far more STATUS requests than the queue holds: each is answered at
    // once.
    let started = Instant::now();
    for _ in 0..crate::audit::AUDIT_QUEUE + 50 {
        client.status().unwrap();
    }
    assert!(started.elapsed() < HANG / 2);
    let status = client.status().unwrap();
    let lost: u64 = status
        .extra
        .iter()
        .find(|(key, _)| key == "audit_lost")
        .map(|(_, value)| value.parse().unwrap())
        .expect("audit_lost in STATUS");
    assert!(lost >= 40, "{lost}");
    drop(unstick);
    *audit.stuck.lock().unwrap() = None;
    running.terminate(&fake);
}

#[test]
fn a_grant_taken_over_and_one_ended_by_the_targets_exit_are_revokes_with_their_cause() {
    let audit = Kept::default();
    let (fake, granter, target) = controller();
    let running = start(controller_over(&fake, &granter, &target).audit(audit.clone()));
    let first = fake.granted(77);
    let first_connection = fake.last_connection();
    let mut second = fake.client().session().unwrap();
    second.take_over(pid(88)).unwrap();
    let records = audit.wait_for(3);
    assert_eq!(
        events(&records),
        [
            (AuditEvent::Grant, AuditResult::Ok, None),
            (
                AuditEvent::Revoke,
                AuditResult::Ok,
                Some(RevokeCause::TakenOver)
            ),
            (AuditEvent::Grant, AuditResult::Ok, None),
        ]
    );
    // The revoke is of the first holder's grant, on its connection.
    assert_eq!(records[1].grantee.as_ref().unwrap().pid, 77);
    assert_eq!(records[1].connection, first_connection);
    assert!(records[1].duration_ms.is_some());
    assert_eq!(records[2].request.as_deref(), Some("GRANT_ACCESS 88 FORCE"));
    // Its connection closing later records nothing more: it ended already.
    drop(first);
    target.exit(ExitStatus::Code(0));
    assert_eq!(running.join().unwrap(), ExitStatus::Code(0));
    let records = audit.wait_for(4);
    assert_eq!(records.len(), 4, "{records:#?}");
    assert_eq!(records[3].cause, Some(RevokeCause::ProcessExit));
    assert_eq!(records[3].grantee.as_ref().unwrap().pid, 88);
    drop(second);
}

#[test]
fn a_grant_whose_time_is_up_is_a_revoke_by_expiry_with_its_duration() {
    let audit = Kept::default();
    let (fake, granter, target) = controller();
    let controller = controller_over(&fake, &granter, &target)
        .max_grant(Duration::from_secs(600))
        .audit(audit.clone());
    let running = start(controller);
    let mut session = fake.client().session().unwrap();
    session
        .grant(GrantRequest::new(pid(77)).lasting(Duration::from_secs(1)))
        .unwrap();
    let records = audit.wait_for(2);
    assert_eq!(records[0].request.as_deref(), Some("GRANT_ACCESS 77 FOR 1"));
    let revoke = &records[1];
    assert_eq!(
        (revoke.event, revoke.cause),
        (AuditEvent::Revoke, Some(RevokeCause::Expired))
    );
    assert!(revoke.duration_ms.unwrap() >= 1000, "{revoke:?}");
    assert_eq!(revoke.grantee.as_ref().unwrap().pid, 77);
    // Its connection closing later records nothing more.
    drop(session);
    running.terminate(&fake);
    let records = audit.wait_for(3);
    assert_eq!(
        events(&records[2..]),
        [(AuditEvent::Terminate, AuditResult::Ok, None)]
    );
}

#[test]
fn the_end_of_a_verified_clients_debuggers_is_recorded() {
    let audit = Kept::default();
    let (fake, granter, target) = controller();
    fake.authenticate(Some(target.id_of(77)));
    let controller = controller_over(&fake, &granter, &target)
        .max_grant(Duration::from_secs(1))
        .limit_graces(Duration::from_millis(200), Duration::from_millis(200))
        .audit(audit.clone());
    let running = start(controller);
    let session = fake.granted(77);
    let connection = fake.last_connection();
    // Grant, its revoke by expiry, then SIGTERM and SIGKILL to what the
    // (pretend) client still runs.
    let records = audit.wait_for(4);
    let ended: Vec<&AuditRecord> = records
        .iter()
        .filter(|record| record.event == AuditEvent::DebuggersEnded)
        .collect();
    assert_eq!(ended.len(), 2, "{records:?}");
    for (record, signal) in ended.iter().zip([15, 9]) {
        assert_eq!(record.result, AuditResult::Ok);
        assert_eq!(record.connection, connection);
        assert!(record.peer.verified);
        assert_eq!(record.peer.pid, Some(pid(77)));
        assert_eq!(record.peer.start_time, Some(target.id_of(77).start_time));
        assert_eq!(record.grantee.as_ref().unwrap().pid, 77);
        assert_eq!(
            record.reason.as_deref(),
            Some(format!("its time was up: 1 of its processes sent signal {signal}").as_str())
        );
        assert!(record
            .to_json_line()
            .contains(r#""event":"debuggers_ended""#));
    }
    drop(session);
    running.terminate(&fake);
}

#[test]
fn a_grant_asked_for_again_keeps_its_start_and_the_revoke_its_whole_duration() {
    let audit = Kept::default();
    let (fake, granter, target) = controller();
    let client_id = target.0.table.identity(pid(77)).unwrap().unwrap();
    fake.authenticate(Some(client_id));
    let running = start(controller_over(&fake, &granter, &target).audit(audit.clone()));
    let mut session = fake.client().session().unwrap();
    session.grant_access(pid(77)).unwrap();
    thread::sleep(Duration::from_millis(300));
    // Asked again just before its end: the grant goes on, it does not
    // start anew (else a holder could make an hour's access look short).
    session.grant_access(pid(77)).unwrap();
    session.revoke(pid(77)).unwrap();
    let records = audit.wait_for(3);
    assert_eq!(
        events(&records[..3]),
        [
            (AuditEvent::Grant, AuditResult::Ok, None),
            (AuditEvent::Grant, AuditResult::Ok, None),
            (
                AuditEvent::Revoke,
                AuditResult::Ok,
                Some(RevokeCause::Request)
            ),
        ]
    );
    let lasted = records[2].duration_ms.unwrap();
    assert!(lasted >= 300, "the revoke says {lasted} ms");
    drop(session);
    running.terminate(&fake);
}

/// An audit whose processes run another program each time they are
/// described (as a process that `exec`s does, same pid and start time).
#[derive(Clone, Default)]
struct Execing {
    kept: Kept,
    described: Arc<AtomicUsize>,
}

impl Audit for Execing {
    fn record(&mut self, record: &AuditRecord) -> io::Result<()> {
        self.kept.record(record)
    }

    fn describe(&mut self, _: ProcessId) -> Option<ProcessFacts> {
        let n = self.described.fetch_add(1, SeqCst) + 1;
        Some(ProcessFacts {
            exe: Some(format!("/usr/bin/program{n}")),
            ..ProcessFacts::default()
        })
    }
}

#[test]
fn a_grant_describes_its_processes_anew_not_as_an_earlier_record_did() {
    let audit = Execing::default();
    let (fake, granter, target) = controller();
    let client_id = target.0.table.identity(pid(77)).unwrap().unwrap();
    fake.authenticate(Some(client_id));
    let running = start(controller_over(&fake, &granter, &target).audit(audit.clone()));
    let mut session = fake.client().session().unwrap();
    // Described at its STATUS, then (having exec'd another program, same
    // pid and start time) granted: the grant must say what runs now.
    session.status().unwrap();
    audit.kept.wait_for(1);
    session.grant_access(pid(77)).unwrap();
    let records = audit.kept.wait_for(2);
    assert_eq!(
        records[0].peer.facts.exe.as_deref(),
        Some("/usr/bin/program1")
    );
    let grant = &records[1];
    assert_eq!(grant.event, AuditEvent::Grant);
    let grantee = grant.grantee.as_ref().unwrap();
    assert_ne!(
        grantee.facts.exe.as_deref(),
        Some("/usr/bin/program1"),
        "the grantee as it was at an earlier record: {grant:?}"
    );
    assert_ne!(grant.peer.facts.exe.as_deref(), Some("/usr/bin/program1"));
    drop(session);
    running.terminate(&fake);
}

/// The only record of `event` among `records`.
fn only(records: &[AuditRecord], event: AuditEvent, request: &str) -> AuditRecord {
    let found: Vec<&AuditRecord> = records
        .iter()
        .filter(|record| record.event == event && record.request.as_deref() == Some(request))
        .collect();
    assert_eq!(found.len(), 1, "{event:?} {request}: {records:#?}");
    found[0].clone()
}

#[test]
fn each_kind_of_request_is_recorded_with_the_process_it_is_about() {
    let audit = Kept::default();
    let (fake, granter, target) = controller();
    add_workers(&target);
    fake.authenticate(Some(target.id_of(77)));
    let family = Family::of(&target, &[PID.get(), 5001]);
    let controller = controller_over(&fake, &granter, &target)
        .inspector(family)
        .audit(audit.clone());
    let running = start(controller);
    let worker = target.id_of(5001);
    // Reads of the tree, of the target and of one process.
    for line in [
        "PS",
        "STACK",
        "STACKS",
        "TASKS",
        "STACK 5001",
        "STACKS 5001",
        "TASKS 5001",
    ] {
        let reply = fake.raw(format!("{line}\n").as_bytes());
        assert!(!reply.starts_with("ERROR"), "{line}: {reply}");
    }
    let root = target.identity();
    // A process that is not there; a grant for another process than the
    // asker: refused, each recorded with the pid asked for.
    assert!(fake.raw(b"STACK 99999\n").starts_with("ERROR"));
    assert!(fake.raw(b"GRANT_ACCESS 5\n").starts_with("ERROR"));
    // A REVOKE of nothing withdraws nothing: no record. One refused is.
    assert_eq!(fake.raw(b"REVOKE\n"), "READY\n");
    let session = granted_on(&fake, 77, 5001);
    fake.authenticate(Some(target.id_of(88)));
    assert!(fake.raw(b"REVOKE 77 TARGET 5001\n").starts_with("ERROR"));
    fake.authenticate(Some(target.id_of(77)));
    // A transport that cannot pass pdb's sockets: refused, recorded with
    // its method.
    assert!(fake.raw(b"AGENT_ATTACH\n").starts_with("ERROR"));
    assert!(fake.raw(b"AGENT_ATTACH 5001\n").starts_with("ERROR"));
    // A profile of one process, to its end.
    let mut profile = fake.client().session().unwrap();
    profile
        .profile(
            crate::profile::ProfileRequest::new(Scope::Process(pid(5001)), 100).duration_ms(300),
        )
        .unwrap();
    let started = Instant::now();
    let mut collections = 0;
    loop {
        let samples = profile.samples(false).unwrap();
        collections += 1;
        if samples.ended.is_some() {
            break;
        }
        assert!(started.elapsed() < HANG);
        thread::sleep(Duration::from_millis(50));
    }
    assert!(collections > 1, "the profile ended at its first collection");
    let mut whole = fake.client().session().unwrap();
    whole
        .profile(crate::profile::ProfileRequest::new(Scope::All, 100).duration_ms(0))
        .unwrap();
    whole.samples(true).unwrap();
    let records = audit.wait_for(17);
    let about = |record: &AuditRecord| record.process.as_ref().map(|p| (p.pid, p.start_time));
    let of = |id: ProcessId| Some((id.pid.get(), Some(id.start_time)));
    for (line, id) in [
        ("PS", root),
        ("STACK", root),
        ("STACKS", root),
        ("TASKS", root),
        ("STACK 5001", worker),
        ("STACKS 5001", worker),
        ("TASKS 5001", worker),
    ] {
        let record = only(&records, AuditEvent::StackDump, line);
        assert_eq!(
            (record.result, about(&record)),
            (AuditResult::Ok, of(id)),
            "{line}"
        );
    }
    let missing = records
        .iter()
        .find(|record| record.request.as_deref() == Some("STACK 99999"))
        .unwrap();
    assert_eq!(about(missing), Some((99999, None)), "{missing:?}");
    let other = only(&records, AuditEvent::Refusal, "GRANT_ACCESS 5");
    let grantee = other.grantee.as_ref().unwrap();
    assert_eq!((grantee.pid, grantee.start_time), (5, None), "{other:?}");
    assert!(
        !records
            .iter()
            .any(|record| record.request.as_deref() == Some("REVOKE")),
        "{records:#?}"
    );
    let refused = only(&records, AuditEvent::Refusal, "REVOKE 77 TARGET 5001");
    assert_eq!(
        (refused.result, about(&refused)),
        (AuditResult::Refused, of(worker))
    );
    let grant = only(&records, AuditEvent::Grant, "GRANT_ACCESS 77 TARGET 5001");
    assert_eq!(about(&grant), of(worker));
    assert_eq!(grant.grantee.as_ref().unwrap().pid, 77);
    for (line, id) in [("AGENT_ATTACH", root), ("AGENT_ATTACH 5001", worker)] {
        let record = only(&records, AuditEvent::Refusal, line);
        assert_eq!(record.result, AuditResult::Refused, "{line}");
        assert_eq!(record.method.as_deref(), Some("agent"), "{line}");
        assert_eq!(about(&record), of(id), "{line}");
    }
    let start = only(&records, AuditEvent::ProfileStart, "PROFILE 100 300 5001");
    assert_eq!(about(&start), of(worker));
    let all = only(&records, AuditEvent::ProfileStart, "PROFILE 100 0 ALL");
    assert_eq!(about(&all), of(root));
    // One end per profile, however many collections: the first lasted its
    // 300 ms, the second ended at once by SAMPLES STOP.
    let ends: Vec<&AuditRecord> = records
        .iter()
        .filter(|record| record.event == AuditEvent::ProfileEnd)
        .collect();
    assert_eq!(ends.len(), 2, "{records:#?}");
    assert!(ends[0].duration_ms.unwrap() >= 300, "{:?}", ends[0]);
    assert_eq!(ends[1].request.as_deref(), Some("SAMPLES STOP"));
    assert!(ends[1].duration_ms.unwrap() < 300, "{:?}", ends[1]);
    drop((session, profile, whole));
    running.terminate(&fake);
}
