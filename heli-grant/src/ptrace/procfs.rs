//! What the injector reads in `/proc`: a task's status, and what a file that
//! cannot be read says about the process.

use std::fs;
use std::io;

/// An error reading `/proc/PID/...`: a process that is gone (or going) is
/// not found.
pub(super) fn proc_error(pid: u32, path: &str, err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH) {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no process with PID {pid}"),
        )
    } else {
        io::Error::new(err.kind(), format!("{path}: {err}"))
    }
}

/// What the injector reads in `/proc/PID[/task/TID]/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct TaskStatus {
    pub(super) state: char,
    pub(super) tgid: u32,
    pub(super) threads: u32,
    pub(super) tracer: u32,
    pub(super) seccomp: u8,
}

impl TaskStatus {
    pub(super) fn read(pid: u32, tid: Option<u32>) -> io::Result<TaskStatus> {
        let path = match tid {
            Some(tid) => format!("/proc/{pid}/task/{tid}/status"),
            None => format!("/proc/{pid}/status"),
        };
        let text = fs::read_to_string(&path).map_err(|err| proc_error(pid, &path, err))?;
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> TaskStatus {
        let mut status = TaskStatus::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "State" => status.state = value.chars().next().unwrap_or('?'),
                "Tgid" => status.tgid = value.parse().unwrap_or(0),
                "Threads" => status.threads = value.parse().unwrap_or(0),
                "TracerPid" => status.tracer = value.parse().unwrap_or(0),
                "Seccomp" => status.seccomp = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        status
    }

    /// A zombie, or dead.
    pub(super) fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let text = "Name:\tpython3\nState:\tS (sleeping)\nTgid:\t42\nPid:\t43\n\
                    TracerPid:\t7\nThreads:\t3\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        let status = TaskStatus::parse(text);
        assert_eq!(
            status,
            TaskStatus {
                state: 'S',
                tgid: 42,
                threads: 3,
                tracer: 7,
                seccomp: 2
            }
        );
        assert!(!status.exited());
        assert!(TaskStatus::parse("State:\tZ (zombie)\n").exited());
    }
}
