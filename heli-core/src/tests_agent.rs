//! Unit tests of the controller's use of an [`Agent`](crate::Agent):
//! `AGENT_ATTACH` (who may, which transports, what the reply carries, a
//! slow agent), `STATUS` and stacks read through the agent; with the fakes
//! of [`super`] and [`Insider`], a fake agent.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use super::*;
use crate::stacks::READ_BY_AGENT;
use crate::{AgentSession, AgentState};

/// An agent whose state in each process the test sets (none by default).
/// Each attach gives the client one end of two fresh socket pairs and
/// keeps the others, the process's ends, for the test to look at.
#[derive(Clone, Default)]
struct Insider(Arc<Mutex<Inside>>);

#[derive(Default)]
struct Inside {
    states: Vec<(u32, AgentState)>,
    /// Attaches fail with this.
    fail: Option<String>,
    /// Attaches wait for this, whatever their deadline (an agent that does
    /// not answer), once they said so on `started`.
    gate: Option<(Sender<()>, Receiver<()>)>,
    /// Every attach: the process and its deadline.
    attaches: Vec<(ProcessId, Deadline)>,
    /// The process's ends of each session: pdb's stream, the interrupt
    /// stream.
    ends: Vec<(UnixStream, UnixStream)>,
    /// Every stack read.
    stacks: Vec<(ProcessId, Deadline)>,
    /// Every hang-up: the process and the session (each session's id is
    /// its place in `ends`, from 1).
    hang_ups: Vec<(ProcessId, u64)>,
}

impl Insider {
    /// The agent in process `raw` is in `state`.
    fn set(&self, raw: u32, state: AgentState) {
        let mut inside = self.0.lock().unwrap();
        inside.states.retain(|(pid, _)| *pid != raw);
        inside.states.push((raw, state));
    }

    /// The agent in process `raw` serves.
    fn ready(&self, raw: u32) {
        let ready = AgentState::Ready {
            python: "3.14.0".into(),
            trigger: "remote_exec".into(),
        };
        self.set(raw, ready);
    }

    fn fail(&self, why: &str) {
        self.0.lock().unwrap().fail = Some(why.into());
    }

    /// Attaches hang until the test says so: (started, go on).
    fn hang(&self) -> (Receiver<()>, Sender<()>) {
        let (started_tx, started) = unbounded();
        let (go, go_rx) = unbounded();
        self.0.lock().unwrap().gate = Some((started_tx, go_rx));
        (started, go)
    }

    fn attached(&self) -> Vec<u32> {
        let inside = self.0.lock().unwrap();
        inside.attaches.iter().map(|(p, _)| p.pid.get()).collect()
    }

    fn attach_deadlines(&self) -> Vec<Deadline> {
        let inside = self.0.lock().unwrap();
        inside.attaches.iter().map(|(_, d)| d.clone()).collect()
    }

    fn stack_reads(&self) -> Vec<(u32, Deadline)> {
        let inside = self.0.lock().unwrap();
        let reads = inside.stacks.iter();
        reads.map(|(p, d)| (p.pid.get(), d.clone())).collect()
    }

    fn hang_ups(&self) -> Vec<(u32, u64)> {
        let inside = self.0.lock().unwrap();
        let hang_ups = inside.hang_ups.iter();
        hang_ups
            .map(|(p, session)| (p.pid.get(), *session))
            .collect()
    }

    fn take_ends(&self) -> Vec<(UnixStream, UnixStream)> {
        std::mem::take(&mut self.0.lock().unwrap().ends)
    }
}

impl crate::Agent for Insider {
    fn state(&self, process: ProcessId) -> AgentState {
        let inside = self.0.lock().unwrap();
        let state = inside
            .states
            .iter()
            .find(|(pid, _)| *pid == process.pid.get());
        state.map_or_else(
            || AgentState::Absent("not started with one".into()),
            |(_, state)| state.clone(),
        )
    }

    fn attach(&self, process: ProcessId, due: &Deadline) -> io::Result<AgentSession> {
        let gate = {
            let mut inside = self.0.lock().unwrap();
            inside.attaches.push((process, due.clone()));
            inside.gate.clone()
        };
        if let Some((started, go)) = gate {
            let _ = started.send(());
            let _ = go.recv_timeout(HANG);
        }
        let mut inside = self.0.lock().unwrap();
        if let Some(why) = &inside.fail {
            return Err(io::Error::other(why.clone()));
        }
        let (pdb, pdb_client) = UnixStream::pair()?;
        let (interrupt, interrupt_client) = UnixStream::pair()?;
        inside.ends.push((pdb, interrupt));
        let id = inside.ends.len() as u64;
        let earlier_on = (1..id)
            .filter(|earlier| !inside.hang_ups.iter().any(|(_, ended)| ended == earlier))
            .collect();
        Ok(AgentSession {
            python: "3.14.0".into(),
            fds: vec![pdb_client.into(), interrupt_client.into()],
            id,
            earlier_on,
        })
    }

    /// Shuts the process's ends of the session down, as the agent does.
    fn hang_up(&self, process: ProcessId, session: u64, _due: &Deadline) -> io::Result<bool> {
        let mut inside = self.0.lock().unwrap();
        inside.hang_ups.push((process, session));
        let Some((pdb, interrupt)) = usize::try_from(session - 1)
            .ok()
            .and_then(|at| inside.ends.get(at))
        else {
            return Ok(false);
        };
        let on = pdb.shutdown(std::net::Shutdown::Both).is_ok();
        let _ = interrupt.shutdown(std::net::Shutdown::Both);
        Ok(on)
    }

    fn stacks(&self, process: ProcessId, due: &Deadline) -> io::Result<Vec<ThreadStack>> {
        self.0.lock().unwrap().stacks.push((process, due.clone()));
        let mut thread = ThreadStack::new(process.pid.get().into());
        thread.main = true;
        thread.frames.push(Frame::new("serve", "agent.py", Some(7)));
        Ok(vec![thread])
    }
}

/// A controller with `agent`, over a fake transport that passes file
/// descriptors and authenticates its peers as client 77, in a world with
/// the workers; with the settings `configure` gives it (for that target).
fn started_agent<I: crate::Inspector + Send + Sync + 'static>(
    agent: &Insider,
    configure: impl FnOnce(
        Controller<Fake, Recorder, Pretend, NoInspectorOf, Insider>,
        &Pretend,
    ) -> Controller<Fake, Recorder, Pretend, I, Insider>,
) -> (Fake, Recorder, Pretend, Running) {
    let fake = Fake::with(FakeConfig {
        passes_fds: true,
        ..FakeConfig::default()
    });
    let (granter, target) = (Recorder::default(), Pretend::new());
    add_workers(&target);
    fake.authenticate(Some(target.id_of(77)));
    let controller = controller_over(&fake, &granter, &target).agent(agent.clone());
    let running = start(configure(controller, &target));
    (fake, granter, target, running)
}

type NoInspectorOf = crate::NoInspector;

/// Asserts `AGENT_ATTACH` (the line `line`) is refused with `message`.
fn assert_attach_refused(fake: &Fake, line: &[u8], message: &str) {
    assert_eq!(fake.raw(line), format!("ERROR: {message}\n"), "{line:?}");
}

/// What one writes on `fd`, `end` reads.
fn assert_connected(fd: OwnedFd, end: &UnixStream) {
    let mut client = UnixStream::from(fd);
    client.write_all(b"p counter\n").unwrap();
    let mut got = [0u8; 10];
    end.set_read_timeout(Some(HANG)).unwrap();
    (&*end).read_exact(&mut got).unwrap();
    assert_eq!(&got, b"p counter\n");
}

#[test]
fn an_agent_attach_hands_the_client_pdbs_sockets_and_records_nothing() {
    let insider = Insider::default();
    insider.ready(PID.get());
    insider.ready(5001);
    let (fake, granter, _, running) =
        started_agent(&insider, |c, _| c.grant_deadline(Duration::from_secs(30)));
    let asked = Instant::now();
    let (process, python, fds) = fake.client().agent_attach(None).unwrap();
    assert_eq!((process, python.as_str(), fds.len()), (PID, "3.14.0", 2));
    // The client's ends are the other ends of the process's: pdb's stream
    // first, then the interrupt stream.
    let ends = insider.take_ends();
    let mut fds = fds.into_iter();
    assert_connected(fds.next().unwrap(), &ends[0].0);
    assert_connected(fds.next().unwrap(), &ends[0].1);
    // The attach had the grant deadline, on the agent's thread.
    let due = insider.attach_deadlines()[0].instant();
    assert!(due >= asked + Duration::from_secs(29), "{:?}", due - asked);
    // Another process of the tree, in either dialect.
    assert_eq!(fake.raw(b"agent_attach 5001\n"), "agent 5001 3.14.0\n");
    assert_eq!(fake.raw(b"AGENT_ATTACH 4242\n"), "AGENT 4242 3.14.0\n");
    assert_eq!(insider.attached(), [PID.get(), 5001, PID.get()]);
    // No grant: nothing asked of the granter, nothing listed, and the
    // connection holds nothing.
    assert_eq!(granter.attempts(), 0);
    assert!(grants_listed(&fake).is_empty());
    assert!(fake.grant_holders().is_empty());
    assert!(running
        .logged()
        .iter()
        .any(|(_, line)| line == "pdb scheduled in PID 5001 (child of 4242) through its agent"));
    running.terminate(&fake);
}

#[test]
fn an_agent_attach_is_allowed_exactly_where_a_grant_would_be() {
    let insider = Insider::default();
    for raw in [PID.get(), 5000, 5001, 5002, 77, 88] {
        insider.ready(raw);
    }
    let (fake, granter, target, running) = started_agent(&insider, |c, _| c);
    // Outside the target's tree, not a process, gone: refused by name.
    target.table().add(5003, PID.get(), 5003);
    target.table().edit(5003, |info| info.process = pid(5001));
    let outside = "PID 88 is not in the target's process tree (only the target, PID 4242, and its \
                   descendants may be granted)";
    assert_attach_refused(&fake, b"AGENT_ATTACH 88\n", outside);
    assert_attach_refused(
        &fake,
        b"AGENT_ATTACH 5003\n",
        "PID 5003 is a thread of process 5001, not a process",
    );
    assert_attach_refused(&fake, b"AGENT_ATTACH 31337\n", "PID 31337 is not running");
    // A process of another user in the tree.
    target
        .table()
        .edit(5000, |info| (info.uid, info.euid) = (2000, 2000));
    assert_attach_refused(
        &fake,
        b"AGENT_ATTACH 5000\n",
        "PID 5000 runs as another user (uid 2000, euid 2000; the controller runs as 1000)",
    );
    // The asker: a setuid one, one whose pid is unknown, one that is gone.
    target.table().edit(77, |info| info.euid = 0);
    assert_attach_refused(
        &fake,
        b"AGENT_ATTACH\n",
        "AGENT_ATTACH from PID 77 refused: it runs as uid 0 (effective), not as uid 1000 like \
         this controller (a setuid program)",
    );
    target.table().edit(77, |info| info.euid = 1000);
    fake.authenticate(None);
    assert_attach_refused(
        &fake,
        b"AGENT_ATTACH\n",
        "AGENT_ATTACH refused: your PID is unknown (pdb's sockets go only to a process this \
         controller knows)",
    );
    // A transport that cannot tell who asks, and can pass the sockets:
    // anyone who reaches it, as for grants.
    *fake.0.credentials.lock().unwrap() = None;
    assert_eq!(fake.raw(b"AGENT_ATTACH 5002\n"), "AGENT 5002 3.14.0\n");
    assert_eq!(insider.attached(), [5002]);
    assert_eq!(granter.attempts(), 0);
    assert!(running
        .logged()
        .iter()
        .any(|(_, line)| line.starts_with("refused AGENT_ATTACH 88 from ")));
    running.terminate(&fake);
}

#[test]
fn an_agent_attach_is_refused_while_the_agent_does_not_serve_saying_why() {
    let insider = Insider::default();
    insider.set(PID.get(), AgentState::Starting);
    insider.set(
        5001,
        AgentState::Failed("Python 3.11.9 has no pdb server".into()),
    );
    let (fake, _, target, running) = started_agent(&insider, |c, _| c);
    assert_attach_refused(
        &fake,
        b"AGENT_ATTACH 5001\n",
        "Cannot attach through the agent in PID 5001 (child of 4242): agent failed: Python \
         3.11.9 has no pdb server",
    );
    assert_attach_refused(
        &fake,
        b"AGENT_ATTACH 5002\n",
        "Cannot attach through the agent in PID 5002 (child of 5001): no agent: not started \
         with one",
    );
    // A frozen process's agent cannot answer: refused at once.
    insider.ready(5000);
    target.0.frozen_others.lock().unwrap().push(5000);
    assert_attach_refused(
        &fake,
        b"AGENT_ATTACH 5000\n",
        "PID 5000 (child of 4242) is frozen (cgroup freezer): its agent cannot answer until \
         thawed",
    );
    // The agent says why an attach failed.
    insider.ready(PID.get());
    insider.fail("a debugger is already attached through the agent");
    let err = fake.client().agent_attach(None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(
        err.message(),
        "Attach through the agent failed: a debugger is already attached through the agent"
    );
    assert_eq!(insider.attached(), [PID.get()]);
    running.terminate(&fake);

    // Without an agent, the controller says it sets none up.
    let fake = Fake::with(FakeConfig {
        passes_fds: true,
        ..FakeConfig::default()
    });
    let (granter, target) = (Recorder::default(), Pretend::new());
    let running = start(controller_over(&fake, &granter, &target));
    assert_attach_refused(
        &fake,
        b"AGENT_ATTACH\n",
        "Cannot attach through the agent in target 4242: no agent (the controller sets none \
         up)",
    );
    running.terminate(&fake);
}

#[test]
fn no_agent_attach_while_shutting_down_or_without_a_target() {
    let insider = Insider::default();
    insider.ready(PID.get());
    let fake = Fake::with(FakeConfig {
        passes_fds: true,
        ..FakeConfig::default()
    });
    let (granter, target) = (Recorder::default(), Pretend::stubborn());
    let controller = controller_over(&fake, &granter, &target).agent(insider.clone());
    let running = start(controller.grace(LONG_GRACE));
    // Once it runs, the table no longer knows the target (it is ending).
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    target.table().remove(PID.get());
    assert_attach_refused(
        &fake,
        b"AGENT_ATTACH\n",
        "Attach failed: target PID 4242 is not running",
    );
    fake.client().terminate().unwrap();
    assert_attach_refused(&fake, b"AGENT_ATTACH\n", "The controller is shutting down");
    assert!(insider.attached().is_empty());
    target.exit(ExitStatus::Code(0));
    assert_eq!(running.join().unwrap(), ExitStatus::Code(0));
}

#[test]
fn a_client_waits_for_an_agent_attach_as_long_as_for_a_grant() {
    let insider = Insider::default();
    insider.ready(PID.get());
    let (started, go) = insider.hang();
    let (fake, _, _, running) = started_agent(&insider, |c, _| c);
    let client = Client::new(fake.clone())
        .timeout(Duration::from_millis(50))
        .grant_timeout(HANG);
    let attach = thread::spawn(move || client.agent_attach(None).map(|(pid, ..)| pid));
    started.recv_timeout(HANG).unwrap();
    thread::sleep(Duration::from_millis(200));
    go.send(()).unwrap();
    assert_eq!(attach.join().unwrap().unwrap(), PID);
    running.terminate(&fake);
}

#[test]
fn a_transport_that_cannot_pass_the_sockets_gets_no_attach() {
    let insider = Insider::default();
    insider.ready(PID.get());
    let (fake, granter, target) = controller();
    let running = start(controller_over(&fake, &granter, &target).agent(insider.clone()));
    assert_attach_refused(&fake, b"AGENT_ATTACH\n", crate::event_loop::NO_FDS);
    assert_eq!(
        fake.raw(b"agent_attach\n"),
        format!("error : {}\n", crate::event_loop::NO_FDS)
    );
    assert!(insider.attached().is_empty());
    running.terminate(&fake);
}

#[test]
fn a_slow_agent_is_given_up_at_its_deadline_and_status_answers_meanwhile() {
    let insider = Insider::default();
    insider.ready(PID.get());
    insider.ready(5001);
    let (started, go) = insider.hang();
    let (fake, _, _, running) = started_agent(&insider, |c, _| {
        c.grant_deadline(Duration::from_millis(300))
    });
    let asked = Instant::now();
    let first = fake.raw_async(b"AGENT_ATTACH\n");
    started.recv_timeout(HANG).unwrap();
    // Meanwhile the loop serves.
    let status = fake.client().status().unwrap();
    assert_eq!(status.get("agent"), Some("ready"));
    assert_eq!(fake.client().target_pid().unwrap(), PID);
    // A second attach to the same process waits for nothing: refused.
    assert_attach_refused(
        &fake,
        b"AGENT_ATTACH 4242\n",
        "an attach through the agent in target 4242 is already in progress",
    );
    // One to another process queues behind it, and says so at its own
    // deadline.
    let second = fake.raw_async(b"AGENT_ATTACH 5001\n");
    let reply = |rx: Receiver<io::Result<Vec<u8>>>| {
        String::from_utf8(rx.recv_timeout(HANG).unwrap().unwrap()).unwrap()
    };
    assert_eq!(
        reply(first),
        "ERROR: Attach through the agent failed: no answer within its deadline: the target is \
         in state S\n"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        reply(second),
        "ERROR: Attach through the agent failed: not started within its deadline: the agent's \
         thread is still busy with earlier work on the target: the target is in state S\n"
    );
    // The agent answers at last: nobody waits for the session, whose
    // sockets close (pdb in the process finds its client gone); the next
    // attach is served.
    go.send(()).unwrap();
    wait_until("the late session", || {
        !insider.0.lock().unwrap().ends.is_empty()
    });
    let ends = insider.take_ends();
    let mut buf = [0u8; 1];
    ends[0].0.set_read_timeout(Some(HANG)).unwrap();
    assert_eq!((&ends[0].0).read(&mut buf).unwrap(), 0);
    go.send(()).unwrap();
    let (process, _, _) = fake.client().agent_attach(Some(pid(5001))).unwrap();
    assert_eq!(process, pid(5001));
    running.terminate(&fake);
}

#[test]
fn status_says_how_the_agent_is_and_how_a_client_attaches() {
    let agent_and_attach = |fake: &Fake| {
        let status = fake.client().status().unwrap();
        let get = |key| status.get(key).unwrap_or("-").to_owned();
        (get("agent"), get("attach"))
    };
    let pair = |agent: &str, attach: &str| (agent.to_owned(), attach.to_owned());
    for prefer in [false, true] {
        let insider = Insider::default();
        let (fake, _, _, running) = started_agent(&insider, |c, _| c.prefer_agent(prefer));
        let ptrace_or = |attach| if prefer { attach } else { "ptrace" };
        assert_eq!(agent_and_attach(&fake), pair("none", ptrace_or("none")));
        insider.set(PID.get(), AgentState::Starting);
        assert_eq!(agent_and_attach(&fake), pair("starting", ptrace_or("none")));
        insider.ready(PID.get());
        assert_eq!(agent_and_attach(&fake), pair("ready", ptrace_or("agent")));
        // The line keeps its order: new facts before the command.
        let line = fake.raw(b"STATUS\n");
        assert!(
            line.contains(&format!(
                " clients=authenticated agent=ready attach={} ",
                ptrace_or("agent")
            )),
            "{line}"
        );
        assert!(line.ends_with(" command=pretend-target --flag\n"), "{line}");
        running.terminate(&fake);
    }
    // Between a target's end and its restart, nobody has an agent.
    let insider = Insider::default();
    insider.ready(PID.get());
    let (fake, _, target, running) = started_agent(&insider, |c, _| {
        c.prefer_agent(true).restart(pending_restart())
    });
    target.exit(ExitStatus::Code(1));
    wait_until("restarting", || {
        fake.client().status().unwrap().state == "restarting"
    });
    assert_eq!(agent_and_attach(&fake), pair("none", "none"));
    let reply = fake.raw(b"AGENT_ATTACH\n");
    assert!(
        reply.starts_with("ERROR: Target process not running (restarting in "),
        "{reply}"
    );
    running.terminate(&fake);
}

/// An inspector that may read no process's memory (Yama's `ptrace_scope`
/// 2 or 3): its reads fail with `PermissionDenied`, or with `kind`.
struct Walled(Family, io::ErrorKind);

impl crate::Inspector for Walled {
    fn stacks(&self, process: ProcessId) -> io::Result<Vec<ThreadStack>> {
        Err(io::Error::new(
            self.1,
            format!("cannot read the memory of PID {}", process.pid),
        ))
    }
    fn tree(&self, root: ProcessId) -> io::Result<Vec<TreeProcess>> {
        self.0.tree(root)
    }
}

#[test]
fn stacks_the_inspector_may_not_read_come_from_the_agent_labelled_so() {
    let insider = Insider::default();
    insider.ready(PID.get());
    insider.ready(5001);
    let denied = io::ErrorKind::PermissionDenied;
    let (fake, _, _, running) = started_agent(&insider, |c, target| {
        c.inspector(Walled(Family::of(target, &[]), denied))
            .stack_deadline(Duration::from_secs(40))
    });
    let asked = Instant::now();
    // STACK: the target's threads, the note first.
    assert_eq!(
        fake.client().stack().unwrap(),
        format!(
            "{READ_BY_AGENT}\nThread 4242 (main), most recent call last:\n  File \"agent.py\", \
             line 7, in serve\n"
        )
    );
    let (read, due) = insider.stack_reads()[0].clone();
    assert_eq!(read, PID.get());
    assert!(due.instant() >= asked + Duration::from_secs(39));
    // STACKS: `via`; where the agent does not serve, why the read failed.
    let stacks = fake.client().stacks(Scope::All).unwrap();
    let summary: Vec<_> = stacks
        .iter()
        .map(|p| (p.pid.get(), p.via.as_deref(), p.skipped.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (4242, Some("agent"), None),
            (
                5000,
                None,
                Some("cannot read the memory of PID 5000".to_owned())
            ),
            (5001, Some("agent"), None),
            (
                5002,
                None,
                Some("cannot read the memory of PID 5002".to_owned())
            ),
        ]
    );
    // STACK <pid>: under its header.
    let text = fake.raw(b"STACK 5001\n");
    assert!(
        text.starts_with(&format!(
            "STACK Process 5001 (child of 4242): worker 5001\\n  {READ_BY_AGENT}\\nThread 5001"
        )),
        "{text}"
    );
    running.terminate(&fake);

    // Any other failure goes to the agent only when the controller
    // prefers it.
    for (prefer, expected) in [
        (
            false,
            Err("Cannot read the target's stacks: cannot read the memory of PID 4242"),
        ),
        (true, Ok(Some("agent"))),
    ] {
        let (fake, _, _, running) = started_agent(&insider, |c, target| {
            c.inspector(Walled(Family::of(target, &[]), io::ErrorKind::Other))
                .prefer_agent(prefer)
        });
        let got = fake.client().stacks(Scope::Target);
        let got = got
            .as_ref()
            .map(|stacks| stacks[0].via.as_deref())
            .map_err(|err| err.message());
        assert_eq!(got, expected);
        running.terminate(&fake);
    }
}

#[test]
fn a_client_tells_an_agent_reply_without_its_sockets_from_one_with_them() {
    let (fake, server) = scripted(&[
        Some(b"AGENT 4242 3.14.0\n"),
        Some(b"ERROR: no agent\n"),
        Some(b"READY\n"),
    ]);
    let client = fake.client();
    let results = within(move || {
        [
            client.agent_attach(None),
            client.agent_attach(Some(pid(5001))),
            client.agent_attach(None),
        ]
    });
    let [no_fds, refused, wrong] = results;
    let err = no_fds.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MalformedReply);
    assert_eq!(
        err.message(),
        "The reply to AGENT_ATTACH came with 0 file descriptors, not 2 (pdb's sockets): the \
         transport cannot pass them"
    );
    let err = refused.unwrap_err();
    assert_eq!(
        (err.kind(), err.message()),
        (ErrorKind::Refused, "no agent")
    );
    let err = wrong.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::MalformedReply);
    assert_eq!(err.message(), "Unexpected reply to AGENT_ATTACH: READY");
    assert_eq!(
        server.join().unwrap(),
        ["AGENT_ATTACH\n", "AGENT_ATTACH 5001\n", "AGENT_ATTACH\n"]
    );
}

#[test]
fn a_session_through_the_agent_ends_with_the_controllers_longest_grant() {
    // The sockets cannot be taken back: once the time is up, the verified
    // client's debuggers are ended, and its connection closed.
    let insider = Insider::default();
    insider.ready(PID.get());
    let (fake, _, target, running) = started_agent(&insider, |c, _| {
        c.max_grant(Duration::from_secs(1))
            .limit_graces(Duration::from_millis(300), Duration::from_millis(200))
    });
    let client = fake.client();
    let mut session = client.session().unwrap();
    let asked = Instant::now();
    let (_, _, fds) = session.agent_attach(None).unwrap();
    let connection = fake.last_connection();
    assert_eq!(fds.len(), 2);
    // Up at 1 s, the session is left to its client for its grace.
    thread::sleep((asked + Duration::from_millis(1100)).saturating_duration_since(Instant::now()));
    assert!(insider.hang_ups().is_empty());
    let signalled = || target.0.descendants_signalled.lock().unwrap().clone();
    wait_until("SIGTERM", || !signalled().is_empty());
    assert!(asked.elapsed() >= Duration::from_millis(1300));
    assert_eq!(signalled()[0], (target.id_of(77), 15));
    // The agent ends the session from inside: whoever holds pdb's socket
    // reads its end.
    wait_until("the session ended", || {
        insider.hang_ups() == [(PID.get(), 1)]
    });
    let mut pdb = UnixStream::from(fds.into_iter().next().unwrap());
    pdb.set_read_timeout(Some(HANG)).unwrap();
    assert_eq!(pdb.read(&mut [0; 16]).unwrap(), 0);
    // The connection is closed right after the signal.
    let closed = || fake.0.closed.lock().unwrap().clone();
    wait_until("the connection closed", || !closed().is_empty());
    assert_eq!(closed()[0].0, connection);
    wait_until("SIGKILL", || signalled().len() == 2);
    drop(session);
    running.terminate(&fake);
}

#[test]
fn without_a_longest_grant_a_session_through_the_agent_is_not_ended() {
    let insider = Insider::default();
    insider.ready(PID.get());
    let (fake, _, target, running) = started_agent(&insider, |c, _| {
        c.limit_graces(Duration::from_millis(10), Duration::from_millis(10))
    });
    let (_, _, fds) = fake.client().agent_attach(None).unwrap();
    assert_eq!(fds.len(), 2);
    thread::sleep(Duration::from_millis(300));
    assert!(target.0.descendants_signalled.lock().unwrap().is_empty());
    assert!(insider.hang_ups().is_empty());
    running.terminate(&fake);
}
