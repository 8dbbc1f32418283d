//! Encoding: any request or reply a program can build, encoded in either
//! dialect, is exactly one line, and parses back:
//! - a request to itself (in that dialect): its PIDs are the protocol's (1
//!   to `i32::MAX`) by construction, as `Pid`s;
//! - a reply as `heli_fuzz::normalized` says when it is in the protocol's
//!   domain (an extra fact named like one of `STATUS`'s own fields is out
//!   of the domain: only that it does not panic is checked).
#![no_main]

use heli_core::profile::{ProfileRequest, SampledStack, Samples, MAX_RATE};
use heli_core::protocol::{
    dialect_of_line, parse_request, GrantRequest, Reply, Request, RevokeRequest, Scope, Status,
    TreeGrant, MAX_LINE,
};
use heli_core::stacks::{Activity, Frame, ProcessStacks, ThreadStack};
use heli_core::tasks::{AsyncTask, AsyncTasks};
use heli_core::tree::{Tree, TreeProcess};
use heli_core::Pid;
use heli_fuzz::{assert_one_line, normalized, reply_in_domain, DIALECTS};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    if let Ok(request) = request(&mut u) {
        check_request(&request);
    }
    if let Ok(reply) = reply(&mut u) {
        check_reply(&reply);
    }
});

/// Any pid: a `Pid` holds 1 to `i32::MAX` only.
fn pid(u: &mut Unstructured<'_>) -> Result<Pid> {
    let raw = u.int_in_range(1..=Pid::MAX)?;
    Ok(Pid::new(raw).expect("in range"))
}

/// Maybe a pid.
fn some_pid(u: &mut Unstructured<'_>) -> Result<Option<Pid>> {
    Ok(if u.arbitrary()? { Some(pid(u)?) } else { None })
}

fn scope(u: &mut Unstructured<'_>) -> Result<Scope> {
    Ok(match u.choose_index(3)? {
        0 => Scope::Target,
        1 => Scope::Process(pid(u)?),
        _ => Scope::All,
    })
}

fn request(u: &mut Unstructured<'_>) -> Result<Request> {
    Ok(match u.choose_index(13)? {
        0 => Request::GetTargetPid,
        1 => {
            let mut grant = GrantRequest::new(pid(u)?).force(u.arbitrary()?);
            if let Some(process) = some_pid(u)? {
                grant = grant.process(process);
            }
            Request::GrantAccess(grant)
        }
        2 => Request::Status,
        3 => Request::Ps,
        4 => Request::Stack(scope(u)?),
        5 => Request::Stacks(scope(u)?),
        6 => {
            let mut revoke = RevokeRequest::new();
            if let Some(client) = some_pid(u)? {
                revoke = revoke.client(client);
            }
            if let Some(process) = some_pid(u)? {
                revoke = revoke.process(process);
            }
            Request::Revoke(revoke)
        }
        7 => Request::AgentAttach(some_pid(u)?),
        8 => Request::Tasks(some_pid(u)?),
        9 => {
            let rate = u.int_in_range(1..=MAX_RATE)?;
            let profile = ProfileRequest::new(scope(u)?, rate).duration_ms(u.arbitrary()?);
            Request::Profile(profile)
        }
        10 => Request::Samples(u.arbitrary()?),
        11 => Request::Audit(u.arbitrary()?),
        _ => Request::Terminate,
    })
}

/// A process of a tree. Its CPU share is a whole number of percent: JSON
/// carries any other finite number too, but a NaN not at all.
fn tree_process(u: &mut Unstructured<'_>) -> Result<TreeProcess> {
    let mut process = TreeProcess::new(pid(u)?);
    process.start_time = u.arbitrary()?;
    process.parent = some_pid(u)?;
    process.target = u.arbitrary()?;
    process.state = u.arbitrary()?;
    process.threads = u.arbitrary()?;
    process.cpu_percent = f64::from(u.arbitrary::<u16>()?);
    process.rss_bytes = u.arbitrary()?;
    process.uptime_secs = u.arbitrary()?;
    process.uid = u.arbitrary()?;
    process.euid = u.arbitrary()?;
    process.python = u.arbitrary()?;
    process.holder = some_pid(u)?;
    process.command = u.arbitrary()?;
    Ok(process)
}

fn thread_stack(u: &mut Unstructured<'_>) -> Result<ThreadStack> {
    let mut thread = ThreadStack::new(u.arbitrary()?);
    thread.thread_id = u.arbitrary()?;
    thread.name = u.arbitrary()?;
    thread.interpreter_id = u.arbitrary()?;
    thread.main = u.arbitrary()?;
    thread.activity = match u.choose_index(3)? {
        0 => None,
        1 => Some(Activity::Running),
        _ => Some(Activity::Idle),
    };
    thread.gil = u.arbitrary()?;
    for _ in 0..u.choose_index(4)? {
        let mut frame = Frame::new(
            u.arbitrary::<String>()?,
            u.arbitrary::<String>()?,
            u.arbitrary()?,
        );
        frame.source = u.arbitrary()?;
        thread.frames.push(frame);
    }
    thread.incomplete = u.arbitrary()?;
    Ok(thread)
}

fn process_stacks(u: &mut Unstructured<'_>) -> Result<ProcessStacks> {
    let mut stacks = ProcessStacks::new(pid(u)?);
    stacks.parent = some_pid(u)?;
    stacks.target = u.arbitrary()?;
    stacks.command = u.arbitrary()?;
    stacks.python = u.arbitrary()?;
    for _ in 0..u.choose_index(3)? {
        stacks.threads.push(thread_stack(u)?);
    }
    stacks.skipped = u.arbitrary()?;
    stacks.via = u.arbitrary()?;
    Ok(stacks)
}

/// Asyncio tasks, with arbitrary names, frames and awaiters.
fn async_tasks(u: &mut Unstructured<'_>) -> Result<AsyncTasks> {
    let mut tasks = AsyncTasks::new(pid(u)?);
    for _ in 0..u.choose_index(4)? {
        let mut task = AsyncTask::new(u.arbitrary()?, u.arbitrary::<String>()?);
        task.thread_id = u.arbitrary()?;
        for _ in 0..u.choose_index(3)? {
            let line = u.arbitrary()?;
            let frame = Frame::new(u.arbitrary::<String>()?, u.arbitrary::<String>()?, line);
            task.coroutine_stack.push(frame);
        }
        task.awaited_by = u.arbitrary()?;
        tasks.tasks.push(task);
    }
    tasks.running_loops = u.arbitrary()?;
    tasks.note = u.arbitrary()?;
    Ok(tasks)
}

/// A batch of samples with arbitrary frames and stacks.
fn samples(u: &mut Unstructured<'_>) -> Result<Samples> {
    let mut samples = Samples::default();
    (
        samples.elapsed_ms,
        samples.due,
        samples.taken,
        samples.dropped,
    ) = u.arbitrary()?;
    for _ in 0..u.choose_index(4)? {
        let line = u.arbitrary()?;
        let frame = Frame::new(u.arbitrary::<String>()?, u.arbitrary::<String>()?, line);
        samples.frames.push(frame);
    }
    for _ in 0..u.choose_index(4)? {
        let (thread, idle, frames, count) = u.arbitrary()?;
        let mut stack = SampledStack::new(pid(u)?, thread, idle, frames, count);
        stack.thread_name = u.arbitrary()?;
        samples.stacks.push(stack);
    }
    samples.ended = u.arbitrary()?;
    Ok(samples)
}

fn reply(u: &mut Unstructured<'_>) -> Result<Reply> {
    Ok(match u.choose_index(11)? {
        0 => Reply::TargetPid(pid(u)?),
        1 => Reply::Ready,
        2 => Reply::Error(u.arbitrary()?),
        3 => Reply::Stack(u.arbitrary()?),
        4 => {
            let mut processes = Vec::new();
            for _ in 0..u.choose_index(4)? {
                processes.push(tree_process(u)?);
            }
            Reply::Ps({
                let mut tree = Tree::new(processes, u.arbitrary()?);
                tree.forked = u.arbitrary()?;
                tree
            })
        }
        5 => {
            let mut stacks = Vec::new();
            for _ in 0..u.choose_index(4)? {
                stacks.push(process_stacks(u)?);
            }
            Reply::Stacks(stacks)
        }
        7 => Reply::Tasks(async_tasks(u)?),
        8 => Reply::Samples(samples(u)?),
        9 => {
            // Audit records: JSON objects (made through the parser, so the
            // fuzz crate needs no JSON crate of its own).
            let mut records = Vec::new();
            for _ in 0..u.choose_index(4)? {
                let connection: u64 = u.arbitrary()?;
                let duration: u32 = u.arbitrary()?;
                records.push(format!(
                    r#"{{"event":"revoke","connection":{connection},"duration_ms":{duration}}}"#
                ));
            }
            match Reply::parse(&format!("AUDIT [{}]", records.join(","))) {
                Ok(reply) => reply,
                Err(err) => panic!("audit records that do not parse: {err}"),
            }
        }
        6 => Reply::Agent {
            pid: pid(u)?,
            python: u.arbitrary()?,
        },
        _ => {
            let mut grants = Vec::new();
            for _ in 0..u.choose_index(4)? {
                grants.push(TreeGrant {
                    process: pid(u)?,
                    client: pid(u)?,
                });
            }
            Reply::Status(Status {
                pid: pid(u)?,
                state: u.arbitrary()?,
                uptime_secs: u.arbitrary()?,
                granter: u.arbitrary()?,
                holder: some_pid(u)?,
                grants,
                extra: u.arbitrary()?,
                command: u.arbitrary()?,
            })
        }
    })
}

fn check_request(request: &Request) {
    for dialect in DIALECTS {
        let line = request.encode(dialect);
        assert_one_line(&line);
        assert!(line.len() <= MAX_LINE);
        assert_eq!(dialect_of_line(line.as_bytes()), dialect);
        let parsed = parse_request(line.as_bytes());
        assert_eq!(parsed.unwrap(), (*request, dialect), "{line:?}");
    }
}

fn check_reply(reply: &Reply) {
    for dialect in DIALECTS {
        let line = reply.encode(dialect);
        assert_one_line(&line);
        let parsed = Reply::parse(&line);
        if reply_in_domain(reply) {
            let parsed =
                parsed.unwrap_or_else(|err| panic!("{reply:?} encoded as {line:?}: {err}"));
            assert_eq!(parsed, normalized(reply), "{line:?}");
        }
    }
}
