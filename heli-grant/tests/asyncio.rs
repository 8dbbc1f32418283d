//! `PythonInspector::tasks` on real asyncio programs, against CPython
//! 3.14's own reader (`asyncio.tools.get_all_awaited_by`, what
//! `python -m asyncio ps` and `pstree` print), run as root on the same
//! target: the same tasks, names, coroutine stacks and awaiters.

mod common;

use common::{python314, serial, Target};

use std::collections::BTreeSet;
use std::process::Command;

use heli_core::tasks::{tree_lines, AsyncTasks};
use heli_core::{Inspector, ProcessId, Processes};
use heli_grant::PythonInspector;
use heli_proc::ProcFs;

/// Nested task groups, named tasks, unnamed ones, and a task awaiting
/// another; every task then waits for ever.
const NESTED: &str = r#"
import asyncio

async def leaf(event):
    await event.wait()

async def inner_group(event):
    async with asyncio.TaskGroup() as tg:
        tg.create_task(leaf(event), name="leaf-a")
        tg.create_task(leaf(event))

async def awaiter(other):
    await other

async def main():
    event = asyncio.Event()
    # Once every task waits.
    asyncio.get_running_loop().call_later(0.2, lambda: print("ready", flush=True))
    async with asyncio.TaskGroup() as tg:
        inner = tg.create_task(inner_group(event), name="inner-group")
        tg.create_task(awaiter(inner), name="awaits-inner")

asyncio.run(main())
"#;

/// Two tasks awaiting each other.
const CYCLE: &str = r#"
import asyncio

async def wait_for(name):
    await asyncio.sleep(0.05)
    await tasks[name]

tasks = {}

async def main():
    tasks["b"] = asyncio.create_task(wait_for("a"), name="a")
    tasks["a"] = asyncio.create_task(wait_for("b"), name="b")
    asyncio.get_running_loop().call_later(0.2, lambda: print("ready", flush=True))
    await asyncio.Event().wait()

asyncio.run(main())
"#;

/// What CPython's reader says, one task a line:
/// `id|name|thread|function:file:line;...|awaiter,...`, its coroutine
/// stack outermost first.
const REFERENCE: &str = r#"
import sys
from asyncio.tools import get_all_awaited_by
for awaited in get_all_awaited_by(int(sys.argv[1])):
    for task in awaited.awaited_by:
        frames = [f for coro in task.coroutine_stack for f in coro.call_stack]
        stack = ";".join(f"{f.funcname}:{f.filename}:{f.lineno}" for f in reversed(frames))
        awaiters = ",".join(sorted(str(c.task_name) for c in task.awaited_by))
        print(f"{task.task_id}|{task.task_name}|{awaited.thread_id}|{stack}|{awaiters}")
"#;

fn id(target: &Target) -> ProcessId {
    ProcFs.identity(target.pid).unwrap().unwrap()
}

/// The reference's lines for `target`, sorted.
fn reference(target: &Target) -> BTreeSet<String> {
    let output = Command::new(python314())
        .args(["-c", REFERENCE, &target.pid.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Ours in the same form.
fn ours(tasks: &AsyncTasks) -> BTreeSet<String> {
    tasks
        .tasks
        .iter()
        .map(|task| {
            let stack: Vec<String> = task
                .coroutine_stack
                .iter()
                .map(|f| format!("{}:{}:{}", f.function, f.file, f.line.unwrap_or(0)))
                .collect();
            let mut awaiters: Vec<String> = task.awaited_by.iter().map(u64::to_string).collect();
            awaiters.sort();
            format!(
                "{}|{}|{}|{}|{}",
                task.id,
                task.name,
                task.thread_id,
                stack.join(";"),
                awaiters.join(",")
            )
        })
        .collect()
}

#[test]
fn nested_task_groups_and_awaits_are_read_as_cpython_reads_them() {
    let _serial = serial("nested_task_groups_and_awaits_are_read_as_cpython_reads_them");
    let target = Target::python(NESTED);
    let tasks = PythonInspector.tasks(id(&target)).unwrap();
    assert_eq!(ours(&tasks), reference(&target));
    let names: BTreeSet<&str> = tasks.tasks.iter().map(|t| t.name.as_str()).collect();
    // Unnamed tasks are numbered (an int in the task until asked for).
    assert_eq!(
        names,
        BTreeSet::from(["Task-1", "Task-2", "awaits-inner", "inner-group", "leaf-a"])
    );
    let by_name = |name: &str| tasks.tasks.iter().find(|t| t.name == name).unwrap();
    // inner-group is awaited by its group's parent task and by awaits-inner.
    let mut awaiters = by_name("inner-group").awaited_by.clone();
    awaiters.sort();
    let mut expected = vec![by_name("Task-1").id, by_name("awaits-inner").id];
    expected.sort();
    assert_eq!(awaiters, expected);
    let functions: Vec<&str> = by_name("leaf-a")
        .coroutine_stack
        .iter()
        .map(|f| f.function.as_str())
        .collect();
    assert_eq!(functions, ["leaf", "Event.wait"]);
    assert_eq!(tasks.running_loops, [u64::from(target.pid.get())]);
    assert!(tasks.note.is_none(), "{:?}", tasks.note);
    let lines = tree_lines(&tasks).unwrap();
    assert!(lines[0].starts_with("└── (T) Task-1 (0x"), "{lines:?}");
}

#[test]
fn tasks_awaiting_each_other_are_read_and_the_cycle_reported() {
    let _serial = serial("tasks_awaiting_each_other_are_read_and_the_cycle_reported");
    let target = Target::python(CYCLE);
    let tasks = PythonInspector.tasks(id(&target)).unwrap();
    assert_eq!(ours(&tasks), reference(&target));
    let cycles = tree_lines(&tasks).unwrap_err();
    assert_eq!(cycles.cycles.len(), 1, "{cycles}");
    let text = cycles.to_string();
    assert!(
        text.contains("cycle: a (0x") || text.contains("cycle: b (0x"),
        "{text}"
    );
}

#[test]
fn python_without_a_loop_or_without_asyncio_has_no_task_and_says_why() {
    let _serial = serial("python_without_a_loop_or_without_asyncio_has_no_task_and_says_why");
    let plain = Target::python("import time\nprint('ready', flush=True)\ntime.sleep(600)");
    let tasks = PythonInspector.tasks(id(&plain)).unwrap();
    assert!(tasks.tasks.is_empty());
    assert!(tasks.note.unwrap().contains("not imported asyncio"));
    // Imported, and a loop ran and ended: its tasks are gone.
    let after = Target::python(
        "import asyncio, time\nasync def f(): pass\nasyncio.run(f())\n\
         print('ready', flush=True)\ntime.sleep(600)",
    );
    let tasks = PythonInspector.tasks(id(&after)).unwrap();
    assert_eq!((tasks.tasks.len(), tasks.note), (0, None));
    assert!(tasks.running_loops.is_empty());
}

#[test]
fn a_program_that_is_not_python_is_refused_with_the_reason() {
    let _serial = serial("a_program_that_is_not_python_is_refused_with_the_reason");
    let sleep = Target::spawn(Command::new("sh").args(["-c", "echo ready; exec sleep 600"]));
    // Until sh has become sleep.
    common::wait_for("sleep", || {
        std::fs::read_to_string(format!("/proc/{}/comm", sleep.pid))
            .is_ok_and(|comm| comm.trim() == "sleep")
    });
    let err = PythonInspector.tasks(id(&sleep)).unwrap_err();
    assert!(err.to_string().contains("is not a Python process"), "{err}");
}

#[test]
fn a_loop_in_another_thread_is_found_with_its_thread() {
    let _serial = serial("a_loop_in_another_thread_is_found_with_its_thread");
    let target = Target::python(
        "import asyncio, threading\n\
         async def serve():\n    await asyncio.Event().wait()\n\
         async def main():\n    t = asyncio.create_task(serve(), name='served')\n\
         \x20   asyncio.get_running_loop().call_later(0.2, lambda: print('ready', flush=True) or print(threading.get_native_id(), flush=True))\n\
         \x20   await t\n\
         threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()\n\
         threading.Event().wait()\n",
    );
    let tid: u64 = target.lines.line().trim().parse().unwrap();
    let tasks = PythonInspector.tasks(id(&target)).unwrap();
    assert_eq!(tasks.running_loops, [tid]);
    let served = tasks.tasks.iter().find(|t| t.name == "served").unwrap();
    assert_eq!(served.thread_id, tid);
    assert_eq!(served.awaited_by.len(), 1);
    assert!(tasks.tasks.iter().all(|t| t.thread_id == tid));
}

#[test]
fn a_target_that_churns_its_tasks_is_read_or_refused_never_hung() {
    let _serial = serial("a_target_that_churns_its_tasks_is_read_or_refused_never_hung");
    let target = Target::python(
        "import asyncio\n\
         async def leaf(n):\n    await asyncio.sleep(0)\n    return n\n\
         async def main():\n    print('ready', flush=True)\n    while True:\n\
         \x20       async with asyncio.TaskGroup() as tg:\n\
         \x20           for n in range(50):\n                tg.create_task(leaf(n))\n\
         \x20       await asyncio.gather(*(leaf(n) for n in range(50)))\n\
         asyncio.run(main())\n",
    );
    let me = id(&target);
    let (mut read, mut refused) = (0, 0);
    for _ in 0..200 {
        match PythonInspector.tasks(me) {
            Ok(tasks) => {
                read += 1;
                assert!(tasks.tasks.len() <= 200, "{}", tasks.tasks.len());
            }
            Err(err) => {
                assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
                refused += 1;
            }
        }
    }
    eprintln!("{read} read, {refused} refused");
    assert!(read > 0, "{refused} reads refused, none read");
}
