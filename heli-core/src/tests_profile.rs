//! `PROFILE` and `SAMPLES`: the controller's sampler, through the loop,
//! with the fakes of [`super`].

use std::sync::atomic::AtomicUsize;

use super::*;
use crate::profile::{ProfileRequest, Samples};

/// A [`Family`] that counts its reads of stacks.
struct Counted(Family, Arc<AtomicUsize>);

impl crate::Inspector for Counted {
    fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
        self.1.fetch_add(1, SeqCst);
        self.0.stacks(process)
    }
    fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
        self.0.tree(root)
    }
}

/// A controller over the tree of [`add_workers`] whose target and 5001
/// run Python; and the count of its stack reads.
fn profiled() -> (Fake, Pretend, Running, Arc<AtomicUsize>) {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let reads = Arc::new(AtomicUsize::new(0));
    let family = Family::of(&target, &[PID.get(), 5001]);
    let controller = controller_over(&fake, &granter, &target);
    let running = start(controller.inspector(Counted(family, reads.clone())));
    (fake, target, running, reads)
}

/// Collects until the profile ends; every batch.
fn until_ended(session: &mut Session<FakeConnection>) -> Vec<Samples> {
    let mut batches = Vec::new();
    let deadline = Instant::now() + HANG;
    loop {
        let samples = session.samples(false).unwrap();
        let ended = samples.ended.is_some();
        batches.push(samples);
        if ended {
            return batches;
        }
        assert!(Instant::now() < deadline, "the profile did not end");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The pids and functions of every stack of `batches`, with their counts.
fn counted(batches: &[Samples]) -> Vec<(u32, String, u64)> {
    let mut counts: Vec<(u32, String, u64)> = Vec::new();
    for batch in batches {
        for stack in &batch.stacks {
            let function = &batch.frames[stack.frames[0] as usize].function;
            match counts
                .iter_mut()
                .find(|(pid, name, _)| *pid == stack.pid.get() && name == function)
            {
                Some(count) => count.2 += stack.count,
                None => counts.push((stack.pid.get(), function.clone(), stack.count)),
            }
        }
    }
    counts.sort();
    counts
}

#[test]
fn a_profile_samples_the_target_for_its_duration_and_ends_saying_so() {
    let (fake, _, running, _) = profiled();
    let mut session = fake.client().session().unwrap();
    session
        .profile(ProfileRequest::new(Scope::Target, 100).duration_ms(300))
        .unwrap();
    let batches = until_ended(&mut session);
    let last = batches.last().unwrap();
    assert_eq!(last.ended.as_deref(), Some("the 0.3 s asked for are over"));
    assert_eq!(last.due, 30);
    assert!(last.taken > 0 && last.taken <= 30, "{last:?}");
    assert_eq!(counted(&batches), [(PID.get(), "work".into(), last.taken)]);
    // Collected, it is gone: the connection may start another.
    let err = session.samples(false).unwrap_err();
    assert_eq!(
        err.message(),
        "no profile runs on this connection (PROFILE starts one)"
    );
    session
        .profile(ProfileRequest::new(Scope::Target, 100))
        .unwrap();
    running.terminate(&fake);
}

#[test]
fn all_samples_the_python_processes_of_the_tree_and_stop_ends_it() {
    let (fake, _, running, _) = profiled();
    let mut session = fake.client().session().unwrap();
    session
        .profile(ProfileRequest::new(Scope::All, 200))
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let mut batches = vec![session.samples(false).unwrap()];
    batches.push(session.samples(true).unwrap());
    let last = batches.last().unwrap();
    assert_eq!(last.ended.as_deref(), Some("stopped by the client"));
    let processes: Vec<u32> = counted(&batches).iter().map(|row| row.0).collect();
    assert_eq!(processes, [PID.get(), 5001]);
    running.terminate(&fake);
}

#[test]
fn a_closed_connection_stops_its_profile_at_once() {
    let (fake, _, running, reads) = profiled();
    let mut session = fake.client().session().unwrap();
    session
        .profile(ProfileRequest::new(Scope::Target, 1000))
        .unwrap();
    wait_until("samples taken", || reads.load(SeqCst) > 20);
    drop(session);
    // The controller learns of the close, then its sampler stops.
    thread::sleep(Duration::from_millis(200));
    let stopped_at = reads.load(SeqCst);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(reads.load(SeqCst), stopped_at);
    running.terminate(&fake);
}

#[test]
fn profiles_are_refused_naming_why() {
    let (fake, target, running, _) = profiled();
    let refused = |line: &[u8]| fake.raw(line);
    // Outside the tree, by the rule stacks are read by.
    assert_eq!(
        refused(b"PROFILE 100 0 1\n"),
        "ERROR: PID 1 is not in the target's process tree (only the target, PID 4242, and its descendants may be read)\n"
    );
    assert_eq!(
        refused(b"PROFILE 0 0\n"),
        "ERROR: PROFILE takes a rate of 1 to 10000 samples a second first\n"
    );
    assert_eq!(
        refused(b"PROFILE 100\n"),
        "ERROR: PROFILE takes a duration in milliseconds (0: until stopped) after the rate\n"
    );
    assert_eq!(
        refused(b"SAMPLES\n"),
        "ERROR: no profile runs on this connection (PROFILE starts one)\n"
    );
    // One per connection, four in all.
    let mut sessions: Vec<_> = (0..4).map(|_| fake.client().session().unwrap()).collect();
    for session in &mut sessions {
        session
            .profile(ProfileRequest::new(Scope::Target, 10))
            .unwrap();
    }
    let again = sessions[0]
        .profile(ProfileRequest::new(Scope::Target, 10))
        .unwrap_err();
    assert_eq!(
        again.message(),
        "a profile already runs on this connection (SAMPLES STOP ends it)"
    );
    assert_eq!(
        refused(b"PROFILE 10 0\n"),
        "ERROR: busy: 4 profiles already run; try again later\n"
    );
    // A connection that closes makes room.
    sessions.pop();
    wait_until("room for a profile", || {
        fake.raw(b"PROFILE 10 100\n") == "READY\n"
    });
    // A connectionless transport (named pipes) cannot stop a profile when
    // its client goes away.
    let peer = Peer {
        connection: 0,
        credentials: None,
    };
    let mut fifo = FakeConnection(peer, fake.0.to_server.clone());
    let reply = fifo
        .round_trip(b"PROFILE 10 0\n", Instant::now() + HANG)
        .unwrap();
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        format!("ERROR: {}\n", crate::event_loop::NO_CONNECTION)
    );
    drop(target);
    running.terminate(&fake);
}

#[test]
fn a_process_that_exits_ends_its_profile_and_the_last_batch_is_still_collected() {
    let (fake, target, running, _) = profiled();
    let mut session = fake.client().session().unwrap();
    session
        .profile(ProfileRequest::new(Scope::Process(pid(5001)), 200))
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    target.table().remove(5001);
    let batches = until_ended(&mut session);
    let last = batches.last().unwrap();
    assert_eq!(
        last.ended.as_deref(),
        Some("PID 5001 (child of 4242) exited")
    );
    assert!(last.taken > 0);
    assert_eq!(counted(&batches), [(5001, "work".into(), last.taken)]);
    running.terminate(&fake);
}

#[test]
fn the_controller_ending_with_its_target_waits_for_the_last_collection() {
    let (fake, target, running, _) = profiled();
    let mut session = fake.client().session().unwrap();
    session
        .profile(ProfileRequest::new(Scope::Target, 200))
        .unwrap();
    thread::sleep(Duration::from_millis(200));
    target.exit(ExitStatus::Code(3));
    let batches = until_ended(&mut session);
    let last = batches.last().unwrap();
    let ended = last.ended.as_deref().unwrap();
    // The sampler or the loop tells first.
    assert!(
        ended == "target PID 4242 exited"
            || ended == "target PID 4242 ended (exit code 3): the controller stops",
        "{ended}"
    );
    assert!(last.taken > 0);
    assert_eq!(counted(&batches)[0].2, last.taken);
    // Collected, the controller is done at once.
    let asked = Instant::now();
    running.join().unwrap();
    assert!(asked.elapsed() < Duration::from_millis(900));
}

#[test]
fn a_request_while_the_controller_waits_for_a_collection_does_not_end_the_wait() {
    let (fake, target, running, _) = profiled();
    let mut session = fake.client().session().unwrap();
    session
        .profile(ProfileRequest::new(Scope::Target, 200))
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    target.exit(ExitStatus::Code(0));
    thread::sleep(Duration::from_millis(200));
    // Another client wakes the loop up while it waits.
    let _ = fake.client().status();
    thread::sleep(Duration::from_millis(200));
    let batches = until_ended(&mut session);
    assert!(batches.last().unwrap().taken > 0);
    running.join().unwrap();
}

#[test]
fn a_profile_nobody_collects_holds_the_controller_up_a_second_at_most() {
    let (fake, target, running, _) = profiled();
    let mut session = fake.client().session().unwrap();
    session
        .profile(ProfileRequest::new(Scope::Target, 200))
        .unwrap();
    let exited = Instant::now();
    target.exit(ExitStatus::Code(0));
    running.join().unwrap();
    let waited = exited.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    drop(session);
}
