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
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.supervisor.signal(libc::SIGKILL);
    }
}

fn start(code: &str, env: &[(&str, &str)]) -> Started {
    let dir = tempdir();
    let script = dir.path().join("agent_target.py");
    std::fs::write(&script, code).unwrap();
    let mut command = Command::new(python314());
    command.arg(&script).stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let host = AgentHost::in_dir(dir.path()).unwrap();
    let mut supervisor = ProcessSupervisor::new(command).agent(host.clone());
    let pid = supervisor.spawn().unwrap();
    let id = Proc::open(pid)
        .unwrap()
        .unwrap()
        .identity()
        .unwrap()
        .unwrap();
    Started {
        supervisor,
        host,
        id,
        _dir: dir,
    }
}

fn due() -> Deadline {
    Deadline::after(Duration::from_secs(10))
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
    fn next(&mut self) -> Value {
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "pdb's server closed the stream");
        serde_json::from_str(&line).unwrap()
    }

    /// The messages up to the next prompt, as text.
    fn until_prompt(&mut self) -> String {
        let mut text = String::new();
        loop {
            let message = self.next();
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
        let session = started.host.attach(started.id, &due()).unwrap();
        let mut fds = session.fds.into_iter();
        let stream = UnixStream::from(fds.next().unwrap());
        let _interrupt = UnixStream::from(fds.next().unwrap());
        let mut pdb = Pdb(BufReader::new(stream));
        let shown = pdb.until_prompt();
        assert!(shown.contains("work"), "{shown}");
        pdb.say("p counter > 0, __name__");
        let shown = pdb.until_prompt();
        assert!(shown.contains("(True, '__main__')"), "{shown}");
        // `q` detaches: the stream ends, the target runs on.
        pdb.say("q");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut pdb.0, &mut rest).unwrap();
    }
    assert!(started.host.state(started.id).is_ready());
}

#[test]
fn stacks_are_read_from_within() {
    let started = start(COUNTER, &[]);
    ready(&started);
    let threads = started.host.stacks(started.id, &due()).unwrap();
    let main = threads.iter().find(|thread| thread.main).unwrap();
    let functions: Vec<&str> = main.frames.iter().map(|f| f.function.as_str()).collect();
    assert!(functions.contains(&"work"), "{functions:?}");
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
    let session = started.host.attach(started.id, &due()).unwrap();
    let mut fds = session.fds.into_iter();
    let stream = UnixStream::from(fds.next().unwrap());
    // Closing the interrupt stream would tell the agent the client is gone.
    let _interrupt = UnixStream::from(fds.next().unwrap());
    let mut pdb = Pdb(BufReader::new(stream));
    pdb.until_prompt();
    pdb.say("p counter > 0");
    assert!(pdb.until_prompt().contains("True"));
    pdb.say("q");
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
