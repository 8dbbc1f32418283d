//! When the controller starts its target again.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::supervisor::ExitStatus;

/// Whether an ended target is started again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Restart {
    /// Never: the controller exits with the target (the default).
    #[default]
    Never,
    /// When it failed: a non-zero exit code or death by a signal.
    OnFailure,
    /// Whenever it ended on its own.
    Always,
}

impl FromStr for Restart {
    type Err = String;

    fn from_str(text: &str) -> Result<Restart, String> {
        match text {
            "never" => Ok(Restart::Never),
            "on-failure" => Ok(Restart::OnFailure),
            "always" => Ok(Restart::Always),
            other => Err(format!(
                "unknown restart policy {other:?}: use never, on-failure or always"
            )),
        }
    }
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Restart::Never => "never",
            Restart::OnFailure => "on-failure",
            Restart::Always => "always",
        })
    }
}

/// When and how fast to start an ended target again.
///
/// The delay before a restart doubles each time, from
/// [`initial_delay`](RestartPolicy::initial_delay) up to
/// [`max_delay`](RestartPolicy::max_delay), and starts over once a target
/// ran for [`reset_after`](RestartPolicy::reset_after): a target that crashes
/// in a loop never makes the controller spin.
///
/// # Examples
///
/// ```
/// use heli_core::{ExitStatus, Restart, RestartPolicy};
/// use std::time::Duration;
///
/// let mut policy = RestartPolicy::new(Restart::OnFailure);
/// assert_eq!(policy.next_delay(ExitStatus::Code(0), Duration::ZERO), None);
/// let crashed = ExitStatus::Signal(11);
/// assert_eq!(policy.next_delay(crashed, Duration::ZERO), Some(Duration::from_millis(100)));
/// assert_eq!(policy.next_delay(crashed, Duration::ZERO), Some(Duration::from_millis(200)));
/// // After a long run, the delay starts over.
/// assert_eq!(policy.next_delay(crashed, Duration::from_secs(120)), Some(Duration::from_millis(100)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Whether to restart at all.
    pub when: Restart,
    /// Give up after this many restarts (`None`: never give up).
    pub max_restarts: Option<u32>,
    /// The first delay (default 100 ms).
    pub initial_delay: Duration,
    /// The longest delay (default 30 s).
    pub max_delay: Duration,
    /// A target that ran this long resets the delay (default 1 min).
    pub reset_after: Duration,
    next: Duration,
    restarts: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy::new(Restart::Never)
    }
}

impl RestartPolicy {
    /// A policy with the default delays and no restart limit.
    pub fn new(when: Restart) -> Self {
        RestartPolicy {
            when,
            max_restarts: None,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            reset_after: Duration::from_secs(60),
            next: Duration::from_millis(100),
            restarts: 0,
        }
    }

    /// Gives up after `max` restarts.
    pub fn max_restarts(mut self, max: u32) -> Self {
        self.max_restarts = Some(max);
        self
    }

    /// Sets the first and the longest delay.
    pub fn delays(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_delay = initial;
        self.max_delay = max.max(initial);
        self.next = initial;
        self
    }

    /// How many restarts were granted so far.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// For a target that ended with `status` after running for `ran`: the
    /// delay before starting it again, or `None` to stop. Counts the
    /// restart.
    pub fn next_delay(&mut self, status: ExitStatus, ran: Duration) -> Option<Duration> {
        let wanted = match self.when {
            Restart::Never => false,
            Restart::OnFailure => !status.success(),
            Restart::Always => true,
        };
        if !wanted || self.max_restarts.is_some_and(|max| self.restarts >= max) {
            return None;
        }
        if ran >= self.reset_after {
            self.next = self.initial_delay;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max_delay);
        self.restarts += 1;
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_decide_by_status() {
        let ok = ExitStatus::Code(0);
        let failed = ExitStatus::Code(3);
        let killed = ExitStatus::Signal(9);
        let zero = Duration::ZERO;
        assert_eq!(
            RestartPolicy::new(Restart::Never).next_delay(failed, zero),
            None
        );
        assert_eq!(
            RestartPolicy::new(Restart::OnFailure).next_delay(ok, zero),
            None
        );
        assert!(RestartPolicy::new(Restart::OnFailure)
            .next_delay(failed, zero)
            .is_some());
        assert!(RestartPolicy::new(Restart::OnFailure)
            .next_delay(killed, zero)
            .is_some());
        assert!(RestartPolicy::new(Restart::Always)
            .next_delay(ok, zero)
            .is_some());
    }

    #[test]
    fn delays_double_up_to_the_cap_and_reset_after_a_long_run() {
        let mut policy = RestartPolicy::new(Restart::Always);
        let delays: Vec<u64> = (0..12)
            .map(|_| {
                policy
                    .next_delay(ExitStatus::Code(1), Duration::from_secs(1))
                    .unwrap()
                    .as_millis() as u64
            })
            .collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]
        );
        assert_eq!(policy.restarts(), 12);
        assert_eq!(
            policy.next_delay(ExitStatus::Code(1), Duration::from_secs(60)),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn max_restarts_is_a_limit() {
        let mut policy = RestartPolicy::new(Restart::Always).max_restarts(2);
        assert!(policy
            .next_delay(ExitStatus::Code(1), Duration::ZERO)
            .is_some());
        assert!(policy
            .next_delay(ExitStatus::Code(1), Duration::ZERO)
            .is_some());
        assert_eq!(policy.next_delay(ExitStatus::Code(1), Duration::ZERO), None);
        assert_eq!(policy.restarts(), 2);
    }

    #[test]
    fn parses_and_prints() {
        for name in ["never", "on-failure", "always"] {
            assert_eq!(name.parse::<Restart>().unwrap().to_string(), name);
        }
        assert!("sometimes".parse::<Restart>().is_err());
    }
}
