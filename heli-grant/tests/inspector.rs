//! `PythonInspector` on real process trees: the facts `PS` lists (which
//! processes are CPython 3.14, and which version, after fork, spawn and
//! exec), and per thread whether it runs and holds the GIL.
//!
//! The targets are Debian's CPython 3.14 (`$HELI_PYTHON` or
//! `py314/usr/bin/python3.14` in scripts/lib/deps.sh's directory); each test starts its tree in a
//! process group of its own and kills the whole group at the end.

mod common;

use common::{python314, serial, tempdir, wait_for, Target};

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use heli_core::stacks::{Activity, ThreadStack};
use heli_core::tree::TreeProcess;
use heli_core::{Inspector, ProcessId, Processes};
use heli_grant::PythonInspector;
use heli_proc::ProcFs;

/// A target whose process group (its whole tree) is killed when dropped.
struct Group(Target);

impl Group {
    /// Python 3.14 running the script `code`, written to a file (`spawn`
    /// children import it) in `dir`; it prints `ready` when it is.
    fn python(dir: &tempfile::TempDir, code: &str) -> Group {
        let script = dir.path().join("tree_target.py");
        std::fs::write(&script, code).unwrap();
        let mut command = Command::new(python314());
        command.arg(&script).process_group(0);
        Group(Target::spawn(&mut command))
    }

    fn id(&self) -> ProcessId {
        ProcFs.identity(self.0.pid).unwrap().unwrap()
    }

    /// The numbers on the line it prints next that starts with `prefix`.
    fn numbers(&self, prefix: &str) -> Vec<u32> {
        self.0
            .lines
            .skip_to(prefix)
            .split_whitespace()
            .filter_map(|word| word.parse().ok())
            .collect()
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.0.pid.get() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    }
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn by_pid(tree: &[TreeProcess]) -> HashMap<u32, &TreeProcess> {
    tree.iter().map(|p| (p.pid.get(), p)).collect()
}

const TREE_PY: &str = r#"
import multiprocessing as mp, os, platform, subprocess, sys, time
if __name__ == "__main__":
    spawned = mp.get_context("spawn").Process(target=time.sleep, args=(600,))
    forked = mp.get_context("fork").Process(target=time.sleep, args=(600,))
    spawned.start()
    forked.start()
    sleeper = subprocess.Popen(["sleep", "600"])
    exited = subprocess.Popen(["true"])
    exited.wait()
    zombie = subprocess.Popen(["true"])
    print("ready", flush=True)
    print("pids", spawned.pid, forked.pid, sleeper.pid, exited.pid, zombie.pid, flush=True)
    time.sleep(600)
"#;

#[test]
fn a_python_tree_with_spawned_forked_and_other_children() {
    let _serial = serial("a_python_tree_with_spawned_forked_and_other_children");
    let dir = tempdir();
    let target = Group::python(&dir, TREE_PY);
    let version = python_version();
    let root = target.id();
    let pids = target.numbers("pids");
    let [spawned, forked, sleeper, exited, zombie] = pids[..] else {
        panic!("{pids:?}")
    };
    // The zombie is one once `true` has run.
    wait_for("the zombie", || {
        std::fs::read_to_string(format!("/proc/{zombie}/stat"))
            .is_ok_and(|stat| stat.contains(") Z "))
    });
    // The spawned child runs the spawn machinery's command line, then
    // sleeps: wait until it is a CPython in `time.sleep`.
    let mut tree = Vec::new();
    wait_for("every child listed as it runs", || {
        tree = PythonInspector.tree(root).unwrap();
        let pids = by_pid(&tree);
        [spawned, forked, sleeper]
            .iter()
            .all(|pid| pids.contains_key(pid))
            && pids[&sleeper].command == "sleep 600"
            && pids[&spawned].python.is_some()
    });
    let pids = by_pid(&tree);
    let me = nix::unistd::getuid().as_raw();
    assert_eq!(tree[0].pid, root.pid, "the root first: {tree:#?}");
    let parent = pids[&root.pid.get()];
    assert_eq!(parent.python.as_deref(), Some(version.as_str()));
    assert!(parent.command.contains("tree_target.py"), "{parent:?}");
    assert!(parent.command.starts_with(python314().to_str().unwrap()));
    for pid in [spawned, forked] {
        let child = pids[&pid];
        assert_eq!(child.python.as_deref(), Some(version.as_str()), "{child:?}");
        assert_eq!(child.parent, Some(root.pid), "{child:?}");
    }
    assert!(
        pids[&spawned].command.contains("multiprocessing"),
        "{tree:#?}"
    );
    let sleep = pids[&sleeper];
    assert_eq!(sleep.python, None, "{sleep:?}");
    assert_eq!((sleep.state, sleep.threads), ('S', 1), "{sleep:?}");
    for process in &tree {
        assert_eq!(process.uid, me);
        assert!(process.rss_bytes > 0, "{process:?}");
        assert!(process.uptime_secs < 60, "{process:?}");
        assert!(process.threads >= 1 && process.cpu_percent >= 0.0);
        assert!(!process.target && process.holder.is_none());
    }
    // Gone or zombies: not listed.
    assert!(!pids.contains_key(&exited) && !pids.contains_key(&zombie));
    // Parents before their children.
    for (at, process) in tree.iter().enumerate().skip(1) {
        let parent = process.parent.unwrap();
        let parent_at = tree.iter().position(|p| p.pid == parent).unwrap();
        assert!(parent_at < at, "{tree:#?}");
    }
    // A child that exits leaves the tree.
    kill(sleeper);
    wait_for("the killed child to leave", || {
        !by_pid(&PythonInspector.tree(root).unwrap()).contains_key(&sleeper)
    });
    // A root that is no longer the process it names has no tree.
    let stale = ProcessId {
        start_time: root.start_time + 1,
        ..root
    };
    assert!(PythonInspector.tree(stale).unwrap().is_empty());
}

/// The version `python3.14` says it is.
fn python_version() -> String {
    let output = Command::new(python314())
        .args(["-c", "import platform; print(platform.python_version())"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

const EXEC_PY: &str = r#"
import os, sys, time
go = sys.argv[0] + ".go"
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.01)
os.execv("/bin/sleep", ["sleep", "600"])
"#;

#[test]
fn a_python_that_execs_another_program_is_no_longer_python() {
    let _serial = serial("a_python_that_execs_another_program_is_no_longer_python");
    let dir = tempdir();
    let target = Group::python(&dir, EXEC_PY);
    let root = target.id();
    let version = python_version();
    // Asked twice: the second answer is the remembered one.
    for _ in 0..2 {
        let tree = PythonInspector.tree(root).unwrap();
        assert_eq!(tree.len(), 1, "{tree:#?}");
        assert_eq!(tree[0].python.as_deref(), Some(version.as_str()));
    }
    std::fs::write(dir.path().join("tree_target.py.go"), "").unwrap();
    let mut tree = Vec::new();
    wait_for("the exec", || {
        tree = PythonInspector.tree(root).unwrap();
        tree[0].command == "sleep 600"
    });
    // The same process (pid and start time) runs another program now.
    assert_eq!(ProcFs.identity(target.0.pid).unwrap(), Some(root));
    assert_eq!(tree[0].python, None, "{tree:#?}");
    assert_eq!(PythonInspector.tree(root).unwrap()[0].python, None);
    let err = PythonInspector.stacks(root).unwrap_err();
    assert!(err.to_string().contains("not a Python process"), "{err}");
}

const PARENT_PY: &str = r#"
import subprocess, time
child = subprocess.Popen(["sleep", "600"])
print("ready", flush=True)
print("child", child.pid, flush=True)
time.sleep(600)
"#;

/// One process's facts are those the tree shows of it, read without its
/// children; its stacks are its own; a pid whose start time is not the
/// process's own (the process asked for is gone) gives nothing.
#[test]
fn one_process_of_the_tree_and_no_other() {
    let _serial = serial("one_process_of_the_tree_and_no_other");
    let dir = tempdir();
    let target = Group::python(&dir, PARENT_PY);
    let child = target.numbers("child")[0];
    let root = target.id();
    let child = ProcFs
        .identity(heli_core::Pid::new(child).unwrap())
        .unwrap()
        .unwrap();
    let tree = PythonInspector.tree(root).unwrap();
    assert_eq!(tree.len(), 2, "{tree:#?}");
    for (i, id) in [root, child].into_iter().enumerate() {
        let one = PythonInspector.process(id).unwrap().unwrap();
        let listed = &tree[i];
        assert_eq!(one.id(), id);
        assert_eq!(
            (&one.pid, one.start_time, one.parent, one.uid, one.euid),
            (
                &listed.pid,
                listed.start_time,
                listed.parent,
                listed.uid,
                listed.euid
            )
        );
        assert_eq!(
            (&one.command, &one.python),
            (&listed.command, &listed.python)
        );
    }
    assert_eq!(tree[1].parent, Some(root.pid));
    assert_eq!(tree[0].euid, nix::unistd::geteuid().as_raw());
    assert!(tree[0].python.is_some() && tree[1].python.is_none());
    // Its own stacks.
    let stacks = PythonInspector.stacks(root).unwrap();
    assert!(stacks.iter().any(|thread| thread.main), "{stacks:#?}");
    // The pid of a process gone (another start time): nothing read.
    let gone = ProcessId {
        start_time: root.start_time - 1,
        ..root
    };
    assert_eq!(PythonInspector.process(gone).unwrap(), None);
    let err = PythonInspector.stacks(gone).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("is gone"), "{err}");
}

const GIL_PY: &str = r#"
import threading, time
def busy():
    i = 0
    while True:
        i += 1
def idle():
    time.sleep(600)
for name, run in [("busy", busy), ("idle1", idle), ("idle2", idle)]:
    threading.Thread(target=run, name=name, daemon=True).start()
print("ready", flush=True)
time.sleep(600)
"#;

/// The thread named `name`.
fn thread<'a>(stacks: &'a [ThreadStack], name: &str) -> &'a ThreadStack {
    stacks
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no thread {name}: {stacks:#?}"))
}

#[test]
fn the_busy_thread_runs_and_holds_the_gil_the_sleeping_ones_do_not() {
    let _serial = serial("the_busy_thread_runs_and_holds_the_gil_the_sleeping_ones_do_not");
    let dir = tempdir();
    let target = Group::python(&dir, GIL_PY);
    let pid = target.id();
    // Every sleeper asleep in time.sleep (their last frame), the main
    // thread too, in 10 reads in a row over half a second: a thread about
    // to call time.sleep may be waiting for the GIL the busy thread holds
    // (idle, then running a moment when it gets it). The main thread waits
    // for it after its print, on a loaded machine for a while.
    let mut settled = 0;
    wait_for("the threads to settle", || {
        let stacks = PythonInspector.stacks(pid).unwrap();
        let asleep = stacks.len() == 4
            && ["idle1", "idle2"].iter().all(|name| {
                thread(&stacks, name)
                    .frames
                    .last()
                    .is_some_and(|f| f.function == "idle")
                    && thread(&stacks, name).activity == Some(Activity::Idle)
            })
            && stacks
                .iter()
                .any(|t| t.main && t.activity == Some(Activity::Idle));
        settled = if asleep { settled + 1 } else { 0 };
        thread::sleep(Duration::from_millis(50));
        settled >= 10
    });
    // The busy thread holds the GIL nearly all the time (no other thread
    // asks for it); a sleeper never does. Read until the busy one has been
    // seen holding it and running, at most 200 times.
    let (mut held, mut ran, mut reads) = (0, 0, 0);
    while reads < 200 && (held < 3 || ran < 3) {
        let stacks = PythonInspector.stacks(pid).unwrap();
        reads += 1;
        assert!(
            stacks.iter().filter(|t| t.gil == Some(true)).count() <= 1,
            "{stacks:#?}"
        );
        for t in &stacks {
            assert!(t.gil.is_some(), "the GIL is known in a 3.14: {t:?}");
            if t.name.as_deref() != Some("busy") {
                assert_eq!(t.gil, Some(false), "a sleeper holds the GIL: {stacks:#?}");
                assert_eq!(t.activity, Some(Activity::Idle), "{stacks:#?}");
            }
        }
        let busy = thread(&stacks, "busy");
        held += usize::from(busy.gil == Some(true));
        ran += usize::from(busy.activity == Some(Activity::Running));
        thread::sleep(Duration::from_millis(2));
    }
    assert!(
        held >= 3 && ran >= 3,
        "busy: held {held}, ran {ran} of {reads}"
    );
    let text = heli_core::stacks::threads_text(&PythonInspector.stacks(pid).unwrap());
    assert!(text.contains("\"idle1\" [idle]"), "{text}");
    eprintln!("busy thread: held the GIL in {held}, ran in {ran} of {reads} reads");
}

const HUNDRED_PY: &str = r#"
import subprocess, sys, time
children = [subprocess.Popen(["sleep", "600"]) for _ in range(100)]
pythons = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) for _ in range(4)]
print("ready", flush=True)
time.sleep(600)
"#;

/// Not a benchmark (no timing is asserted): how long `tree` takes on a
/// tree of about 100 processes, first and then with what it remembers.
#[test]
fn tree_of_a_hundred_processes() {
    let _serial = serial("tree_of_a_hundred_processes");
    let dir = tempdir();
    let target = Group::python(&dir, HUNDRED_PY);
    let root = target.id();
    // Every child past its execve, before the inspector first sees them.
    wait_for("the whole tree", || {
        let commands = heli_proc::members(root, |member| member.proc.command_line()).unwrap();
        commands.len() == 105
            && commands[1..]
                .iter()
                .all(|command| command == "sleep 600" || command.ends_with("time.sleep(600)"))
    });
    let start = Instant::now();
    let tree = PythonInspector.tree(root).unwrap();
    let cold = start.elapsed();
    assert_eq!(tree.len(), 105);
    assert_eq!(tree.iter().filter(|p| p.python.is_some()).count(), 5);
    eprintln!("PythonInspector::tree of 105 processes, first call: {cold:?}");
    // Wall time, and this thread's time on a CPU (user and kernel: the
    // reads of /proc are the kernel's work), which waiting for a CPU on a
    // loaded machine does not inflate.
    let on_cpu = || -> Duration {
        let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        Duration::from_nanos(text.split_whitespace().next().unwrap().parse().unwrap())
    };
    let time = |what: &str, f: &mut dyn FnMut() -> usize| {
        let runs = 30;
        let cpu = on_cpu();
        let mut samples: Vec<Duration> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                assert_eq!(f(), 105);
                start.elapsed()
            })
            .collect();
        let cpu = (on_cpu() - cpu) / runs;
        samples.sort();
        eprintln!(
            "{what} of 105 processes: wall min {:?}, median {:?}, max {:?}; on a CPU {cpu:?} a call",
            samples[0],
            samples[samples.len() / 2],
            samples[samples.len() - 1],
        );
    };
    time("heli_proc::descendants", &mut || {
        heli_proc::descendants(root).unwrap().len()
    });
    time("PythonInspector::tree (5 Python)", &mut || {
        PythonInspector.tree(root).unwrap().len()
    });
}

/// A thread blocked in C whose innermost frame is made, for a while, to
/// point at a fake code object whose type pointer is near the end of the
/// address space (what a torn read of a changing stack can give). The
/// layout is checked before anything is written: `f_frame` after the
/// frame object's header and `f_back`, `f_executable` first in it.
const FAKE_CODE_PY: &str = r#"
import ctypes, sys, threading, time
ready, go = threading.Event(), threading.Event()
def victim():
    ready.set()
    go.wait()
thread = threading.Thread(target=victim, name="victim")
thread.start()
ready.wait()
time.sleep(0.2)
frame = sys._current_frames()[thread.ident]
interpreter_frame = ctypes.c_uint64.from_address(id(frame) + 24).value
executable = ctypes.c_uint64.from_address(interpreter_frame)
original = executable.value
assert original & ~7 == id(frame.f_code), (hex(original), hex(id(frame.f_code)))
fake = ctypes.create_string_buffer(b"\xff" * 4096)
fake_address = (ctypes.addressof(fake) + 15) & ~15
print("ready", flush=True)
executable.value = fake_address
print("corrupted", flush=True)
time.sleep(3)
executable.value = original
print("restored", flush=True)
time.sleep(600)
"#;

#[test]
fn a_frame_pointing_at_garbage_is_an_error_not_a_panic() {
    let dir = tempdir();
    let target = Group::python(&dir, FAKE_CODE_PY);
    let id = target.id();
    target.0.lines.skip_to("corrupted");
    let mut reader = PythonInspector.stack_reader();
    let read = |result: std::io::Result<Vec<ThreadStack>>| match result {
        Ok(stacks) => format!("{:?}", thread(&stacks, "victim").frames),
        Err(err) => format!("error: {err}"),
    };
    let during = [read(PythonInspector.stacks(id)), read(reader.stacks(id))];
    // The fake code object is refused: no frame of it is shown.
    for result in &during {
        assert!(!result.contains("victim\""), "{during:?}");
    }
    target.0.lines.skip_to("restored");
    // Read right again, by the same reader too.
    for _ in 0..2 {
        let after = [read(PythonInspector.stacks(id)), read(reader.stacks(id))];
        assert!(
            after.iter().all(|result| result.contains("victim\"")),
            "{after:?}"
        );
    }
    eprintln!("read while corrupted: {during:?}");
}
