//! How the controller runs the target.

use std::fmt;
use std::io;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::process::{Pid, ProcessId, Processes};

/// How a target process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// A signal with this number killed it.
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128 + the signal.
    ///
    /// The controller exits with this status.
    pub fn shell_code(&self) -> i32 {
        match *self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }

    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// A target process that ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Exit {
    /// Its process id (no longer valid).
    pub pid: Pid,
    /// How it ended.
    pub status: ExitStatus,
}

/// Runs the target process and watches it.
///
/// A supervisor also answers for the platform its target runs on: it is a
/// [`Processes`] table, which the controller asks who a client is before it
/// grants anything.
///
/// # Examples
///
/// A supervisor's contract in brief, from the controller's side:
///
/// ```no_run
/// # fn demo(mut supervisor: impl heli_core::Supervisor) -> std::io::Result<()> {
/// use heli_core::Processes;
/// use std::time::Duration;
///
/// let exits = supervisor.exits();
/// let pid = supervisor.spawn()?;
/// println!("target is {pid}, started at {:?}", supervisor.identity(pid)?);
/// let exit = supervisor.stop(Duration::from_secs(2))?;
/// assert_eq!(exit.pid, pid);
/// # drop(exits); Ok(()) }
/// ```
pub trait Supervisor: Processes {
    /// Starts the target and returns its process id.
    ///
    /// # Errors
    ///
    /// When it cannot be started (program not found, ...).
    fn spawn(&mut self) -> io::Result<Pid>;

    /// The channel on which every spawned target's [`Exit`] arrives, once,
    /// after it was reaped.
    fn exits(&self) -> Receiver<Exit>;

    /// The running target's process id, if one runs.
    fn pid(&self) -> Option<Pid>;

    /// Whether what the terminal sends to its foreground process group
    /// (Ctrl-C, Ctrl-\\, hang-up) reaches the target directly, so that it
    /// must not be passed on again (default: yes, the target is in the
    /// controller's group; also when the target's own group has the
    /// terminal).
    fn shares_terminal(&self) -> bool {
        true
    }

    /// The target's command line, for status reports (default: empty).
    fn describe(&self) -> String {
        String::new()
    }

    /// Sends signal number `signal` to the target.
    ///
    /// # Errors
    ///
    /// When no target runs or the signal could not be sent.
    fn signal(&mut self, signal: i32) -> io::Result<()>;

    /// Asks the target to end (SIGTERM for a process).
    ///
    /// # Errors
    ///
    /// As [`signal`](Supervisor::signal).
    fn terminate(&mut self) -> io::Result<()>;

    /// Ends the target at once (SIGKILL for a process).
    ///
    /// # Errors
    ///
    /// As [`signal`](Supervisor::signal).
    fn kill(&mut self) -> io::Result<()>;

    /// Sends signal number `signal` to every process descended from
    /// `ancestor` that still runs (not to `ancestor` itself): how the
    /// controller ends the debuggers a client runs past its time limit.
    /// How many processes it signalled.
    ///
    /// Default: unsupported.
    ///
    /// # Errors
    ///
    /// When the processes could not be listed; a process that ends
    /// meanwhile is no error.
    ///
    /// # Race conditions
    ///
    /// A descendant must be signalled as the process it was found to be,
    /// never another process that took its pid since.
    fn signal_descendants(&mut self, ancestor: ProcessId, signal: i32) -> io::Result<usize> {
        let _ = (ancestor, signal);
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Asks the target to end, kills it if it still runs after `grace`, and
    /// returns how it ended.
    ///
    /// # Errors
    ///
    /// When no target runs, or signalling it failed.
    fn stop(&mut self, grace: Duration) -> io::Result<Exit> {
        let exits = self.exits();
        let gone = || {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "supervisor dropped its exit channel",
            )
        };
        self.terminate()?;
        match exits.recv_timeout(grace) {
            Ok(exit) => Ok(exit),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                self.kill()?;
                exits.recv().map_err(|_| gone())
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(gone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::ProcessInfo;

    /// A supervisor that says only what it must.
    struct Bare;
    impl Processes for Bare {
        fn process(&self, _: Pid) -> io::Result<Option<ProcessInfo>> {
            Ok(None)
        }
    }
    impl Supervisor for Bare {
        fn spawn(&mut self) -> io::Result<Pid> {
            Err(io::ErrorKind::Unsupported.into())
        }
        fn exits(&self) -> Receiver<Exit> {
            crossbeam_channel::never()
        }
        fn pid(&self) -> Option<Pid> {
            None
        }
        fn signal(&mut self, _: i32) -> io::Result<()> {
            Ok(())
        }
        fn terminate(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn kill(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn by_default_a_target_shares_the_terminal_and_has_no_command_line() {
        assert!(Bare.shares_terminal());
        assert_eq!(Bare.describe(), "");
    }
}
