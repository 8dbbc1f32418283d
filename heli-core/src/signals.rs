//! The signals the controller catches, and the thread that catches them.

use std::io;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver};
use signal_hook::consts::signal::{
    SIGALRM, SIGCONT, SIGHUP, SIGINT, SIGPROF, SIGQUIT, SIGSTOP, SIGTERM, SIGTSTP, SIGURG, SIGUSR1,
    SIGUSR2, SIGVTALRM, SIGWINCH,
};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::Cause;

/// Signals that end the controller: they are passed to the target, which is
/// killed if it still runs after the grace period.
pub const STOP_SIGNALS: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

/// Signals only passed on to the target. Not SIGCHLD, not SIGTTIN and
/// SIGTTOU (which concern the controller's own use of the terminal), and not
/// the synchronous ones (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP,
/// SIGSYS), which concern the controller itself.
pub const PASS_SIGNALS: [i32; 8] = [
    SIGUSR1, SIGUSR2, SIGWINCH, SIGALRM, SIGCONT, SIGURG, SIGPROF, SIGVTALRM,
];

/// Signals that suspend the controller with its target, as under dumb-init:
/// the target gets the signal, then the controller stops itself (SIGSTOP),
/// so a shell sees its job stopped; SIGCONT (in [`PASS_SIGNALS`]) continues
/// both.
pub const SUSPEND_SIGNALS: [i32; 1] = [SIGTSTP];

/// Default time a target gets to end after SIGTERM before SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// A signal the controller caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caught {
    /// Its number.
    pub(crate) signal: i32,
    /// Whether the kernel sent it (the terminal's Ctrl-C, Ctrl-\ and
    /// hang-up are), rather than a process (`kill`).
    pub(crate) from_kernel: bool,
}

/// Stops the whole controller process (for [`SUSPEND_SIGNALS`]).
pub(crate) fn stop_self() -> io::Result<()> {
    signal_hook::low_level::raise(SIGSTOP)
}

/// Forwards caught signals into a channel from a thread of its own.
pub(crate) struct SignalThread {
    pub(crate) rx: Receiver<Caught>,
    handle: signal_hook::iterator::Handle,
    thread: Option<thread::JoinHandle<()>>,
}

impl SignalThread {
    pub(crate) fn start() -> io::Result<SignalThread> {
        let mut signals = SignalsInfo::<WithOrigin>::new(
            STOP_SIGNALS
                .iter()
                .chain(&PASS_SIGNALS)
                .chain(&SUSPEND_SIGNALS),
        )?;
        let handle = signals.handle();
        let (tx, rx) = bounded(16);
        let thread = thread::Builder::new()
            .name("heli-signals".into())
            .spawn(move || {
                for origin in signals.forever() {
                    let caught = Caught {
                        signal: origin.signal,
                        from_kernel: origin.cause == Cause::Kernel,
                    };
                    if tx.send(caught).is_err() {
                        break;
                    }
                }
            })?;
        Ok(SignalThread {
            rx,
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    use crossbeam_channel::RecvTimeoutError;

    /// Set in the environment of the child process that stops itself.
    const CHILD: &str = "HELI_CORE_TEST_STOP_SELF";
    /// Generous bound on anything that should be quick.
    const HANG: Duration = Duration::from_secs(10);

    /// The child's part of `stop_self_stops_the_whole_process`; does
    /// nothing elsewhere.
    #[test]
    #[ignore = "run in a child process by stop_self_stops_the_whole_process"]
    fn stop_self_in_a_child() {
        if std::env::var_os(CHILD).is_some() {
            println!("stopping");
            stop_self().unwrap();
            println!("continued");
        }
    }

    /// Kills and reaps the child, whatever happens (SIGKILL ends a stopped
    /// process too).
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn stop_self_stops_the_whole_process() {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["signals::tests::stop_self_in_a_child", "--exact"])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let child = Reaped(child);
        let (tx, lines) = bounded(16);
        thread::spawn(move || {
            for line in stdout.lines() {
                let _ = tx.send(line.unwrap());
            }
        });
        let next = |within| lines.recv_timeout(within);
        // The test harness writes "test <name> ... " before the child's line.
        while !next(HANG)
            .expect("the child did not start")
            .ends_with("stopping")
        {}
        // Stopped, it says nothing more until continued; running, it would
        // go on at once.
        assert_eq!(
            next(Duration::from_millis(500)),
            Err(RecvTimeoutError::Timeout),
            "the child did not stop"
        );
        let pid = child.0.id().to_string();
        let sent = Command::new("sh")
            .args(["-c", "kill -CONT \"$0\"", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        assert_eq!(next(HANG).as_deref(), Ok("continued"));
    }
}
