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
