//! Remote execution (PEP 768) must never corrupt, kill or hang the target:
//! real CPython 3.14 targets that race the writes, fail on each path out
//! of a grant, and run a script late.

mod common;

use common::{serial, SOON};

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use heli_core::Pid;
use heli_grant::remote_exec;

fn python314() -> PathBuf {
    std::env::var_os("HELI_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/opt/heli/py314/usr/bin/python3.14")])
        .find(|path| path.exists())
        .expect("Python 3.14 not found: run scripts/test.sh (it installs it) or set HELI_PYTHON")
}

/// A target whose stdout lines we read; killed when dropped.
struct Target {
    child: Child,
    pid: Pid,
    lines: Receiver<String>,
}

impl Target {
    fn spawn(command: &mut Command) -> Target {
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = unbounded();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let pid = Pid::new(child.id()).unwrap();
        let target = Target { child, pid, lines };
        target.line_matching("ready", SOON);
        target
    }

    fn python(code: &str) -> Target {
        Target::spawn(Command::new(python314()).args(["-c", code]))
    }

    fn line_matching(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|err| panic!("no line {prefix:?} from PID {}: {err}", self.pid));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("heli-pep768-test-")
        .tempdir()
        .unwrap()
}

// ------------------------------------------------- the eval breaker's upper bits

/// Changes the instrumentation version (bits 8 and up of every thread's
/// eval breaker) as fast as it can, and calls a function between changes
/// (its `RESUME` compares that version with the code's).
const INSTRUMENTING_PY: &str = "
import sys
print('ready', flush=True)
def trace(*args):
    return None
def call():
    return 1
n = 0
tool = 3
sys.monitoring.use_tool_id(tool, 'heli-test')
events = sys.monitoring.events
while True:
    sys.settrace(trace); call(); sys.settrace(None); call()
    sys.monitoring.set_events(tool, events.PY_START); call()
    sys.monitoring.set_events(tool, 0); call()
    n += 1
";

/// Before the fix, the request wrote back all eight bytes of the eval
/// breaker it had read: a version change in between left the thread with
/// an old version, and its `RESUME` re-instrumented forever with the GIL
/// held (the script never ran, the loop never advanced).
#[test]
fn remote_exec_never_rolls_back_the_instrumentation_version() {
    let _serial = serial("remote_exec_never_rolls_back_the_instrumentation_version");
    let target = Target::python(INSTRUMENTING_PY);
    let dir = tempdir();
    let script = dir.path().join("served.py");
    std::fs::write(
        &script,
        "import sys\nprint('served', sys._getframe(1).f_globals['n'], flush=True)\n",
    )
    .unwrap();
    let start = Instant::now();
    let mut last = 0u64;
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(8) {
        let request = remote_exec(target.pid, &script).unwrap();
        if let Err(err) = request.wait_started(Duration::from_secs(3)) {
            panic!("request {served} was not served (the target is stuck?): {err}");
        }
        let line = target.line_matching("served", Duration::from_secs(3));
        let n: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(n >= last, "{line} after {last}");
        last = n;
        served += 1;
    }
    eprintln!("{served} requests served, the target's loop at {last}");
    assert!(served > 100, "only {served} requests in 8 s");
}
