//! `client tasks`: the asyncio task tree the controller reads from its
//! target's memory, against `python3.14 -m asyncio pstree` and `ps` run as
//! root on the same target (they need the ptrace right the client does not
//! have): the same tasks, awaits and coroutine stacks.

use std::collections::BTreeSet;
use std::process::Command;

use crate::util::{python314, run, serial, temp_script, wait_for, Controller, Kind, SOON};

/// Nested task groups, named and unnamed tasks, a task awaiting another;
/// every task waits for ever.
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
    tasks["b"] = asyncio.create_task(wait_for("a"), name="task-a")
    tasks["a"] = asyncio.create_task(wait_for("b"), name="task-b")
    await asyncio.Event().wait()

asyncio.run(main())
"#;

/// `python3.14 -m asyncio WHAT PID`: its status and output.
fn asyncio_tool(what: &str, pid: u32) -> (bool, String, String) {
    let mut command = Command::new(python314());
    command.args(["-m", "asyncio", what, &pid.to_string()]);
    let (status, out, err) = run(command);
    (status.success(), out, err)
}

/// Our tree's lines without the task ids pstree does not show.
fn without_ids(text: &str) -> String {
    text.lines()
        .map(|line| match (line.contains("(T) "), line.rfind(" (0x")) {
            (true, Some(at)) => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

crate::per_transport!(the_task_tree_is_pstree_s);

/// The same tree as pstree, line for line; the same task ids and names as
/// `ps`.
fn the_task_tree_is_pstree_s(kind: Kind) {
    let _serial = serial();
    let (_dir, script) = temp_script("nested.py", NESTED);
    let controller = Controller::start_on(kind, &[script.to_str().unwrap()]);
    let pid = controller.target_pid();
    let mut ours = String::new();
    // Until every task waits, and the tree read twice is the same.
    wait_for("five tasks waiting", SOON, || {
        let (status, out, err) = controller.run_client(&["tasks"]);
        let settled = status.success() && out.matches("(T) ").count() == 8 && out == ours;
        if !status.success() {
            assert!(err.contains("inconsistent"), "{err}");
        }
        ours = out;
        settled
    });
    let (ok, pstree, err) = asyncio_tool("pstree", pid);
    assert!(ok, "{err}");
    assert_eq!(without_ids(&ours), pstree.trim_end());
    for name in ["Task-1", "inner-group", "awaits-inner", "leaf-a", "Task-2"] {
        assert!(ours.contains(&format!("(T) {name} (0x")), "{ours}");
    }
    assert!(ours.contains("TaskGroup._aexit"), "{ours}");
    // The ids: the tasks' addresses, as `ps` shows them.
    let (ok, table, err) = asyncio_tool("ps", pid);
    assert!(ok, "{err}");
    let theirs: BTreeSet<(String, String)> = table
        .lines()
        .skip(2)
        .filter_map(|row| {
            let mut words = row.split_whitespace().skip(1);
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect();
    let (status, json, err) =
        controller.run_client(&["tasks", "--pid", &pid.to_string(), "--json"]);
    assert!(status.success(), "{err}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mine: BTreeSet<(String, String)> = json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| {
            let id = format!("{:#x}", task["id"].as_u64().unwrap());
            (id, task["name"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(mine, theirs);
    assert_eq!(json["running_loops"][0], u64::from(pid));
}

#[test]
fn tasks_awaiting_each_other_are_reported_as_a_cycle_not_followed() {
    let _serial = serial();
    let (_dir, script) = temp_script("cycle.py", CYCLE);
    let controller = Controller::start_on(Kind::Socket, &[script.to_str().unwrap()]);
    let pid = controller.target_pid();
    let mut last = String::new();
    wait_for("the cycle", SOON, || {
        let (status, _, err) = controller.run_client(&["tasks"]);
        last = err;
        !status.success() && last.contains("cycle:")
    });
    assert!(
        last.contains("ERROR: await-graph contains cycles - cannot print a tree!"),
        "{last}"
    );
    let (status, _, _) = controller.run_client(&["tasks"]);
    assert_eq!(status.code(), Some(1));
    // The same cycle as pstree's, which fails too.
    let (ok, _, theirs) = asyncio_tool("pstree", pid);
    assert!(!ok);
    let names = |text: &str| -> BTreeSet<String> {
        let line = text
            .lines()
            .find(|line| line.starts_with("cycle: "))
            .unwrap();
        line.trim_start_matches("cycle: ")
            .split(" → ")
            .map(|name| name.split(" (0x").next().unwrap().to_owned())
            .collect()
    };
    let line = last.lines().find(|line| line.contains("cycle: ")).unwrap();
    let line = &line[line.find("cycle: ").unwrap()..];
    assert_eq!(names(line), names(&theirs));
    assert_eq!(
        names(line),
        BTreeSet::from(["task-a".into(), "task-b".into()])
    );
}

#[test]
fn tasks_of_a_program_that_is_not_python_say_so() {
    let _serial = serial();
    let controller = Controller::start_on(Kind::Socket, &["--", "sleep", "600"]);
    let (status, _, err) = controller.run_client(&["tasks"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("Cannot read the asyncio tasks of PID"),
        "{err}"
    );
    assert!(err.contains("is not a Python process"), "{err}");
}

#[test]
fn tasks_of_python_without_an_event_loop_say_there_is_none() {
    let _serial = serial();
    let controller = Controller::start_on(Kind::Fifo, &["examples/target.py"]);
    let pid = controller.target_pid();
    let mut last = String::new();
    wait_for("no task", SOON, || {
        let (status, out, err) = controller.run_client(&["tasks"]);
        last = format!("{out}{err}");
        status.success() && out.contains("No asyncio task")
    });
    assert!(
        last.contains(&format!(
            "No asyncio task in PID {pid} (no event loop runs)"
        )),
        "{last}"
    );
}
