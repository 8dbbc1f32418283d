//! A debugger run within a grant's time limit (`attach --for`, the
//! controller's `--max-grant`): the client warns before the end, and at
//! the end detaches the debugger itself (SIGTERM: pdb's client closes its
//! socket, and pdb in the target detaches, the target running on), then
//! gives the terminal back as it was. The controller would end it
//! [`CLIENT_GRACE`](crate::core::CLIENT_GRACE) later otherwise.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::core::protocol::whole_seconds;
use nix::sys::signal::{kill, Signal};
use nix::sys::termios::{tcgetattr, tcsetattr, SetArg, Termios};

/// How long before the end a grant of more than twice this is warned of.
const WARN_BEFORE: Duration = Duration::from_secs(60);

/// How long a debugger has to end on SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// How often a debugger under a time limit is looked at.
const TICK: Duration = Duration::from_millis(100);

/// The time a debugger may run, counted by the client from its request
/// (so it is up no later than the controller's count, which starts once
/// the grant is made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeLimit {
    /// When the time is up.
    pub(crate) ends: Instant,
    /// How long it was.
    pub(crate) lasts: Duration,
}

impl TimeLimit {
    /// A limit of `lasts` counted from `from`.
    pub(crate) fn new(from: Instant, lasts: Duration) -> TimeLimit {
        TimeLimit {
            ends: from + lasts,
            lasts,
        }
    }

    /// When the warning is due: a minute before the end, or halfway for
    /// two minutes or less.
    fn warn_at(&self) -> Instant {
        let before = if self.lasts > 2 * WARN_BEFORE {
            WARN_BEFORE
        } else {
            self.lasts / 2
        };
        self.ends - before
    }
}

/// How a debugger run under a time limit ended.
#[derive(Debug)]
pub(crate) struct Ended {
    pub(crate) status: ExitStatus,
    /// It was ended because the time was up.
    pub(crate) timed_out: bool,
}

/// Waits for `child` (the debugger `name`, on this terminal) to exit; with
/// a `limit`, warns on `warn` before the end and ends it at the end
/// (SIGTERM, SIGKILL after `term_grace`), then restores the terminal.
///
/// # Errors
///
/// When waiting fails.
pub(crate) fn wait(
    child: &mut Child,
    limit: Option<TimeLimit>,
    name: &str,
    warn: &mut dyn Write,
) -> io::Result<Ended> {
    let Some(limit) = limit else {
        return Ok(Ended {
            status: child.wait()?,
            timed_out: false,
        });
    };
    wait_within(child, limit, name, warn, TERM_GRACE)
}

fn wait_within(
    child: &mut Child,
    limit: TimeLimit,
    name: &str,
    warn: &mut dyn Write,
    term_grace: Duration,
) -> io::Result<Ended> {
    // The terminal as the debugger found it: one ended while reading a
    // line may leave it without echo.
    let terminal = Terminal::save();
    let mut warned = false;
    let mut termed: Option<Instant> = None;
    let mut killed = false;
    loop {
        if let Some(status) = child.try_wait()? {
            if termed.is_some() {
                terminal.restore();
                let _ = writeln!(warn, "\r\n⌛ {name} was detached: the grant's time is up");
            }
            return Ok(Ended {
                status,
                timed_out: termed.is_some(),
            });
        }
        let now = Instant::now();
        // The child is not reaped until `try_wait` says so: its pid still
        // names it.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        if !warned && now >= limit.warn_at() && now < limit.ends {
            warned = true;
            let left = limit.ends.saturating_duration_since(now);
            let _ = writeln!(
                warn,
                "\r\n⏳ The grant ends in {} s: {name} will then be detached (the target runs on)",
                whole_seconds(left)
            );
        }
        match termed {
            None if now >= limit.ends => {
                let _ = writeln!(
                    warn,
                    "\r\n⌛ Time is up ({} s): detaching {name}; the target runs on",
                    limit.lasts.as_secs()
                );
                let _ = kill(pid, Signal::SIGTERM);
                termed = Some(now);
            }
            Some(at) if !killed && now >= at + term_grace => {
                let _ = kill(pid, Signal::SIGKILL);
                killed = true;
            }
            _ => {}
        }
        let next = match termed {
            None if warned => limit.ends,
            None => limit.warn_at().min(limit.ends),
            Some(at) if !killed => at + term_grace,
            Some(_) => now + TICK,
        };
        std::thread::sleep(
            next.saturating_duration_since(now)
                .clamp(Duration::from_millis(1), TICK),
        );
    }
}

/// The terminal's settings, to be put back.
struct Terminal(Option<Termios>);

impl Terminal {
    fn save() -> Terminal {
        Terminal(tcgetattr(io::stdin().as_fd()).ok())
    }

    fn restore(&self) {
        if let Some(settings) = &self.0 {
            let _ = tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, settings);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn run(script: &str, lasts: Duration, grace: Duration) -> (Ended, String, Duration) {
        let mut child = Command::new("sh").args(["-c", script]).spawn().unwrap();
        let start = Instant::now();
        let mut told = Vec::new();
        let ended = wait_within(
            &mut child,
            TimeLimit::new(start, lasts),
            "pdb",
            &mut told,
            grace,
        )
        .unwrap();
        (ended, String::from_utf8(told).unwrap(), start.elapsed())
    }

    #[test]
    fn a_debugger_is_warned_of_then_ended_when_the_time_is_up() {
        let (ended, told, took) = run("exec sleep 30", Duration::from_secs(2), TERM_GRACE);
        assert!(ended.timed_out);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&ended.status),
            Some(15)
        );
        assert!(
            (Duration::from_secs(2)..Duration::from_secs(4)).contains(&took),
            "{took:?}"
        );
        let lines: Vec<&str> = told
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        assert_eq!(
            lines,
            [
                "⏳ The grant ends in 1 s: pdb will then be detached (the target runs on)",
                "⌛ Time is up (2 s): detaching pdb; the target runs on",
                "⌛ pdb was detached: the grant's time is up",
            ]
        );
    }

    #[test]
    fn a_debugger_that_ignores_sigterm_is_killed() {
        let (ended, _, took) = run(
            "trap '' TERM; exec sleep 30",
            Duration::from_secs(1),
            Duration::from_millis(500),
        );
        assert!(ended.timed_out);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&ended.status),
            Some(9)
        );
        assert!(took >= Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn a_debugger_done_in_time_is_left_alone() {
        let (ended, told, _) = run("exit 3", Duration::from_secs(5), TERM_GRACE);
        assert!(!ended.timed_out);
        assert_eq!(ended.status.code(), Some(3));
        assert_eq!(told, "");
    }

    #[test]
    fn long_grants_are_warned_of_a_minute_before_short_ones_halfway() {
        let now = Instant::now();
        let hour = TimeLimit::new(now, Duration::from_secs(3600));
        assert_eq!(hour.warn_at(), now + Duration::from_secs(3540));
        let short = TimeLimit::new(now, Duration::from_secs(100));
        assert_eq!(short.warn_at(), now + Duration::from_secs(50));
    }
}
