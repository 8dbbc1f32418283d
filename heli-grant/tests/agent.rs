//! `AgentHost` with real Python 3.14 targets started by a real
//! `ProcessSupervisor`: the agent says hello, reads stacks from within,
//! runs pdb's server on the main thread for the sockets it is handed (the
//! test speaks pdb's own JSON protocol on them), hands forked children
//! agents of their own, and leaves the target's view of itself as it was.

mod common;

use common::{python314, tempdir, wait_for};

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use heli_core::{Agent, AgentState, Deadline, ProcessId, Supervisor};
use heli_grant::{AgentHost, ProcessSupervisor};
use heli_proc::Proc;
use serde_json::{json, Value};

struct Started {
    supervisor: ProcessSupervisor,
    host: AgentHost,
    id: ProcessId,
    _dir: tempfile::TempDir,
    _agent_dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.supervisor.signal(libc::SIGKILL);
    }
}

fn start(code: &str, env: &[(&str, &str)]) -> Started {
    start_args(code, &[], env)
}

/// As `start`, the script given `args`.
fn start_args(code: &str, args: &[&str], env: &[(&str, &str)]) -> Started {
    // A script file, not -c: the fork test finds it as sys.argv[0].
    let scripts = tempdir();
    let script = scripts.path().join("agent_target.py");
    std::fs::write(&script, code).unwrap();
    let python = python314();
    let mut script_args = vec![script.to_str().unwrap()];
    script_args.extend_from_slice(args);
    let (supervisor, host, id, _agent_dir) = start_env(python.to_str().unwrap(), &script_args, env);
    Started {
        supervisor,
        host,
        id,
        _dir: scripts,
        _agent_dir,
    }
}

fn due() -> Deadline {
    Deadline::after(Duration::from_secs(10))
}

/// A session through the agent, once the last one is over for it: the
/// end of a session reaches the agent when every copy of the client's
/// socket is closed, and a child another test is spawning holds copies
/// until it execs.
fn attach(host: &AgentHost, id: ProcessId) -> heli_core::AgentSession {
    let mut tries = 0;
    loop {
        match host.attach(id, &due()) {
            Err(err) if err.to_string().contains("already attached") && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            session => return session.unwrap(),
        }
    }
}

fn ready(started: &Started) -> AgentState {
    wait_for("the agent's hello", || {
        started.host.state(started.id) != AgentState::Starting
    });
    started.host.state(started.id)
}

const COUNTER: &str = r#"
import time
counter = 0
def work():
    global counter
    while True:
        counter += 1
        time.sleep(0.01)
work()
"#;

/// pdb's server on the other end of `stream`: its messages, and replies.
struct Pdb(BufReader<UnixStream>);

impl Pdb {
    /// A session through the agent (see `attach`): pdb on its stream (a
    /// stream that stays silent failing the test, not hanging it), and
    /// its interrupt stream.
    fn attach(host: &AgentHost, id: ProcessId) -> (Pdb, UnixStream) {
        let (pdb, interrupt, _) = pdb_of(attach(host, id));
        (pdb, interrupt)
    }

    /// Everything up to the end of the stream.
    fn rest(&mut self) -> String {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.0, &mut rest).unwrap();
        rest
    }

    /// The next message; None at the end of the stream.
    fn next(&mut self) -> Option<Value> {
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        (!line.is_empty()).then(|| serde_json::from_str(&line).unwrap())
    }

    /// The messages up to the next prompt, as text.
    fn until_prompt(&mut self) -> String {
        let mut text = String::new();
        loop {
            let Some(message) = self.next() else {
                panic!("pdb's server closed the stream after: {text}");
            };
            if message.get("prompt").is_some() {
                return text;
            }
            if let Some(shown) = message.get("message").and_then(Value::as_str) {
                text.push_str(shown);
            }
        }
    }

    fn say(&mut self, line: &str) {
        let mut reply = serde_json::to_vec(&json!({ "reply": line })).unwrap();
        reply.push(b'\n');
        self.0.get_mut().write_all(&reply).unwrap();
    }
}

#[test]
fn pdb_runs_on_the_main_thread_for_the_sockets_handed_over_and_again_after_it_detaches() {
    let started = start(COUNTER, &[]);
    let state = ready(&started);
    assert!(
        matches!(&state, AgentState::Ready { trigger, .. } if trigger == "remote_exec"),
        "{state}"
    );
    for _ in 0..2 {
        let (mut pdb, _interrupt) = Pdb::attach(&started.host, started.id);
        let shown = pdb.until_prompt();
        assert!(shown.contains("work"), "{shown}");
        pdb.say("p counter > 0, __name__");
        let shown = pdb.until_prompt();
        assert!(shown.contains("(True, '__main__')"), "{shown}");
        // `q` detaches: the stream ends, the target runs on.
        pdb.say("q");
        pdb.rest();
    }
    assert!(started.host.state(started.id).is_ready());
}

#[test]
fn a_target_with_more_files_open_than_select_takes_still_gets_pdb() {
    // More than FD_SETSIZE (1024) files open: the sockets handed over get
    // numbers select() cannot watch.
    let code = format!(
        "import os\nheld = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]\n{COUNTER}"
    );
    let started = start(&code, &[]);
    ready(&started);
    wait_for("the target's files", || {
        std::fs::read_dir(format!("/proc/{}/fd", started.id.pid))
            .is_ok_and(|entries| entries.count() > 1100)
    });
    for _ in 0..2 {
        let (mut pdb, _interrupt) = Pdb::attach(&started.host, started.id);
        pdb.until_prompt();
        pdb.say("p counter > 0");
        assert!(pdb.until_prompt().contains("True"));
        pdb.say("q");
        pdb.rest();
    }
    assert!(started.host.state(started.id).is_ready());
}

/// Spends its first seconds in code of pdb's module (as pdb's tear-down
/// at the end of a session would), having said so by creating the file
/// named by its argument.
const IN_PDB_FIRST: &str = r#"
import os, pdb, sys, time
exec("""
def _heli_test_spin(seconds, marker):
    os.close(os.open(marker, os.O_CREAT | os.O_WRONLY))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
""", pdb.__dict__)
pdb.os, pdb.time = os, time
pdb._heli_test_spin(3, sys.argv[1])
"#;

/// Spends its first seconds in the middle of `import logging` (a module
/// pdb's own imports need), having said so as IN_PDB_FIRST does: logging's
/// body calls threading.RLock, made slow for the while.
const IN_LOGGING_S_IMPORT_FIRST: &str = r#"
import os, sys, threading, time
real_rlock = threading.RLock
def slow_rlock():
    os.close(os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY))
    end = time.monotonic() + 3
    while time.monotonic() < end:
        pass
    return real_rlock()
threading.RLock = slow_rlock
import logging
threading.RLock = real_rlock
"#;

#[test]
fn pdb_waits_until_the_main_thread_is_out_of_pdb_s_own_code() {
    // The main thread may take the request while pdb's code runs on it (a
    // session ending as the next begins, under load): a session started
    // there would stop inside pdb, or be switched off by the tear-down.
    a_session_starts_once_the_main_thread_is_out_of(IN_PDB_FIRST);
}

#[test]
fn pdb_waits_until_a_module_pdb_needs_is_imported() {
    // pdb's own imports in the middle of the target's `import logging`
    // found the module half made and failed, the client waiting for ever.
    a_session_starts_once_the_main_thread_is_out_of(IN_LOGGING_S_IMPORT_FIRST);
}

#[test]
fn a_program_that_runs_from_an_import_gets_pdb_where_it_runs() {
    // Some programs run for good from an import (`python -c 'import app'`):
    // their import never ends, and is no reason to wait.
    let code = r#"
import os
with open(os.path.join(os.path.dirname(__file__), "app.py"), "w") as app:
    app.write("""
import time
counter = 0
def serve():
    global counter
    while True:
        counter += 1
        time.sleep(0.01)
serve()
""")
import app
"#;
    let started = start(code, &[]);
    ready(&started);
    let (mut pdb, _interrupt) = Pdb::attach(&started.host, started.id);
    let shown = pdb.until_prompt();
    assert!(
        shown.contains("app.py") && shown.contains("serve()"),
        "{shown}"
    );
    pdb.say("p counter > 0");
    assert!(pdb.until_prompt().contains("True"));
    pdb.say("q");
    pdb.rest();
}

/// Attaches while the main thread runs `first` (which creates the file its
/// argument names once in the code to wait out, then runs on for 3 s),
/// followed by a counter: pdb's first stop is in the target's script.
fn a_session_starts_once_the_main_thread_is_out_of(first: &str) {
    let dir = tempdir();
    let marker = dir.path().join("in");
    let code = format!("{first}{COUNTER}");
    let started = start_args(&code, &[marker.to_str().unwrap()], &[]);
    ready(&started);
    wait_for("the target in the code to wait out", || marker.exists());
    let (mut pdb, _interrupt) = Pdb::attach(&started.host, started.id);
    let shown = pdb.until_prompt();
    let here = shown.lines().find(|line| line.starts_with("> ")).unwrap();
    assert!(here.contains("agent_target.py"), "{shown}");
    pdb.say("p __import__('os').getpid()");
    let shown = pdb.until_prompt();
    assert_eq!(shown.trim(), started.id.pid.to_string());
    pdb.say("q");
    pdb.rest();
    assert!(started.host.state(started.id).is_ready());
}

#[test]
fn stacks_are_read_from_within() {
    let started = start(COUNTER, &[]);
    ready(&started);
    // The hello comes at the end of start-up: the main thread gets to `work`
    // a moment later.
    let mut threads = Vec::new();
    wait_for("the main thread in work", || {
        threads = started.host.stacks(started.id, &due()).unwrap();
        // (A main thread with no Python frame yet is not listed at all.)
        threads
            .iter()
            .any(|thread| thread.main && thread.frames.iter().any(|frame| frame.function == "work"))
    });
    assert!(threads
        .iter()
        .any(|thread| thread.name.as_deref() == Some("heli-agent")));
}

#[test]
fn without_remote_debugging_a_handler_of_the_agent_runs_pdb() {
    let started = start(COUNTER, &[("PYTHON_DISABLE_REMOTE_DEBUG", "1")]);
    let state = ready(&started);
    assert!(
        matches!(&state, AgentState::Ready { trigger, .. } if trigger == "signal"),
        "{state}"
    );
    for _ in 0..2 {
        let shown = attach_and_print(&started.host, started.id);
        assert!(
            shown.contains(&format!("('pid', {})", started.id.pid)),
            "{shown}"
        );
        // The session's end wakes the handler too (to let go of pdb): it
        // must not take that for a real signal and end the target.
        std::thread::sleep(Duration::from_millis(500));
        let state = started.host.state(started.id);
        let alive = Proc::open_id(started.id).unwrap().is_some();
        assert!(state.is_ready() && alive, "{state}, alive: {alive}");
    }
}

#[test]
fn the_target_sees_its_own_environment_path_and_sitecustomize() {
    let dir = tempdir();
    let own = dir.path().join("own");
    std::fs::create_dir(&own).unwrap();
    std::fs::write(
        own.join("sitecustomize.py"),
        "import builtins\nbuiltins.OWN_SITE = 1\n",
    )
    .unwrap();
    let out = dir.path().join("seen.json");
    let code = r#"
import builtins, json, os, sys
seen = {
    "own": getattr(builtins, "OWN_SITE", 0),
    "site": sys.modules["sitecustomize"].__file__,
    "path": os.environ.get("PYTHONPATH"),
    "heli": sorted(k for k in os.environ if k.startswith("HELI_AGENT")),
    "sys_path": [p for p in sys.path if "heli-agent" in p],
    "argv": sys.argv[2:],
    "main": sys.modules["__main__"].__file__,
}
open(sys.argv[1], "w").write(json.dumps(seen))
import time; time.sleep(30)
"#;
    let script = dir.path().join("target.py");
    std::fs::write(&script, code).unwrap();
    let mut command = Command::new(python314());
    command
        .arg(&script)
        .arg(&out)
        .arg("--flag")
        .env("PYTHONPATH", &own);
    let host = AgentHost::in_dir(dir.path()).unwrap();
    let mut supervisor = ProcessSupervisor::new(command).agent(host.clone());
    supervisor.spawn().unwrap();
    wait_for("the target's report", || {
        out.exists() && std::fs::metadata(&out).unwrap().len() > 0
    });
    let seen: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = supervisor.signal(libc::SIGKILL);
    assert_eq!(seen["own"], 1, "{seen}");
    assert_eq!(
        seen["site"],
        own.join("sitecustomize.py").to_str().unwrap(),
        "{seen}"
    );
    assert_eq!(seen["path"], own.to_str().unwrap(), "{seen}");
    assert_eq!(seen["heli"], json!([]), "{seen}");
    assert_eq!(seen["sys_path"], json!([]), "{seen}");
    assert_eq!(seen["argv"], json!(["--flag"]), "{seen}");
    assert_eq!(seen["main"], script.to_str().unwrap(), "{seen}");
}

fn start_with(
    program: &str,
    args: &[&str],
) -> (ProcessSupervisor, AgentHost, ProcessId, tempfile::TempDir) {
    start_env(program, args, &[])
}

/// `program` with `args` (and more environment) under a supervisor that
/// sets up the agent, its files in a new temporary directory.
fn start_env(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (ProcessSupervisor, AgentHost, ProcessId, tempfile::TempDir) {
    let dir = tempdir();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .envs(env.iter().copied());
    let host = AgentHost::in_dir(dir.path()).unwrap();
    let mut supervisor = ProcessSupervisor::new(command).agent(host.clone());
    let pid = supervisor.spawn().unwrap();
    let id = Proc::open(pid)
        .unwrap()
        .unwrap()
        .identity()
        .unwrap()
        .unwrap();
    (supervisor, host, id, dir)
}

#[test]
fn a_forked_child_has_an_agent_of_its_own_and_never_answers_for_its_parent() {
    let started = start(
        r#"
import os, sys, time
counter = 0
def parent_loop():
    while True: time.sleep(0.01)
def child_loop():
    global counter
    while True:
        counter += 1
        time.sleep(0.01)
child = os.fork()
if child == 0:
    child_loop()
open(sys.argv[0] + ".child", "w").write(str(child))
parent_loop()
"#,
        &[],
    );
    ready(&started);
    let script_dir = started._dir.path().join("agent_target.py.child");
    wait_for("the child's pid", || {
        std::fs::read_to_string(&script_dir).is_ok_and(|s| !s.is_empty())
    });
    let child: u32 = std::fs::read_to_string(&script_dir)
        .unwrap()
        .parse()
        .unwrap();
    let child = Proc::open(heli_core::Pid::new(child).unwrap())
        .unwrap()
        .unwrap()
        .identity()
        .unwrap()
        .unwrap();
    wait_for("the child's agent", || started.host.state(child).is_ready());
    let functions = |id| -> Vec<String> {
        let threads = started.host.stacks(id, &due()).unwrap();
        threads
            .into_iter()
            .filter(|thread| thread.main)
            .flat_map(|thread| thread.frames)
            .map(|frame| frame.function)
            .collect()
    };
    // Ready at the fork: its main thread gets to the loops a moment later.
    wait_for("the child's stack", || {
        functions(child).contains(&"child_loop".to_owned())
    });
    wait_for("the parent's stack", || {
        functions(started.id).contains(&"parent_loop".to_owned())
    });
    // pdb in the child is the child's.
    let (mut pdb, _interrupt) = Pdb::attach(&started.host, child);
    pdb.until_prompt();
    pdb.say("p os.getpid(), counter > 0");
    let shown = pdb.until_prompt();
    assert!(shown.contains(&format!("({}, True)", child.pid)), "{shown}");
    pdb.say("q");
    let _ = libc_kill(child.pid.get());
}

fn libc_kill(pid: u32) -> i32 {
    // The forked child is not the supervisor's: end it by hand.
    Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .map_or(-1, |s| s.code().unwrap_or(-1))
}

#[test]
fn an_older_python_says_so_and_a_non_python_target_never_answers() {
    let (mut supervisor, host, id, _dir) = start_with(
        "/root/.pyenv/versions/3.13.0/bin/python3.13",
        &["-c", "import time; time.sleep(30)"],
    );
    wait_for("the agent's answer", || {
        host.state(id) != AgentState::Starting
    });
    let state = host.state(id);
    assert!(
        matches!(&state, AgentState::Failed(why) if why.contains("runs Python 3.13.0; the agent needs Python 3.14")),
        "{state}"
    );
    let err = host.attach(id, &due()).unwrap_err();
    assert!(err.to_string().contains("3.13.0"), "{err}");
    let _ = supervisor.signal(libc::SIGKILL);

    let (mut supervisor, host, id, _dir) = start_with("sleep", &["30"]);
    let short = Deadline::after(Duration::from_millis(500));
    let err = host.attach(id, &short).unwrap_err();
    assert!(err.to_string().contains("is not a Python process"), "{err}");
    let _ = supervisor.signal(libc::SIGKILL);
}

#[test]
fn hostile_input_on_the_channel_leaves_the_target_running() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    // The test plays the controller: it holds the channel's other end.
    let host_dir = tempdir();
    let host = AgentHost::in_dir(host_dir.path()).unwrap();
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    nix::fcntl::fcntl(
        &theirs,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let mut target = Command::new(python314())
        .args(["-c", "import time\nwhile True: time.sleep(0.01)"])
        .env("PYTHONPATH", host.dir())
        .env("HELI_AGENT_FD", theirs.as_raw_fd().to_string())
        .env("HELI_AGENT_PARENT", std::process::id().to_string())
        .spawn()
        .unwrap();
    drop(theirs);
    ours.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(ours.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"hello\""), "{line}");
    let mut answer = |request: &[u8]| {
        ours.write_all(request).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        line
    };
    for garbage in [
        &b"\xff\xfe not json\n"[..],
        b"[1, 2, 3]\n",
        b"{\"id\": 7}\n",
        b"{\"id\": 8, \"op\": \"attach\"}\n",
        b"{\"id\": 9, \"op\": \"rm -rf /\"}\n",
        b"{\"id\": \"x\", \"op\": \"stacks\"}\n",
    ] {
        let line = answer(garbage);
        assert!(line.contains("\"error\""), "{line}");
    }
    assert!(answer(b"{\"id\": 10, \"op\": \"stacks\"}\n").contains("\"ok\": true"));
    // A line longer than any request: the agent lets the channel go.
    ours.write_all(&vec![b'x'; 200 << 10]).unwrap_or(());
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    std::thread::sleep(Duration::from_millis(300));
    assert!(target.try_wait().unwrap().is_none(), "the target ended");
    target.kill().unwrap();
    target.wait().unwrap();
}

#[test]
fn a_second_attach_while_one_is_on_is_refused_and_the_first_goes_on() {
    let started = start(COUNTER, &[]);
    ready(&started);
    let (mut pdb, _interrupt) = Pdb::attach(&started.host, started.id);
    pdb.until_prompt();
    let err = started.host.attach(started.id, &due()).unwrap_err();
    assert!(err.to_string().contains("already attached"), "{err}");
    pdb.say("p counter > 0");
    assert!(pdb.until_prompt().contains("True"));
    pdb.say("q");
}

#[test]
fn a_client_gone_while_the_target_runs_on_in_pdb_does_not_block_the_next_attach() {
    let started = start(COUNTER, &[]);
    ready(&started);
    for _ in 0..2 {
        let (mut pdb, interrupt) = Pdb::attach(&started.host, started.id);
        pdb.until_prompt();
        // A breakpoint the target never reaches, then `continue`; then the
        // client dies (both sockets close) while the target runs on.
        pdb.say("b 1");
        pdb.until_prompt();
        pdb.say("c");
        std::thread::sleep(Duration::from_millis(200));
        drop((pdb, interrupt));
    }
    let mut shown = String::new();
    wait_for("an attach taken again", || {
        let (mut pdb, _interrupt) = Pdb::attach(&started.host, started.id);
        shown = pdb.until_prompt();
        let fine = !shown.contains("Another PDB instance");
        pdb.say("q");
        fine
    });
    assert!(shown.contains("work"), "{shown}");
}

/// Runs its arguments under a seccomp filter that makes process_vm_readv
/// and process_vm_writev fail with EPERM, as a container's profile may.
const NO_VM_WRITES: &str = r#"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <stddef.h>
#include <errno.h>
#include <unistd.h>
#include <stdio.h>
int main(int argc, char **argv) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_vm_writev, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_process_vm_readv, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
    };
    struct sock_fprog program = { .len = sizeof filter / sizeof filter[0], .filter = filter };
    if (argc < 2 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program)) {
        perror("seccomp");
        return 1;
    }
    execvp(argv[1], argv + 1);
    perror("exec");
    return 1;
}
"#;

fn attach_and_print(host: &AgentHost, id: ProcessId) -> String {
    let (mut pdb, _interrupt) = Pdb::attach(host, id);
    pdb.until_prompt();
    pdb.say("p ('pid', __import__('os').getpid())");
    let shown = pdb.until_prompt();
    pdb.say("q");
    shown
}

#[test]
fn under_a_seccomp_filter_forbidding_remote_exec_the_handler_runs_pdb() {
    let wrapper = common::build_c("no_vm_writes", NO_VM_WRITES, &[]);
    let python = python314();
    let (mut supervisor, host, id, _dir) = start_with(
        wrapper.to_str().unwrap(),
        &[python.to_str().unwrap(), "-c", COUNTER],
    );
    wait_for("the agent's hello", || host.state(id).is_ready());
    let shown = attach_and_print(&host, id);
    assert!(shown.contains(&format!("('pid', {})", id.pid)), "{shown}");
    let _ = supervisor.signal(libc::SIGKILL);
}

#[test]
fn a_wrapper_that_runs_python_without_exec_is_named_not_waited_for() {
    let python = python314();
    let script = format!(
        "{} -c 'import time; time.sleep(30)'; true",
        python.display()
    );
    let (mut supervisor, host, id, _dir) = start_with("bash", &["-c", &script]);
    wait_for("the child's word", || {
        host.state(id) != AgentState::Starting
    });
    let err = host.attach(id, &due()).unwrap_err();
    assert!(err.to_string().contains("is not Python itself"), "{err}");
    let _ = supervisor.signal(libc::SIGKILL);
}

#[test]
fn a_stopped_target_is_named_and_served_again_once_continued() {
    let mut started = start(COUNTER, &[]);
    ready(&started);
    started.supervisor.signal(libc::SIGSTOP).unwrap();
    wait_for("stopped", || {
        Proc::open(started.id.pid)
            .unwrap()
            .unwrap()
            .info()
            .unwrap()
            .unwrap()
            .state
            == heli_core::ProcessState::Stopped
    });
    let short = Deadline::after(Duration::from_secs(1));
    let err = started.host.attach(started.id, &short).unwrap_err();
    assert!(err.to_string().contains("is stopped"), "{err}");
    started.supervisor.signal(libc::SIGCONT).unwrap();
    let shown = attach_and_print(&started.host, started.id);
    assert!(
        shown.contains(&format!("('pid', {})", started.id.pid)),
        "{shown}"
    );
}

/// pdb on the sockets of `session` (a stream that stays silent failing
/// the test, not hanging it), its interrupt stream, and its number.
fn pdb_of(session: heli_core::AgentSession) -> (Pdb, UnixStream, u64) {
    let mut fds = session.fds.into_iter();
    let stream = UnixStream::from(fds.next().unwrap());
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let interrupt = UnixStream::from(fds.next().unwrap());
    (Pdb(BufReader::new(stream)), interrupt, session.id)
}

/// The counter of `COUNTER`, read by a session of its own.
fn counter_of(started: &Started) -> u64 {
    let (mut pdb, _interrupt, _) = pdb_of(attach(&started.host, started.id));
    pdb.until_prompt();
    pdb.say("p counter");
    let shown = pdb.until_prompt();
    pdb.say("q");
    pdb.rest();
    shown.trim().parse().unwrap()
}

#[test]
fn a_session_whose_time_is_up_is_ended_from_inside_whoever_holds_its_sockets() {
    let started = start(COUNTER, &[]);
    ready(&started);
    let (host, id) = (&started.host, started.id);
    // At pdb's prompt, the target held: its client keeps the sockets and
    // says nothing.
    let (mut pdb, mut interrupt, session) = pdb_of(attach(host, id));
    pdb.until_prompt();
    assert!(host.hang_up(id, session, &due()).unwrap());
    pdb.rest();
    interrupt
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(std::io::Read::read(&mut interrupt, &mut [0; 8]).unwrap(), 0);
    // Over: asked again, nothing is done; the target runs on.
    assert!(!host.hang_up(id, session, &due()).unwrap());
    let before = counter_of(&started);
    std::thread::sleep(Duration::from_millis(300));
    assert!(counter_of(&started) > before);

    // pdb attached while the target runs on (`continue`): let go of, and
    // the next session starts.
    let (mut pdb, _interrupt, session) = pdb_of(attach(host, id));
    pdb.until_prompt();
    pdb.say("b 1");
    pdb.until_prompt();
    pdb.say("c");
    std::thread::sleep(Duration::from_millis(200));
    assert!(host.hang_up(id, session, &due()).unwrap());
    pdb.rest();
    let mut shown = String::new();
    wait_for("an attach taken again", || {
        let (mut pdb, _interrupt, _) = pdb_of(attach(host, id));
        shown = pdb.until_prompt();
        pdb.say("q");
        !shown.contains("Another PDB instance")
    });
    assert!(shown.contains("work"), "{shown}");
}

#[test]
fn a_session_kept_on_after_its_interrupt_stream_closed_is_still_ended_and_named_as_on() {
    // A hostile client keeps pdb's stream and closes the interrupt
    // stream: the agent takes a new attach (the earlier one looks over to
    // its thread), whose answer names the earlier session as still on.
    let started = start(COUNTER, &[]);
    ready(&started);
    let (host, id) = (&started.host, started.id);
    let (mut held, interrupt, first) = pdb_of(attach(host, id));
    held.until_prompt();
    drop(interrupt);
    let second = attach(host, id);
    assert_eq!(second.earlier_on, [first]);
    let (mut pdb, interrupt, second) = pdb_of(second);
    // The main thread is at the held session's prompt: the second waits
    // until the first is ended.
    assert!(host.hang_up(id, first, &due()).unwrap());
    held.rest();
    let shown = pdb.until_prompt();
    assert!(shown.contains("work"), "{shown}");
    pdb.say("q");
    pdb.rest();
    drop(interrupt);
    // Over, both: a third names none.
    let third = attach(host, id);
    assert!(third.earlier_on.is_empty(), "{:?}", third.earlier_on);
    assert!(!host.hang_up(id, second, &due()).unwrap());
}

#[test]
fn a_session_whose_client_quit_pdb_but_keeps_the_interrupt_stream_is_still_ended() {
    // pdb's stream is closed, yet a byte on the interrupt stream still
    // interrupts the target (and keeps the agent busy): the session is on
    // until both are closed, and its end shuts the interrupt stream down.
    let started = start(COUNTER, &[]);
    ready(&started);
    let (host, id) = (&started.host, started.id);
    let (mut pdb, mut interrupt, session) = pdb_of(attach(host, id));
    pdb.until_prompt();
    pdb.say("q");
    pdb.rest();
    assert!(host.hang_up(id, session, &due()).unwrap());
    interrupt
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(std::io::Read::read(&mut interrupt, &mut [0; 8]).unwrap(), 0);
    // Written now, the byte reaches nobody; the next client attaches.
    let _ = interrupt.write_all(b"!");
    let before = counter_of(&started);
    assert!(before > 0);
    assert!(started.host.state(id).is_ready());
}

/// Forks a child every 0.2 s that runs `child_work` for 0.5 s; the parent
/// reaps them without waiting (as a pre-fork server does).
const FORKING: &str = r#"
import os, time
def child_work():
    end = time.time() + 0.5
    while time.time() < end:
        time.sleep(0.01)
def work():
    while True:
        if os.fork() == 0:
            child_work()
            os._exit(0)
        time.sleep(0.2)
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
work()
"#;

#[test]
fn a_child_forked_under_pdb_never_takes_the_parents_session() {
    // Out of reach of the session's end once the parent lets go of it, a
    // child would debug over the parent's stream: it lets go of pdb at
    // the fork instead.
    let started = start(FORKING, &[]);
    ready(&started);
    let (host, id) = (&started.host, started.id);
    let (mut pdb, _interrupt, session) = pdb_of(attach(host, id));
    pdb.until_prompt();
    pdb.say("b child_work");
    pdb.until_prompt();
    pdb.say("c");
    // Children fork and run child_work: none stops there.
    pdb.0
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut line = String::new();
    let err = pdb.0.read_line(&mut line).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{line}");
    assert!(host.hang_up(id, session, &due()).unwrap());
}
