//! More unit tests of the tree feature (grants on the processes of the
//! tree, PS, STACKS), written to catch mutants cargo-mutants found the
//! other tests missed; they use the fakes of [`super`].

use super::*;
use crate::stacks::ProcessStacks;

#[test]
fn client_sends_grants_and_revokes_of_the_tree_and_reports_refusals() {
    let (fake, server) = scripted(&[
        Some(b"ERROR: PID 5000 is not running\n"),
        Some(b"ERROR: REVOKE refused\n"),
        Some(b"READY\n"),
        Some(b"READY\n"),
    ]);
    let client = fake.client();
    let results = within(move || {
        [
            client.grant(GrantRequest::new(pid(9)).process(pid(5000)).force(true)),
            client.revoke_grant(RevokeRequest::new().client(pid(9)).process(pid(5000))),
            client.grant(GrantRequest::new(pid(9)).process(pid(5000))),
            client.revoke_grant(RevokeRequest::new().process(pid(5000))),
        ]
    });
    let [grant, revoke, granted, revoked] = results;
    let err = grant.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(err.message(), "PID 5000 is not running");
    let err = revoke.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(err.message(), "REVOKE refused");
    granted.unwrap();
    revoked.unwrap();
    assert_eq!(
        server.join().unwrap(),
        [
            "GRANT_ACCESS 9 TARGET 5000 FORCE\n",
            "REVOKE 9 TARGET 5000\n",
            "GRANT_ACCESS 9 TARGET 5000\n",
            "REVOKE TARGET 5000\n",
        ]
    );
}

#[test]
fn a_failed_revoke_on_a_frozen_process_waits_without_spinning_until_it_thaws() {
    let (fake, granter, target, running) = started_tree();
    let session = granted_on(&fake, 77, 5001);
    granter.fail_revokes(1);
    drop(session);
    wait_until("a revoke tried", || granter.revoke_attempts() >= 1);
    // Frozen before its retry is due (a second after the failure).
    target.0.frozen_others.lock().unwrap().push(5001);
    let looks = target.0.frozen_looks.load(SeqCst);
    thread::sleep(Duration::from_millis(2500));
    // Not tried again while frozen, and looked at about once a second,
    // not in a busy loop.
    assert_eq!(granter.revoke_attempts(), 1);
    let looked = target.0.frozen_looks.load(SeqCst) - looks;
    assert!((1..=10).contains(&looked), "{looked} looks at the freezer");
    assert_eq!(grants_listed(&fake), [(5001, 77)]);
    // Thawed, it is withdrawn.
    target.0.frozen_others.lock().unwrap().clear();
    wait_until("the grant revoked", || granter.revoked() == [pid(5001)]);
    assert!(grants_listed(&fake).is_empty());
    running.terminate(&fake);
}

#[test]
fn stacks_of_the_whole_tree_skip_another_users_process() {
    let (fake, _, target) = controller();
    add_workers(&target);
    // 5005, a Python child of 5001, runs setuid root.
    target.table().add(5005, 5001, 5005);
    target.table().edit(5005, |info| info.euid = 0);
    let family = Family::of(&target, &[4242, 5005]);
    let running = start(controller_over(&fake, &Recorder::default(), &target).inspector(family));
    let all = fake.client().stacks(Scope::All).unwrap();
    let rows: Vec<(u32, usize, Option<&str>)> = all
        .iter()
        .map(|p| (p.pid.get(), p.threads.len(), p.skipped.as_deref()))
        .collect();
    let not_python = Some("not a Python 3.14 process");
    assert_eq!(
        rows,
        [
            (4242, 1, None),
            (5000, 0, not_python),
            (5001, 0, not_python),
            (5002, 0, not_python),
            (
                5005,
                0,
                Some("runs as another user (uid 1000, euid 0; the controller runs as 1000)")
            ),
        ]
    );
    running.terminate(&fake);
}

#[test]
fn a_revoke_of_the_targets_grant_whose_revoke_failed_withdraws_it_for_good() {
    let (fake, granter, _, running) = started_tree();
    let session = fake.granted(77);
    granter.fail_revokes(1);
    drop(session);
    wait_until("a revoke tried", || granter.revoke_attempts() >= 1);
    assert_eq!(grants_listed(&fake), [(4242, 77)]);
    // Asked again before its retry: that revoke is the withdrawal, and
    // once it succeeded nothing is left to try again.
    assert_eq!(fake.raw(b"REVOKE\n"), "READY\n");
    assert_eq!(granter.revoked(), [PID]);
    assert!(grants_listed(&fake).is_empty());
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(granter.revoke_attempts(), 2);
    running.terminate(&fake);
}

#[test]
fn stacks_of_more_than_the_target_tell_ps_that_it_forked() {
    let (fake, _, target) = controller();
    let running = start(
        controller_over(&fake, &Recorder::default(), &target)
            .inspector(Family::of(&target, &[4242])),
    );
    let client = fake.client();
    // The target's stacks alone, of a target without children: no fork.
    assert_eq!(client.stacks(Scope::All).unwrap().len(), 1);
    assert_eq!(client.stacks(Scope::Target).unwrap().len(), 1);
    assert!(!client.ps().unwrap().forked);
    // Children seen by STACKS ALL only, gone before PS: it forked.
    add_workers(&target);
    assert_eq!(client.stacks(Scope::All).unwrap().len(), 4);
    for worker in [5000, 5001, 5002] {
        target.table().remove(worker);
    }
    let tree = client.ps().unwrap();
    assert_eq!((tree.processes.len(), tree.forked), (1, true));
    running.terminate(&fake);
}

#[test]
fn a_failed_revoke_is_tried_again_a_while_later_not_at_once() {
    let (fake, granter, _, running) = started_tree();
    let session = granted_on(&fake, 77, 5001);
    granter.fail_revokes(1);
    let dropped = Instant::now();
    drop(session);
    wait_until("the grant revoked", || granter.revoked() == [pid(5001)]);
    assert_eq!(granter.revoke_attempts(), 2);
    // The retry came a second after the failure.
    let took = dropped.elapsed();
    assert!(took >= Duration::from_secs(1), "retried after {took:?}");
    running.terminate(&fake);
}

#[test]
fn a_late_grant_that_cannot_be_withdrawn_is_listed_beside_other_processes_grants() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let running =
        start(controller_over(&fake, &granter, &target).grant_deadline(Duration::from_millis(300)));
    let _on_target = fake.granted(88);
    let started = granter.stick(Some(Stuck::Late(Duration::from_millis(600))));
    // The undo fails, and the first retry.
    granter.fail_revokes(2);
    let reply = fake.raw(b"GRANT_ACCESS 77 TARGET 5001\n");
    assert!(reply.starts_with("ERROR: Grant failed"), "{reply}");
    started.recv_timeout(HANG).unwrap();
    granter.stick(None);
    // A grant on another process does not replace it: it is listed, then
    // withdrawn.
    wait_until("the late grant listed", || {
        grants_listed(&fake) == [(4242, 88), (5001, 77)]
    });
    wait_until("the late grant withdrawn", || {
        granter.revoked() == [pid(5001)]
    });
    assert_eq!(grants_listed(&fake), [(4242, 88)]);
    running.terminate(&fake);
}

#[test]
fn a_late_grant_whose_undo_failed_leaves_a_grant_made_after_it_alone() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let running = start(
        controller_over(&fake, &granter, &target).grant_deadline(Duration::from_millis(1000)),
    );
    // Late past the deadline and the worker's grace (250 ms), but not by so
    // much that the grant asked after it runs out of time.
    let started = granter.stick(Some(Stuck::Late(Duration::from_millis(1600))));
    granter.fail_revokes(1);
    let reply = fake.raw(b"GRANT_ACCESS 77 TARGET 5001\n");
    assert!(reply.starts_with("ERROR: Grant failed"), "{reply}");
    started.recv_timeout(HANG).unwrap();
    granter.stick(None);
    // Another client's grant on that process, queued behind the late one:
    // it replaces the late grant, which is not withdrawn after it.
    let _session = granted_on(&fake, 88, 5001);
    assert_eq!(granter.revoke_attempts(), 1);
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(granter.revoke_attempts(), 1);
    assert!(granter.revoked().is_empty());
    assert_eq!(grants_listed(&fake), [(5001, 88)]);
    running.terminate(&fake);
}

#[test]
fn a_ps_reply_that_fits_to_the_byte_once_one_process_is_out_keeps_every_other() {
    use crate::protocol::MAX_REPLY;
    const ROOM: usize = MAX_REPLY - 100;
    let size = |tree: &Tree| serde_json::to_string(tree).unwrap().len();
    let note =
        |listed: usize| format!("{listed} processes left out to fit a reply of {MAX_REPLY} bytes");
    // As many workers with 3 KB command lines (4-digit pids: all as long
    // in JSON) as fit with the note of one more left out, the array's
    // commas counted...
    let each = serde_json::to_string(&with_command(5000, 3000))
        .unwrap()
        .len();
    let mut empty = Tree::new(vec![], false);
    empty.cut = Some(note(1000));
    let base = size(&empty);
    let count = (ROOM - base + 1) / (each + 1);
    let mut kept: Vec<TreeProcess> = (0..count as u32)
        .map(|n| with_command(5000 + n, 3000))
        .collect();
    // ...their command lines lengthened (never past what a reply keeps
    // whole) until that is exactly the room a PS reply has.
    let mut missing = ROOM - (base + count * (each + 1) - 1);
    for process in kept.iter_mut().rev() {
        let add = missing.min(1000);
        process.command.push_str(&"y".repeat(add));
        missing -= add;
    }
    let mut tree = Tree::new(kept.clone(), false);
    tree.cut = Some(note(count + 1));
    assert!((1000..10_000).contains(&(count + 1)), "the note's 4 digits");
    assert_eq!(size(&tree), ROOM);
    // And one more worker, which is left out, and it alone.
    let mut all = kept.clone();
    all.push(with_command(5000 + count as u32, 3000));
    let fitted = crate::event_loop::fit_tree(Tree::new(all, false));
    ps_fits_a_reply(&fitted);
    assert_eq!(fitted.processes, kept);
    assert_eq!(fitted.cut, Some(note(1)));
}

#[test]
fn a_command_line_cut_inside_a_character_is_cut_before_it() {
    // `é` is two bytes: the cut at 4096 bytes would fall inside one.
    let mut process = TreeProcess::new(pid(5000));
    process.command = format!("{}{}", "a".repeat(4095), "é".repeat(2_500_000));
    let fitted = crate::event_loop::fit_tree(Tree::new(vec![process], false));
    assert_eq!(
        fitted.processes[0].command,
        format!(
            "{}... (cut: the command line is {} bytes)",
            "a".repeat(4095),
            4095 + 5_000_000
        )
    );
}

/// A tree of workers with command lines short enough to be kept whole,
/// whose JSON is exactly `bytes` long.
fn tree_of_size(bytes: usize) -> Tree {
    let size = |tree: &Tree| serde_json::to_string(tree).unwrap().len();
    // Every worker as long in JSON (4-digit pids), a comma between two.
    let each = serde_json::to_string(&with_command(5000, 3000))
        .unwrap()
        .len();
    let base = size(&Tree::new(vec![], false));
    let count = (bytes - base).div_ceil(each + 1);
    let mut tree = Tree::new(
        (0..count as u32)
            .map(|n| with_command(5000 + n, 3000))
            .collect(),
        false,
    );
    let over = size(&tree) - bytes;
    let last = tree.processes.last_mut().unwrap();
    last.command.truncate(last.command.len() - over);
    assert_eq!(size(&tree), bytes);
    tree
}

#[test]
fn a_ps_reply_a_little_too_long_is_cut_to_fit_a_reply_line() {
    use crate::protocol::{Dialect, MAX_REPLY};
    for bytes in [MAX_REPLY - 3, MAX_REPLY + 50] {
        let fitted = crate::event_loop::fit_tree(tree_of_size(bytes));
        assert!(fitted.cut.is_some(), "{bytes}: nothing cut");
        let line = Reply::Ps(fitted).encode(Dialect::Upper);
        assert!(line.len() <= MAX_REPLY, "{bytes}: {}", line.len());
    }
}

/// One process with one thread of `frames` frames, each with a file name
/// of `name` bytes.
fn deep_stack(frames: usize, name: usize) -> Vec<ProcessStacks> {
    let mut thread = ThreadStack::new(5001);
    thread.frames = (0..frames)
        .map(|n| {
            let file = format!("{n:06}{}", "f".repeat(name - 6));
            crate::stacks::Frame::new("work", file, Some(1))
        })
        .collect();
    let mut process = ProcessStacks::new(pid(5001));
    process.threads.push(thread);
    vec![process]
}

#[test]
fn a_stacks_reply_too_long_keeps_as_many_of_the_newest_frames_as_fit() {
    use crate::protocol::{Dialect, MAX_REPLY};
    const ROOM: usize = MAX_REPLY - 100;
    let size = |stacks: &[ProcessStacks]| serde_json::to_string(stacks).unwrap().len();
    // A little more than a reply line holds, and much more.
    for (frames, name) in [(1025, 4096), (2100, 4096)] {
        let stacks = deep_stack(frames, name);
        assert!(size(&stacks) > MAX_REPLY);
        let fitted = crate::event_loop::fit_stacks(stacks.clone());
        let line = Reply::Stacks(fitted.clone()).encode(Dialect::Upper);
        assert!(line.len() <= MAX_REPLY, "{frames}: {}", line.len());
        // Within the room a reply leaves for its word and escapes.
        assert!(size(&fitted) <= ROOM, "{frames}: {}", size(&fitted));
        let kept = &fitted[0].threads[0];
        let newest = &stacks[0].threads[0].frames;
        let count = kept.frames.len();
        assert!(count > 0 && count < frames, "{frames}: {count}");
        // The newest frames, and as many as fit: one more does not.
        assert_eq!(kept.frames[..], newest[frames - count..]);
        let mut one_more = fitted.clone();
        one_more[0].threads[0]
            .frames
            .insert(0, newest[frames - count - 1].clone());
        assert!(
            size(&one_more) > ROOM,
            "{frames}: {count} frames kept, one more fits"
        );
    }
}

#[test]
fn a_late_grant_withdrawn_at_once_is_listed_nowhere_and_withdrawn_once() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let running = start(
        controller_over(&fake, &granter, &target).grant_deadline(Duration::from_millis(1000)),
    );
    let started = granter.stick(Some(Stuck::Late(Duration::from_millis(1600))));
    let reply = fake.raw(b"GRANT_ACCESS 77 TARGET 5001\n");
    assert!(reply.starts_with("ERROR: Grant failed"), "{reply}");
    started.recv_timeout(HANG).unwrap();
    granter.stick(None);
    wait_until("the late grant withdrawn", || {
        granter.revoke_attempts() == 1
    });
    // Withdrawn: not in force, and not withdrawn again a second later.
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(granter.revoke_attempts(), 1);
    assert!(grants_listed(&fake).is_empty());
    running.terminate(&fake);
}

#[test]
fn a_grant_not_started_in_time_names_the_process_the_granter_is_busy_with() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let running =
        start(controller_over(&fake, &granter, &target).grant_deadline(Duration::from_millis(800)));
    let started = granter.stick(Some(Stuck::Late(Duration::from_millis(2500))));
    let first = thread::spawn({
        let client = fake.client();
        move || client.grant(GrantRequest::new(pid(77)).process(pid(5001)))
    });
    started.recv_timeout(HANG).unwrap();
    let err = fake
        .client()
        .grant(GrantRequest::new(pid(88)).process(pid(5002)))
        .unwrap_err();
    assert!(
        err.message()
            .contains("the granter is still busy with earlier work on PID 5001"),
        "{err}"
    );
    assert!(first.join().unwrap().is_err());
    granter.stick(None);
    running.terminate(&fake);
}

/// A grant made on a worker as its connection closes is withdrawn, and
/// only it: another client's grant on another process stays in force.
#[test]
fn a_grant_made_as_its_connection_closes_takes_no_other_process_s_grant() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let running = start(controller_over(&fake, &granter, &target));
    let _holder = granted_on(&fake, 88, 5002);
    let (done, report) = granter.hold_next_report();
    let mut connection = fake.connect(HANG).unwrap();
    let asked = connection.round_trip(b"GRANT_ACCESS 77 TARGET 5001\n", Instant::now());
    assert_eq!(asked.unwrap_err().kind(), io::ErrorKind::TimedOut);
    done.recv_timeout(HANG).expect("the grant was not made");
    drop(connection);
    // Once a later request is answered, the loop has seen the close.
    assert_eq!(grants_listed(&fake), [(5002, 88)]);
    report.send(()).unwrap();
    wait_until("the grant withdrawn", || granter.revoked() == [pid(5001)]);
    assert_eq!(grants_listed(&fake), [(5002, 88)]);
    running.terminate(&fake);
}

/// The same for a worker: its grant, still in force while its revoke is
/// retried, is withdrawn by a REVOKE naming it (never a READY for nothing).
#[test]
fn a_revoke_of_a_workers_grant_whose_revoke_failed_withdraws_it() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let running = start(controller_over(&fake, &granter, &target));
    let session = granted_on(&fake, 77, 5001);
    granter.fail_revokes(1);
    drop(session);
    wait_until("a revoke tried", || granter.revoke_attempts() >= 1);
    assert_eq!(grants_listed(&fake), [(5001, 77)]);
    assert_eq!(fake.raw(b"REVOKE TARGET 5001\n"), "READY\n");
    assert_eq!(granter.revoke_attempts(), 2);
    assert_eq!(granter.revoked(), [pid(5001)]);
    assert!(grants_listed(&fake).is_empty());
    running.terminate(&fake);
}

#[test]
fn a_stacks_reply_of_many_processes_cut_to_their_newest_frames_counts_each_cut() {
    // 1000 processes with a newest frame of about 8 KB each: 8 MB, so
    // about half go. Every process left out still takes some room (its
    // note): counting it wrong by that much, 500 times over, is more than
    // the room one process leaves.
    let all: Vec<_> = (1..=1000).map(|raw| deep(raw, 2, 8000)).collect();
    let fitted = crate::event_loop::fit_stacks(all.clone());
    fits_a_reply(&fitted);
    let kept = fitted.iter().filter(|p| !p.threads.is_empty()).count();
    assert!((400..600).contains(&kept), "{kept}");
    // The first processes kept, the last left out: as few as need be.
    assert!(fitted[..kept].iter().all(|p| p.skipped.is_none()));
    assert!(fitted[kept..].iter().all(|p| p.skipped.is_some()));
    let mut one_more = fitted.clone();
    let thread = &mut one_more[kept].threads;
    thread.clone_from(&all[kept].threads);
    thread[0].frames.remove(0);
    thread[0].incomplete =
        Some("its 1 oldest frames left out to fit a reply of 4194304 bytes".into());
    one_more[kept].skipped = None;
    let json = serde_json::to_string(&one_more).unwrap();
    assert!(
        json.len() > crate::protocol::MAX_REPLY - 100,
        "{}",
        json.len()
    );
}

/// As [`super::a_grant_whose_target_ended_meanwhile_fails_and_does_not_stay`],
/// with the target restarted before the controller hears of the grant:
/// the new target is another run, whose grants this one is not.
#[test]
fn a_grant_whose_target_was_restarted_meanwhile_fails_and_does_not_stay() {
    let (fake, granter, target, running) =
        started_tree_with(|c| c.restart(restart_at_once(Restart::Always)));
    let (done, report) = granter.hold_next_report();
    let grant = fake.raw_async(b"GRANT_ACCESS 77\n");
    done.recv_timeout(HANG).expect("the grant was not made");
    target.exit(ExitStatus::Code(1));
    wait_until("the restart", || target.spawns() == 2);
    let client = fake.client();
    wait_until("the new target running", || {
        client.status().is_ok_and(|s| s.state == "running")
    });
    report.send(()).unwrap();
    let grant = String::from_utf8(grant.recv_timeout(HANG).unwrap().unwrap()).unwrap();
    assert_eq!(
        grant,
        "ERROR: Grant failed: target PID 4242 exited during the grant\n"
    );
    wait_until("the late grant withdrawn", || granter.revoked() == [PID]);
    let status = client.status().unwrap();
    assert_eq!((status.holder, status.grants.len()), (None, 0));
    running.terminate(&fake);
}
