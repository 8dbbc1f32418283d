//! The supervised tree end to end (issue 14): `client ps`, `client stack
//! --pid`/`--all` and `client attach --pid` on real `multiprocessing.Pool`
//! and `ProcessPoolExecutor` targets, and the refusals for anything that is
//! not a process of the tree. What gunicorn adds is in `gunicorn.rs`.

use std::collections::BTreeMap;
use std::process::Command;

use heli::core::{Pid, ProcessId, Processes};
use heli::proc::ProcFs;
use serde_json::Value;

use crate::util::{alive, serial, state, temp_script, wait_for, Controller, Kind, SOON};
use crate::with_tool::py_spy;

/// `client ps --json`, parsed (it must succeed).
pub fn ps(controller: &Controller) -> Value {
    let (status, out, err) = controller.run_client(&["ps", "--json"]);
    assert!(
        status.success(),
        "client ps --json: {out}{err}\n{}",
        controller.log_text()
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ps --json is not JSON ({e}): {out}"))
}

/// The processes of a `ps --json` tree, in its order.
pub fn processes(tree: &Value) -> &Vec<Value> {
    tree["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no processes list: {tree}"))
}

/// Process `pid` of a `ps --json` tree, if listed.
pub fn listed(tree: &Value, pid: u32) -> Option<&Value> {
    processes(tree)
        .iter()
        .find(|p| p["pid"].as_u64() == Some(pid.into()))
}

/// The pids of a `ps --json` tree, in its order.
pub fn pids(tree: &Value) -> Vec<u32> {
    processes(tree)
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect()
}

/// The parent of `pid` as the tree lists it.
pub fn parent_in(tree: &Value, pid: u32) -> Option<u32> {
    listed(tree, pid)?["parent"].as_u64().map(|p| p as u32)
}

/// How many parents up from `pid` the tree's root is (`None` if the
/// chain leaves the tree).
pub fn depth(tree: &Value, pid: u32) -> Option<usize> {
    let root = pids(tree)[0];
    let mut at = pid;
    for depth in 0..=processes(tree).len() {
        if at == root {
            return Some(depth);
        }
        at = parent_in(tree, at)?;
    }
    None
}

/// The parent of live process `pid`, from `/proc`.
pub fn parent_of(pid: u32) -> Option<u32> {
    Some(ProcFs.process(Pid::new(pid)?).ok()??.parent?.into())
}

/// `client status --json`'s grants, as (process, client) pairs.
pub fn grants(controller: &Controller) -> Vec<(u32, u32)> {
    let (status, out, err) = controller.run_client(&["status", "--json"]);
    assert!(status.success(), "client status --json: {out}{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    json["grants"]
        .as_array()
        .unwrap_or_else(|| panic!("no grants list in status --json: {out}"))
        .iter()
        .map(|g| {
            (
                g["process"].as_u64().unwrap() as u32,
                g["client"].as_u64().unwrap() as u32,
            )
        })
        .collect()
}

/// `stack --pid`/`--all` text split per process: pid -> (its header line,
/// what follows it up to the next header).
pub fn stack_sections(text: &str) -> BTreeMap<u32, (String, String)> {
    let mut sections = BTreeMap::new();
    let mut current: Option<(u32, String, String)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Process ") {
            if let Some(pid) = rest.split_whitespace().next().and_then(|p| p.parse().ok()) {
                if let Some((pid, header, body)) = current.take() {
                    sections.insert(pid, (header, body));
                }
                current = Some((pid, line.to_owned(), String::new()));
                continue;
            }
        }
        if let Some((_, _, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((pid, header, body)) = current {
        sections.insert(pid, (header, body));
    }
    sections
}

/// `client ARGS` (it must succeed), its stdout.
pub fn client_ok(controller: &Controller, args: &[&str]) -> String {
    let (status, out, err) = controller.run_client(args);
    assert!(
        status.success(),
        "client {args:?} failed ({status}): {out}{err}\n{}",
        controller.log_text()
    );
    out
}

/// The pids the target's processes announced in its output, on lines
/// `<word> <pid>`.
pub fn announced(controller: &Controller, word: &str) -> Vec<u32> {
    controller
        .target_output()
        .lines()
        .filter_map(|line| line.strip_prefix(word)?.trim().parse().ok())
        .collect()
}

/// Waits until the target's processes have announced `n` pids as `<word>
/// <pid>`, and returns them.
pub fn wait_announced(controller: &Controller, word: &str, n: usize) -> Vec<u32> {
    wait_for(&format!("{n} lines '{word} PID'"), SOON, || {
        announced(controller, word).len() >= n
    });
    announced(controller, word)
}

/// The functions named in a `STACKS` JSON entry's frames.
pub fn functions(entry: &Value) -> Vec<String> {
    entry["threads"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|thread| thread["frames"].as_array().into_iter().flatten())
        .map(|frame| frame["function"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Kills, when dropped, the processes noted that still run as the same
/// processes (pid and start time): the workers of a tree whose controller a
/// failed test left behind end with it.
#[derive(Default)]
pub struct Leftovers(Vec<ProcessId>);

impl Leftovers {
    /// Notes every process of `tree`.
    pub fn note(&mut self, tree: &Value) {
        for pid in pids(tree) {
            self.note_pid(pid);
        }
    }

    /// Notes process `pid`, if it runs.
    pub fn note_pid(&mut self, pid: u32) {
        if let Some(id) = Pid::new(pid).and_then(|pid| ProcFs.identity(pid).ok().flatten()) {
            if !self.0.contains(&id) {
                self.0.push(id);
            }
        }
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for id in &self.0 {
            if ProcFs.identity(id.pid).ok().flatten() == Some(*id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(u32::from(id.pid) as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A `multiprocessing.Pool` of 3 (started by the default forkserver: the
/// workers are children of the forkserver, a child of the target), each
/// worker in `pool_task`, the main thread in `main_waits`. Every process
/// ends once its parent has gone.
const POOL: &str = r#"
import multiprocessing, os, time

def pool_task(n):
    print(f"worker {os.getpid()}", flush=True)
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.05)

def main_waits(result):
    while True:
        time.sleep(0.05)

if __name__ == "__main__":
    with multiprocessing.Pool(3) as pool:
        main_waits(pool.map_async(pool_task, range(3), chunksize=1))
"#;

/// A `ProcessPoolExecutor` of 2 busy workers in `executor_task`.
const EXECUTOR: &str = r#"
import os, time
from concurrent.futures import ProcessPoolExecutor

def executor_task(n):
    print(f"worker {os.getpid()}", flush=True)
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.05)

def main_waits(futures):
    while True:
        time.sleep(0.05)

if __name__ == "__main__":
    with ProcessPoolExecutor(max_workers=2) as executor:
        main_waits([executor.submit(executor_task, n) for n in range(2)])
"#;

#[test]
fn a_multiprocessing_pool_s_workers_are_listed_stacked_and_reached() {
    workers_are_listed_stacked_and_reached(POOL, 3, "pool_task");
}

#[test]
fn a_process_pool_executor_s_workers_are_listed_stacked_and_reached() {
    workers_are_listed_stacked_and_reached(EXECUTOR, 2, "executor_task");
}

/// Runs `script` under a controller; its `n` workers, each in `task`, are
/// in `ps` (text and JSON) with their parent and Python version, under
/// their header in `stack --all` (text and JSON) and `stack --pid`, and
/// `attach --pid WORKER --with py-spy` dumps that worker.
fn workers_are_listed_stacked_and_reached(script: &str, n: usize, task: &str) {
    let _serial = serial();
    let (_dir, path) = temp_script("workers.py", script);
    let controller = Controller::start_on(Kind::Socket, &[path.to_str().unwrap()]);
    let mut leftovers = Leftovers::default();
    let target = controller.target_pid();
    let workers = wait_announced(&controller, "worker", n);
    assert_eq!(workers.len(), n, "{}", controller.target_output());
    for &worker in &workers {
        leftovers.note_pid(worker);
    }

    // ps --json: the target first, every worker in the tree, under its
    // parent, a Python 3.14 process.
    let mut tree = Value::Null;
    wait_for("every worker listed as Python 3.14", SOON, || {
        tree = ps(&controller);
        workers.iter().all(|&w| {
            listed(&tree, w)
                .is_some_and(|p| p["python"].as_str().is_some_and(|v| v.starts_with("3.14")))
        })
    });
    leftovers.note(&tree);
    let first = &processes(&tree)[0];
    assert_eq!(first["pid"].as_u64(), Some(target.into()), "{tree:#}");
    assert_eq!(first["target"], Value::Bool(true), "{tree:#}");
    assert!(
        first["python"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.14"),
        "{tree:#}"
    );
    assert_eq!(tree["subreaper"], Value::Bool(false), "{tree:#}");
    let order = pids(&tree);
    for (index, &pid) in order.iter().enumerate().skip(1) {
        let parent =
            parent_in(&tree, pid).unwrap_or_else(|| panic!("{pid} has no parent: {tree:#}"));
        let at = order.iter().position(|&p| p == parent);
        assert!(
            at.is_some_and(|at| at < index),
            "{pid} listed before its parent {parent}: {tree:#}"
        );
        assert_eq!(listed(&tree, pid).unwrap()["target"], Value::Bool(false));
    }
    for &worker in &workers {
        let process = listed(&tree, worker).unwrap();
        assert_eq!(parent_in(&tree, worker), parent_of(worker), "{tree:#}");
        assert!(depth(&tree, worker).is_some_and(|d| d >= 1), "{tree:#}");
        assert!(process["threads"].as_u64().unwrap() >= 1, "{process}");
        assert!(
            process["command"].as_str().unwrap().contains("python"),
            "{process}"
        );
        assert!(process["holder"].is_null(), "{process}");
    }

    // ps as text: a header, the target first, each worker on its row with
    // its parent and version, COMMAND indented by depth, and the note
    // that the controller is not a subreaper.
    let text = client_ok(&controller, &["ps"]);
    let lines: Vec<&str> = text.lines().collect();
    let header = lines[0];
    for column in [
        "PID", "PPID", "S", "THR", "CPU%", "RSS", "UPTIME", "PYTHON", "GRANT", "COMMAND",
    ] {
        assert!(
            header.split_whitespace().any(|c| c == column),
            "no {column}: {text}"
        );
    }
    let row = |pid: u32| {
        *lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(pid.to_string().as_str()))
            .unwrap_or_else(|| panic!("no row for {pid}:\n{text}"))
    };
    assert_eq!(
        row(target),
        lines[1],
        "the target's row is not first:\n{text}"
    );
    let command_at = header.find("COMMAND").unwrap();
    let indent = |line: &str| line[command_at..].len() - line[command_at..].trim_start().len();
    for &worker in &workers {
        let line = row(worker);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields[1],
            parent_in(&tree, worker).unwrap().to_string(),
            "{line}"
        );
        assert!(line.contains(" 3.14"), "{line}");
        assert_eq!(
            indent(line),
            2 * depth(&tree, worker).unwrap(),
            "COMMAND not indented two spaces per depth:\n{text}"
        );
    }
    assert_eq!(indent(lines[1]), 0, "{text}");
    assert!(
        text.trim_end().ends_with(
            "note: the controller is not a subreaper: a process that daemonises (double fork) leaves this tree"
        ),
        "{text}"
    );

    // stack --all: every Python process of the tree under its header,
    // each worker in its task, the target in main_waits; source lines
    // shown (the client reads the script).
    let mut sections = BTreeMap::new();
    wait_for(&format!("every worker in {task}"), SOON, || {
        sections = stack_sections(&client_ok(&controller, &["stack", "--all"]));
        workers.iter().all(|w| {
            sections
                .get(w)
                .is_some_and(|(_, body)| body.contains(&format!("in {task}")))
        })
    });
    let (header, body) = &sections[&target];
    assert!(
        header.starts_with(&format!("Process {target} (target) Python 3.14")),
        "{header}"
    );
    assert!(body.contains("in main_waits"), "{body}");
    for &worker in &workers {
        let (header, body) = &sections[&worker];
        let parent = parent_in(&tree, worker).unwrap();
        assert!(
            header.starts_with(&format!("Process {worker} (child of {parent}) Python 3.14")),
            "{header}"
        );
        assert!(header.contains("python"), "{header}");
        assert!(!body.contains("in main_waits"), "{body}");
        assert!(
            body.contains("    time.sleep(0.05)")
                || body.contains("    while os.getppid() == parent:"),
            "no source line:\n{body}"
        );
    }
    for pid in pids(&tree) {
        assert!(
            sections.contains_key(&pid) || !alive(pid),
            "{pid} not in stack --all: {sections:#?}"
        );
    }

    // stack --all --json: a list with every worker and its frames.
    let out = client_ok(&controller, &["stack", "--all", "--json"]);
    let all: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    let all = all
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {out}"));
    for &worker in &workers {
        let entry = all
            .iter()
            .find(|e| e["pid"].as_u64() == Some(worker.into()))
            .unwrap_or_else(|| panic!("{worker} missing: {out}"));
        assert!(functions(entry).iter().any(|f| f == task), "{entry:#}");
        assert_eq!(entry["target"], Value::Bool(false), "{entry:#}");
        assert!(entry["skipped"].is_null(), "{entry:#}");
    }

    // stack --pid WORKER: that worker alone.
    let worker = workers[n - 1];
    let one = stack_sections(&client_ok(
        &controller,
        &["stack", "--pid", &worker.to_string()],
    ));
    assert_eq!(
        one.keys().copied().collect::<Vec<_>>(),
        vec![worker],
        "{one:#?}"
    );
    assert!(one[&worker].1.contains(&format!("in {task}")), "{one:#?}");
    let out = client_ok(
        &controller,
        &["stack", "--pid", &worker.to_string(), "--json"],
    );
    let json: Value = serde_json::from_str(&out).unwrap();
    let list = json
        .as_array()
        .unwrap_or_else(|| panic!("--pid --json not a list: {out}"));
    assert_eq!(list.len(), 1, "{out}");
    assert_eq!(list[0]["pid"].as_u64(), Some(worker.into()), "{out}");

    // attach --pid WORKER with py-spy: the tool reaches that worker.
    let tool = format!("{} dump --pid {{pid}}", py_spy().display());
    let out = client_ok(
        &controller,
        &["attach", "--pid", &worker.to_string(), "--with", &tool],
    );
    assert!(out.contains(&format!("Process {worker}:")), "{out}");
    assert!(out.contains(&format!("{task} (workers.py:")), "{out}");
    assert!(
        grants(&controller).is_empty(),
        "grant left after the tool ended"
    );
}

/// A target with a thread, a zombie child (forked, exited, never reaped)
/// and, as root, a child that setuid()s to nobody.
const ODD_CHILDREN: &str = r#"
import os, threading, time

zombie = os.fork()
if zombie == 0:
    os._exit(0)
print(f"zombie {zombie}", flush=True)
other = os.fork()
if other == 0:
    os.setgid(65534)
    os.setuid(65534)
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.05)
    os._exit(0)
print(f"other {other}", flush=True)

def helper_thread():
    while True:
        time.sleep(0.05)

threading.Thread(target=helper_thread, name="helper", daemon=True).start()
while True:
    time.sleep(0.05)
"#;

/// `client attach --pid PID --with 'true {pid}'`: (exit code, stderr).
fn attach_pid(controller: &Controller, pid: &str) -> (Option<i32>, String) {
    let (status, out, err) =
        controller.run_client(&["attach", "--pid", pid, "--with", "true {pid}"]);
    (status.code(), format!("{err}{out}"))
}

#[test]
fn what_is_not_a_process_of_the_tree_is_refused_naming_the_rule() {
    let _serial = serial();
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test makes a process of another user (setuid to nobody): run it as root"
    );
    let (_dir, path) = temp_script("odd.py", ODD_CHILDREN);
    let controller = Controller::start_on(Kind::Socket, &[path.to_str().unwrap()]);
    let mut leftovers = Leftovers::default();
    let target = controller.target_pid();
    let zombie = wait_announced(&controller, "zombie", 1)[0];
    let other = wait_announced(&controller, "other", 1)[0];
    leftovers.note_pid(other);
    wait_for("the zombie", SOON, || {
        state(zombie) == Some(heli::core::ProcessState::Zombie)
    });
    let mut thread = None;
    wait_for("the helper thread", SOON, || {
        thread = std::fs::read_dir(format!("/proc/{target}/task"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|&tid| tid != target);
        thread.is_some()
    });
    let thread = thread.unwrap();
    wait_for("the other user's child", SOON, || {
        std::fs::read_to_string(format!("/proc/{other}/status")).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.contains("65534"))
        })
    });
    let controller_pid = controller.child.id();
    let me = std::process::id();
    let gone = {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let outside = format!(
        "is not in the target's process tree (only the target, PID {target}, and its descendants may be granted)"
    );

    // Not a number: usage, exit 2, nothing asked.
    let (code, err) = attach_pid(&controller, "abc");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("abc"), "{err}");

    let cases: Vec<(String, String)> = vec![
        (controller_pid.to_string(), format!("PID {controller_pid} is the controller itself")),
        (zombie.to_string(), format!("PID {zombie} has exited (zombie)")),
        (thread.to_string(), format!("PID {thread} is a thread of process {target}, not a process")),
        ("1".into(), format!("PID 1 {outside}")),
        (me.to_string(), format!("PID {me} {outside}")),
        (gone.to_string(), format!("PID {gone} is not running")),
        (
            other.to_string(),
            format!("PID {other} runs as another user (uid 65534, euid 65534; the controller runs as 0)"),
        ),
    ];
    for (pid, rule) in &cases {
        let (code, err) = attach_pid(&controller, pid);
        assert_eq!(code, Some(1), "attach --pid {pid}: {err}");
        assert!(
            err.contains(rule.as_str()),
            "attach --pid {pid}: expected {rule:?} in: {err}"
        );
        assert!(!err.contains("Permission granted"), "{err}");
        // Nothing granted, and the controller still answers.
        assert_eq!(grants(&controller), vec![], "after attach --pid {pid}");
    }
    // The same rule for stacks.
    let (status, _, err) = controller.run_client(&["stack", "--pid", "1"]);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "PID 1 is not in the target's process tree (only the target, PID {target}, and its descendants may be read)"
        )),
        "{err}"
    );
    let (status, _, err) = controller.run_client(&["stack", "--pid", "abc"]);
    assert_eq!(status.code(), Some(2), "{err}");

    // Nothing was injected, the other user's child runs untouched, and
    // the controller still grants what it may.
    let log = controller.log_text();
    assert!(!log.contains("granted PID"), "{log}");
    assert!(alive(other));
    let (code, err) = attach_pid(&controller, &target.to_string());
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(grants(&controller), vec![]);
}
