//! Python 3.14 targets for the crate's unit tests.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use heli_core::{ProcessId, Processes};

// How the tests find Python 3.14 (`$HELI_PYTHON`, else scripts/test.sh's
// install; missing, the test fails): the integration tests' own way.
#[allow(dead_code)]
#[path = "../tests/common/python.rs"]
mod shared;
pub(crate) use shared::python314;

/// Runs Python 3.14 code, its stdin and stdout ours; killed when dropped.
pub(crate) struct Target {
    child: Child,
    pub(crate) input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Target {
    /// Python 3.14 running `code`.
    pub(crate) fn start(code: &str) -> Target {
        let mut child = Command::new(python314())
            .args(["-c", code])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("Python 3.14 (HELI_PYTHON)");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Target {
            child,
            input,
            output,
        }
    }

    /// The next line it prints.
    pub(crate) fn line(&mut self) -> String {
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line
    }

    /// Who it is.
    pub(crate) fn id(&self) -> ProcessId {
        let pid = heli_core::Pid::new(self.child.id()).unwrap();
        heli_proc::ProcFs.identity(pid).unwrap().unwrap()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
