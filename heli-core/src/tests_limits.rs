//! Time limits: `GRANT_ACCESS ... FOR <secs>`, the controller's longest
//! grant, a grant withdrawn once its time is up, and the end of a verified
//! client's debuggers and connection after its grace; with the fakes of
//! [`super`].

use super::*;
use crate::protocol::Request;

/// SIGTERM and SIGKILL, as the controller sends them.
const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

/// Graces short enough to wait for.
const CLIENT_GRACE: Duration = Duration::from_millis(300);
const KILL_GRACE: Duration = Duration::from_millis(200);

/// A controller whose grants last `most` at most, with short graces, its
/// clients verified as process `client` when `verified`.
fn limited(most: Duration, verified: Option<u32>) -> (Fake, Recorder, Pretend, Running) {
    let (fake, granter, target) = controller();
    if let Some(client) = verified {
        fake.authenticate(Some(target.id_of(client)));
    }
    let controller = controller_over(&fake, &granter, &target)
        .max_grant(most)
        .limit_graces(CLIENT_GRACE, KILL_GRACE);
    let running = start(controller);
    (fake, granter, target, running)
}

/// The time left of each grant, as `STATUS` says.
fn time_left(fake: &Fake) -> Option<String> {
    let status = fake.client().status().unwrap();
    status.get("time_left").map(str::to_owned)
}

#[test]
fn for_is_sent_and_read_in_whole_seconds_and_checked() {
    let grant = GrantRequest::new(pid(9)).force(true);
    let line = |grant: GrantRequest| Request::GrantAccess(grant).to_string();
    assert_eq!(
        line(grant.lasting(Duration::from_millis(1500))),
        "GRANT_ACCESS 9 FORCE FOR 2"
    );
    assert_eq!(
        line(
            GrantRequest::new(pid(9))
                .process(pid(50))
                .lasting(Duration::from_secs(60))
        ),
        "GRANT_ACCESS 9 TARGET 50 FOR 60"
    );
    let parsed = |text: &str| crate::protocol::parse_request(text.as_bytes()).map(|(r, _)| r);
    assert_eq!(
        parsed("grant_access 9 for 600").unwrap(),
        Request::GrantAccess(GrantRequest::new(pid(9)).lasting(Duration::from_secs(600)))
    );
    assert_eq!(
        parsed("GRANT_ACCESS 9 TARGET 50 FORCE FOR 1").unwrap(),
        Request::GrantAccess(
            GrantRequest::new(pid(9))
                .process(pid(50))
                .force(true)
                .lasting(Duration::from_secs(1))
        )
    );
    let week = crate::protocol::MAX_GRANT.as_secs();
    for bad in [
        "GRANT_ACCESS 9 FOR 0".to_owned(),
        "GRANT_ACCESS 9 FOR -5".to_owned(),
        "GRANT_ACCESS 9 FOR 1.5".to_owned(),
        "GRANT_ACCESS 9 FOR".to_owned(),
        "GRANT_ACCESS 9 FOR soon".to_owned(),
        format!("GRANT_ACCESS 9 FOR {}", week + 1),
        "GRANT_ACCESS 9 FOR 99999999999999999999999".to_owned(),
    ] {
        let err = parsed(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidDuration, "{bad}");
        assert!(err.message().contains("1 to 604800"), "{bad}: {err}");
    }
    assert!(parsed(&format!("GRANT_ACCESS 9 FOR {week}")).is_ok());
    // FOR comes last, FORCE before it.
    assert!(parsed("GRANT_ACCESS 9 FOR 5 FORCE").is_err());
}

#[test]
fn a_grant_longer_than_the_controller_allows_is_refused_and_status_says_the_limit() {
    let (fake, granter, _, running) = limited(Duration::from_secs(60), None);
    assert_eq!(
        fake.raw(b"GRANT_ACCESS 77 FOR 61\n"),
        "ERROR: GRANT_ACCESS 77 refused: asked for 61 s; this controller grants 60 s at most (--max-grant)\n"
    );
    assert!(granter.granted().is_empty());
    let status = fake.client().status().unwrap();
    assert_eq!(status.get("max_grant"), Some("60"));
    assert_eq!(status.get("time_left"), None);
    // As long as allowed: granted, and counted down.
    let mut session = fake.client().session().unwrap();
    session
        .grant(GrantRequest::new(pid(77)).lasting(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(time_left(&fake).as_deref(), Some("4242:60"));
    drop(session);
    running.terminate(&fake);
}

#[test]
fn a_grant_is_withdrawn_once_its_time_is_up() {
    let (fake, granter, _, running) = limited(Duration::from_secs(600), None);
    let mut session = fake.client().session().unwrap();
    let asked = Instant::now();
    session
        .grant(GrantRequest::new(pid(77)).lasting(Duration::from_secs(1)))
        .unwrap();
    let connection = fake.last_connection();
    assert_eq!(time_left(&fake).as_deref(), Some("4242:1"));
    assert_eq!(fake.grant_holders(), [connection]);
    wait_until("the grant withdrawn", || granter.revoked() == [PID]);
    assert!(asked.elapsed() >= Duration::from_secs(1));
    let status = fake.client().status().unwrap();
    assert_eq!((status.holder, status.get("time_left")), (None, None));
    assert!(fake.grant_holders().is_empty());
    assert!(running
        .logged()
        .iter()
        .any(|(_, line)| line.contains("the time of client PID 77 on target 4242 is up")));
    drop(session);
    running.terminate(&fake);
}

#[test]
fn a_grant_without_for_gets_the_controllers_limit() {
    let (fake, granter, _, running) = limited(Duration::from_secs(1), None);
    let session = fake.granted(77);
    assert_eq!(time_left(&fake).as_deref(), Some("4242:1"));
    wait_until("the grant withdrawn", || granter.revoked() == [PID]);
    drop(session);
    running.terminate(&fake);
}

#[test]
fn without_a_limit_a_grant_lasts_until_withdrawn() {
    let (fake, granter, _, running) = started();
    let status = fake.client().status().unwrap();
    assert_eq!(status.get("max_grant"), None);
    let session = fake.granted(77);
    thread::sleep(Duration::from_millis(1200));
    assert!(granter.revoked().is_empty());
    assert_eq!(time_left(&fake), None);
    // A client may still limit its own.
    drop(session);
    wait_until("the grant withdrawn", || granter.revoked().len() == 1);
    let mut session = fake.client().session().unwrap();
    session
        .grant(GrantRequest::new(pid(77)).lasting(Duration::from_secs(1)))
        .unwrap();
    wait_until("the limited grant withdrawn", || {
        granter.revoked().len() == 2
    });
    drop(session);
    running.terminate(&fake);
}

#[test]
fn a_verified_client_that_outlives_its_time_has_its_debuggers_ended_and_is_disconnected() {
    let (fake, granter, target, running) = limited(Duration::from_secs(1), Some(77));
    let client = target.id_of(77);
    let session = fake.granted(77);
    let connection = fake.last_connection();
    wait_until("the grant withdrawn", || granter.revoked() == [PID]);
    let signalled = || target.0.descendants_signalled.lock().unwrap().clone();
    // The client's grace first: nothing ended yet.
    assert!(signalled().is_empty());
    wait_until("SIGTERM", || !signalled().is_empty());
    assert_eq!(signalled(), [(client, SIGTERM)]);
    // The connection is closed right after the signal.
    let closed = || fake.0.closed.lock().unwrap().clone();
    wait_until("the connection closed", || !closed().is_empty());
    let closed = closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].0, connection);
    assert!(closed[0].1.contains("time limit"), "{}", closed[0].1);
    wait_until("SIGKILL", || signalled().len() == 2);
    assert_eq!(signalled(), [(client, SIGTERM), (client, SIGKILL)]);
    thread::sleep(KILL_GRACE * 2);
    assert_eq!(signalled().len(), 2, "ended more than once");
    assert!(running
        .logged()
        .iter()
        .any(|(level, line)| *level == log::Level::Warn
            && line.contains("client PID 77 still debugs")));
    drop(session);
    running.terminate(&fake);
}

#[test]
fn a_client_that_withdrew_its_grant_early_still_has_its_debuggers_ended_at_its_time() {
    // A debugger keeps its session with the target after a REVOKE: the
    // time limit bounds the session, not the grant only.
    let (fake, granter, target, running) = limited(Duration::from_secs(1), Some(77));
    let mut session = fake.granted(77);
    session.revoke(pid(77)).unwrap();
    assert_eq!(granter.revoked(), [PID]);
    let signalled = || target.0.descendants_signalled.lock().unwrap().clone();
    thread::sleep(Duration::from_millis(500));
    assert!(signalled().is_empty(), "ended before its time");
    wait_until("SIGTERM", || !signalled().is_empty());
    assert_eq!(signalled()[0], (target.id_of(77), SIGTERM));
    drop(session);
    running.terminate(&fake);
}

#[test]
fn a_client_holding_a_later_grant_keeps_its_debuggers() {
    let (fake, granter, target, running) = limited(Duration::from_secs(3), Some(77));
    let mut first = fake.client().session().unwrap();
    first
        .grant(GrantRequest::new(pid(77)).lasting(Duration::from_secs(1)))
        .unwrap();
    // Its time is up; it asks again, within its grace.
    wait_until("the grant withdrawn", || granter.revoked() == [PID]);
    let second = fake.granted(77);
    thread::sleep(CLIENT_GRACE + KILL_GRACE + Duration::from_millis(300));
    let signalled = target.0.descendants_signalled.lock().unwrap().clone();
    assert!(signalled.is_empty(), "{signalled:?}");
    assert!(fake.0.closed.lock().unwrap().is_empty());
    drop((first, second));
    running.terminate(&fake);
}

#[test]
fn a_client_holding_a_grant_without_a_limit_keeps_its_debuggers() {
    // No --max-grant: a client limited its first grant itself, then asked
    // for one without a limit, on the target; another client's limited
    // grant on another process is ended as usual.
    let (fake, granter, target) = controller();
    add_workers(&target);
    fake.authenticate(Some(target.id_of(77)));
    let running =
        start(controller_over(&fake, &granter, &target).limit_graces(CLIENT_GRACE, KILL_GRACE));
    let mut first = fake.client().session().unwrap();
    first
        .grant(GrantRequest::new(pid(77)).lasting(Duration::from_secs(1)))
        .unwrap();
    wait_until("the grant withdrawn", || granter.revoked() == [PID]);
    let unlimited = fake.granted(77);
    assert_eq!(time_left(&fake), None);
    fake.authenticate(Some(target.id_of(88)));
    let mut other = fake.client().session().unwrap();
    other
        .grant(
            GrantRequest::new(pid(88))
                .process(pid(5001))
                .lasting(Duration::from_secs(1)),
        )
        .unwrap();
    let signalled = || target.0.descendants_signalled.lock().unwrap().clone();
    wait_until("client 88 ended", || !signalled().is_empty());
    thread::sleep(KILL_GRACE + Duration::from_millis(300));
    assert_eq!(
        signalled(),
        [(target.id_of(88), SIGTERM), (target.id_of(88), SIGKILL)]
    );
    drop((first, unlimited, other));
    running.terminate(&fake);
}

#[test]
fn an_unverified_client_has_its_grant_withdrawn_and_nothing_ended_on_its_word() {
    // Named pipes: the pid in the request proves nothing.
    let (fake, granter, target, running) = limited(Duration::from_secs(1), None);
    let session = fake.granted(77);
    wait_until("the grant withdrawn", || granter.revoked() == [PID]);
    thread::sleep(CLIENT_GRACE + KILL_GRACE + Duration::from_millis(300));
    assert!(target.0.descendants_signalled.lock().unwrap().is_empty());
    assert!(fake.0.closed.lock().unwrap().is_empty());
    drop(session);
    running.terminate(&fake);
}

#[test]
fn a_grant_still_being_made_when_the_clients_time_is_up_does_not_spare_its_debuggers() {
    // A client outlives its time, then asks for another grant just before
    // its grace is over, one that cannot be made (a process that does not
    // answer, until the grant's deadline). A grant still being made is no
    // grant without a time limit: its debuggers are ended on time, not
    // spared for good once the grant fails.
    let (fake, granter, target) = controller();
    fake.authenticate(Some(target.id_of(77)));
    let controller = controller_over(&fake, &granter, &target)
        .max_grant(Duration::from_secs(1))
        .limit_graces(CLIENT_GRACE, KILL_GRACE)
        .grant_deadline(Duration::from_secs(3));
    let running = start(controller);
    let session = fake.granted(77);
    wait_until("the grant withdrawn", || granter.revoked() == [PID]);
    let started = granter.stick(Some(Stuck::UntilDeadline));
    let late = fake.raw_async(b"GRANT_ACCESS 77\n");
    started
        .recv_timeout(HANG)
        .expect("the second grant did not start");
    let signalled = || target.0.descendants_signalled.lock().unwrap().clone();
    wait_until("SIGTERM", || !signalled().is_empty());
    assert_eq!(signalled()[0], (target.id_of(77), SIGTERM));
    let late = String::from_utf8(late.recv_timeout(HANG).unwrap().unwrap()).unwrap();
    assert!(late.starts_with("ERROR"), "{late}");
    wait_until("SIGKILL", || signalled().len() == 2);
    drop(session);
    running.terminate(&fake);
}

#[test]
fn absurd_durations_through_the_library_are_bounded_not_a_panic() {
    // The protocol's FOR is bounded to a week; the library's own setters
    // take any Duration. A client's line says FOR with a number the
    // controller refuses, and a controller's longest grant is a week.
    let line = Request::GrantAccess(GrantRequest::new(pid(9)).lasting(Duration::MAX)).to_string();
    assert_eq!(line, format!("GRANT_ACCESS 9 FOR {}", u64::MAX));
    let (fake, granter, _, running) = limited(Duration::MAX, None);
    let status = fake.client().status().unwrap();
    let week = crate::protocol::MAX_GRANT.as_secs();
    assert_eq!(status.get("max_grant"), Some(week.to_string().as_str()));
    let session = fake.granted(77);
    assert_eq!(granter.granted(), [(PID, 77)]);
    assert_eq!(time_left(&fake), Some(format!("4242:{week}")));
    drop(session);
    running.terminate(&fake);
}

#[test]
fn the_time_left_of_a_grant_whose_client_exited_is_not_shown() {
    let (fake, _, target, running) = limited(Duration::from_secs(60), None);
    let session = fake.granted(77);
    assert_eq!(time_left(&fake).as_deref(), Some("4242:60"));
    // Its client exits: its grant is no longer listed, nor its time.
    target.table().remove(77);
    let status = fake.client().status().unwrap();
    assert!(status.grants.is_empty(), "{status:?}");
    assert_eq!(status.get("time_left"), None);
    drop(session);
    running.terminate(&fake);
}
