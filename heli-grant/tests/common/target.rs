//! Target processes and the lines they print.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver};
use heli_core::Pid;

use super::python::python314;
use super::serial::SOON;

/// The lines a process writes, read on a thread of their own.
#[derive(Debug)]
pub(crate) struct Lines {
    from: Pid,
    lines: Receiver<String>,
}

impl Lines {
    /// Reads `output`, the output of process `from`, until it ends.
    pub(crate) fn read(from: Pid, output: impl Read + Send + 'static) -> Lines {
        let (tx, lines) = unbounded();
        thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { from, lines }
    }

    /// The next line, which must come within [`SOON`].
    pub(crate) fn line(&self) -> String {
        self.lines
            .recv_timeout(SOON)
            .unwrap_or_else(|err| panic!("no line from PID {}: {err}", self.from))
    }

    /// Skips lines until one that starts with `prefix`, and returns it;
    /// it must come within [`SOON`].
    pub(crate) fn skip_to(&self, prefix: &str) -> String {
        self.skip_to_within(prefix, SOON)
    }

    /// Skips lines until one that starts with `prefix`, and returns it; it
    /// must come within `within`.
    pub(crate) fn skip_to_within(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let line = self
                .lines
                .recv_deadline(deadline)
                .unwrap_or_else(|err| panic!("no line {prefix:?} from PID {}: {err}", self.from));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// Fails if a line comes within `wait`.
    pub(crate) fn none_within(&self, wait: Duration) {
        self.none_starting("", wait);
    }

    /// Fails if a line that starts with `prefix` comes within `wait`.
    pub(crate) fn none_starting(&self, prefix: &str, wait: Duration) {
        let until = Instant::now() + wait;
        while let Ok(line) = self.lines.recv_deadline(until) {
            assert!(
                !line.starts_with(prefix),
                "unexpected line from PID {}: {line:?}",
                self.from
            );
        }
    }

    /// Drops the lines read so far.
    pub(crate) fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }
}

/// A child process whose stdout lines we read, once it has printed a line
/// starting with `ready`; killed when dropped.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) child: Child,
    pub(crate) pid: Pid,
    pub(crate) lines: Lines,
}

impl Target {
    /// Starts `command` (stdin empty, stdout ours) and waits for `ready`.
    pub(crate) fn spawn(command: &mut Command) -> Target {
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {command:?}: {err}"));
        let pid = Pid::new(child.id()).unwrap();
        let lines = Lines::read(pid, child.stdout.take().unwrap());
        lines.skip_to("ready");
        Target { child, pid, lines }
    }

    /// Python 3.14 running `code`, which prints `ready` when it is.
    pub(crate) fn python(code: &str) -> Target {
        Target::spawn(Command::new(python314()).args(["-c", code]))
    }

    /// Whether it still runs (it is ours to reap, so never a zombie here).
    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
