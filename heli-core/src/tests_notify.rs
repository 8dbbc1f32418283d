//! The service manager's line ([`Notifier`](crate::Notifier)): `ready` once
//! the controller serves, a status line whenever the target, the restarts
//! or the grants change, `stopping` once, and the watchdog's pings from the
//! loop itself; they use the fakes of [`super`].

use super::*;
use crate::Notifier;

/// What the fake service manager was told.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Told {
    Ready,
    Status(String),
    Stopping,
    Watchdog,
}

/// A call, with the thread that made it and when.
#[derive(Clone, Debug)]
struct Call {
    told: Told,
    thread: thread::ThreadId,
    at: Instant,
}

#[derive(Default)]
struct Heard {
    calls: Mutex<Vec<Call>>,
    /// Every call fails, as one to a socket nobody listens on does.
    fail: AtomicBool,
    /// The next `status` waits on this before it returns: the loop is
    /// wedged.
    wedge: Mutex<Option<Receiver<()>>>,
    /// When `ready` came: whether the fake transport listened, and how
    /// often the target had been spawned.
    at_ready: Mutex<Option<(usize, usize)>>,
}

/// A [`Notifier`] that records what it is told; clones share the record.
#[derive(Clone)]
struct Manager {
    heard: Arc<Heard>,
    timeout: Option<Duration>,
    /// The transport and target, to tell what had happened at `ready`.
    world: Option<(Fake, Pretend)>,
}

impl Manager {
    fn new(timeout: Option<Duration>) -> Manager {
        Manager {
            heard: Arc::default(),
            timeout,
            world: None,
        }
    }

    fn record(&self, told: Told) -> io::Result<()> {
        self.heard.calls.lock().unwrap().push(Call {
            told,
            thread: thread::current().id(),
            at: Instant::now(),
        });
        if self.heard.fail.load(SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "nobody listens",
            ));
        }
        Ok(())
    }

    fn calls(&self) -> Vec<Call> {
        self.heard.calls.lock().unwrap().clone()
    }

    /// What it was told, the watchdog's pings left out.
    fn told(&self) -> Vec<Told> {
        self.calls()
            .into_iter()
            .map(|call| call.told)
            .filter(|told| *told != Told::Watchdog)
            .collect()
    }

    fn pings(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|call| call.told == Told::Watchdog)
            .collect()
    }

    fn status(&self) -> Option<String> {
        self.told().into_iter().rev().find_map(|told| match told {
            Told::Status(text) => Some(text),
            _ => None,
        })
    }

    fn wait_for_status(&self, text: &str) {
        wait_until(text, || self.status().as_deref() == Some(text));
    }
}

impl Notifier for Manager {
    fn ready(&mut self) -> io::Result<()> {
        if let Some((fake, target)) = &self.world {
            *self.heard.at_ready.lock().unwrap() =
                Some((fake.0.listens.load(SeqCst), target.spawns()));
        }
        self.record(Told::Ready)
    }

    fn status(&mut self, text: &str) -> io::Result<()> {
        let wedge = self.heard.wedge.lock().unwrap().take();
        if let Some(wedge) = wedge {
            let _ = wedge.recv_timeout(HANG);
        }
        self.record(Told::Status(text.to_owned()))
    }

    fn stopping(&mut self) -> io::Result<()> {
        self.record(Told::Stopping)
    }

    fn watchdog(&mut self) -> io::Result<()> {
        self.record(Told::Watchdog)
    }

    fn watchdog_timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

fn line(rest: &str) -> Told {
    Told::Status(format!("target PID 4242 {rest}"))
}

#[test]
fn the_service_manager_hears_ready_the_grants_and_stopping_in_order() {
    let (fake, granter, target) = controller();
    let mut manager = Manager::new(None);
    manager.world = Some((fake.clone(), target.clone()));
    let running = start(controller_over(&fake, &granter, &target).notifier(manager.clone()));

    manager.wait_for_status("target PID 4242 running; restarts: 0; grants: none");
    // Ready once clients are served: the listener listens, the target runs.
    assert_eq!(*manager.heard.at_ready.lock().unwrap(), Some((1, 1)));
    let session = fake.granted(77);
    manager.wait_for_status("target PID 4242 running; restarts: 0; grants: client 77 on PID 4242");
    // A second client's grant on the same target takes it over.
    let mut other = fake.client().session().unwrap();
    other.take_over(pid(88)).unwrap();
    manager.wait_for_status("target PID 4242 running; restarts: 0; grants: client 88 on PID 4242");
    // Its connection closes: the grant is withdrawn.
    drop(other);
    manager.wait_for_status("target PID 4242 running; restarts: 0; grants: none");
    drop(session);
    assert_eq!(running.terminate(&fake), ExitStatus::Signal(15));

    assert_eq!(
        manager.told(),
        [
            Told::Ready,
            line("running; restarts: 0; grants: none"),
            line("running; restarts: 0; grants: client 77 on PID 4242"),
            line("running; restarts: 0; grants: client 88 on PID 4242"),
            line("running; restarts: 0; grants: none"),
            Told::Stopping,
            line("stopping; restarts: 0; grants: none"),
            line("ended (signal 15); restarts: 0; grants: none"),
        ]
    );
    // No watchdog asked for: never a ping.
    assert!(manager.pings().is_empty());
}

#[test]
fn the_status_line_lists_the_grants_on_the_target_first() {
    let (fake, granter, target) = controller();
    add_workers(&target);
    let manager = Manager::new(None);
    let running = start(controller_over(&fake, &granter, &target).notifier(manager.clone()));
    let on_child = granted_on(&fake, 77, 5002);
    let on_other = granted_on(&fake, 78, 5001);
    let on_target = fake.granted(88);
    manager.wait_for_status(
        "target PID 4242 running; restarts: 0; grants: client 88 on PID 4242, \
         client 78 on PID 5001, client 77 on PID 5002",
    );
    drop((on_child, on_other, on_target));
    running.terminate(&fake);
}

#[test]
fn the_status_line_follows_the_restarts() {
    let policy = RestartPolicy::new(Restart::OnFailure)
        .delays(Duration::from_millis(200), Duration::from_millis(200))
        .max_restarts(1);
    let (fake, granter, target) = controller();
    let manager = Manager::new(None);
    let running = start(
        controller_over(&fake, &granter, &target)
            .restart(policy)
            .notifier(manager.clone()),
    );
    manager.wait_for_status("target PID 4242 running; restarts: 0; grants: none");
    target.exit(ExitStatus::Code(3));
    manager.wait_for_status("target PID 4242 running; restarts: 1; grants: none");
    // Past the limit the controller stops: said once, with how it ended.
    target.exit(ExitStatus::Signal(11));
    assert_eq!(running.join().unwrap(), ExitStatus::Signal(11));
    assert_eq!(
        manager.told(),
        [
            Told::Ready,
            line("running; restarts: 0; grants: none"),
            line("ended (exit code 3), restarting; restarts: 1; grants: none"),
            line("running; restarts: 1; grants: none"),
            Told::Stopping,
            line("ended (signal 11); restarts: 1; grants: none"),
        ]
    );
}

#[test]
fn the_watchdog_is_pinged_from_the_loop_every_half_of_its_timeout() {
    let (fake, granter, target) = controller();
    let manager = Manager::new(Some(Duration::from_millis(100)));
    let running = start(controller_over(&fake, &granter, &target).notifier(manager.clone()));
    wait_until("four pings", || manager.pings().len() >= 4);
    // Requests meanwhile do not hold the pings up, nor hurry them.
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    wait_until("six pings", || manager.pings().len() >= 6);
    let loop_thread = running.1;
    running.terminate(&fake);

    let calls = manager.calls();
    assert_eq!(calls[0].told, Told::Ready);
    let pings = manager.pings();
    let mut last = calls[0].at;
    for ping in &pings {
        assert_eq!(ping.thread, loop_thread, "a ping not from the loop");
        let gap = ping.at - last;
        assert!(gap >= Duration::from_millis(50), "pinged after {gap:?}");
        assert!(
            gap < Duration::from_millis(100) + HANG / 20,
            "pinged after {gap:?}"
        );
        last = ping.at;
    }
    assert!(calls.iter().all(|call| call.thread == loop_thread));
}

#[test]
fn a_wedged_loop_stops_the_pings() {
    let (fake, granter, target) = controller();
    let manager = Manager::new(Some(Duration::from_millis(40)));
    let running = start(controller_over(&fake, &granter, &target).notifier(manager.clone()));
    wait_until("a ping", || !manager.pings().is_empty());
    // The next status line wedges the loop until released.
    let (release, wedge) = bounded(1);
    *manager.heard.wedge.lock().unwrap() = Some(wedge);
    let session = fake.granted(77);
    wait_until("the loop wedged", || {
        manager.heard.wedge.lock().unwrap().is_none()
    });
    let before = manager.pings().len();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(manager.pings().len(), before, "pinged while wedged");
    release.send(()).unwrap();
    wait_until("the pings again", || manager.pings().len() >= before + 2);
    drop(session);
    running.terminate(&fake);
}

#[test]
fn without_a_watchdog_or_with_a_zero_timeout_nothing_is_pinged() {
    for timeout in [None, Some(Duration::ZERO)] {
        let (fake, granter, target) = controller();
        let manager = Manager::new(timeout);
        let running = start(controller_over(&fake, &granter, &target).notifier(manager.clone()));
        manager.wait_for_status("target PID 4242 running; restarts: 0; grants: none");
        thread::sleep(Duration::from_millis(150));
        assert_eq!(fake.client().target_pid().unwrap(), PID);
        running.terminate(&fake);
        assert!(
            manager.pings().is_empty(),
            "{timeout:?}: {:?}",
            manager.pings().len()
        );
    }
}

#[test]
fn a_service_manager_out_of_reach_is_warned_about_once_per_outage() {
    let (fake, granter, target) = controller();
    let manager = Manager::new(Some(Duration::from_millis(20)));
    manager.heard.fail.store(true, SeqCst);
    let running = start(controller_over(&fake, &granter, &target).notifier(manager.clone()));
    wait_until("pings", || manager.pings().len() >= 5);
    // The controller runs on.
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    let warnings = |running: &Running| {
        running
            .logged()
            .into_iter()
            .filter(|(level, text)| {
                *level == log::Level::Warn && text.starts_with("cannot tell the service manager")
            })
            .map(|(_, text)| text)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        warnings(&running),
        [
            "cannot tell the service manager that the controller is ready: nobody listens \
          (the controller runs on)"
        ]
    );
    // Back, then gone again: one more warning.
    manager.heard.fail.store(false, SeqCst);
    let pings = manager.pings().len();
    wait_until("a ping that works", || manager.pings().len() >= pings + 2);
    manager.heard.fail.store(true, SeqCst);
    let pings = manager.pings().len();
    wait_until("pings that fail", || manager.pings().len() >= pings + 3);
    let warned = warnings(&running);
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert_eq!(
        warned[1],
        "cannot tell the service manager that the controller is alive (watchdog): nobody \
         listens (the controller runs on)"
    );
    running.terminate(&fake);
}
