//! When a piece of work must be done by, and a way to call it off early.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An instant by which work must be done, which its owner may also call off
/// early ([`cancel`](Deadline::cancel)); clones share the calling off.
///
/// The controller gives one to every grant and stack read it runs off its
/// loop, and cancels them when it stops; the work checks
/// [`expired`](Deadline::expired) wherever it would otherwise wait, and
/// gives up cleanly.
///
/// # Examples
///
/// ```
/// use heli_core::Deadline;
/// use std::time::Duration;
///
/// let deadline = Deadline::after(Duration::from_secs(60));
/// assert!(!deadline.expired());
/// let shared = deadline.clone();
/// deadline.cancel();
/// assert!(shared.expired() && shared.is_cancelled());
/// assert!(Deadline::after(Duration::ZERO).expired());
/// ```
#[derive(Clone)]
pub struct Deadline {
    at: Instant,
    cancelled: Arc<AtomicBool>,
}

impl Deadline {
    /// A deadline at `at`.
    pub fn at(at: Instant) -> Deadline {
        Deadline {
            at,
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A deadline `timeout` from now.
    pub fn after(timeout: Duration) -> Deadline {
        Deadline::at(Instant::now() + timeout)
    }

    /// A deadline `timeout` from now that is called off with this one:
    /// for work whose time counts from when it starts.
    pub(crate) fn restarted(&self, timeout: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + timeout,
            cancelled: Arc::clone(&self.cancelled),
        }
    }

    /// When it passes.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// Calls the work off, for this deadline and all its clones.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Whether the work was called off.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Whether the work must stop now: called off, or past its instant.
    pub fn expired(&self) -> bool {
        self.is_cancelled() || Instant::now() >= self.at
    }

    /// The time left (zero once expired).
    pub fn remaining(&self) -> Duration {
        if self.is_cancelled() {
            Duration::ZERO
        } else {
            self.at.saturating_duration_since(Instant::now())
        }
    }
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deadline")
            .field("remaining", &self.remaining())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_at_its_instant_or_when_cancelled() {
        let soon = Deadline::after(Duration::from_millis(30));
        assert!(!soon.expired());
        assert!(soon.remaining() > Duration::ZERO);
        assert!(soon.remaining() <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(40));
        assert!(soon.expired());
        assert_eq!(soon.remaining(), Duration::ZERO);
        assert!(!soon.is_cancelled());

        let later = Deadline::after(Duration::from_secs(3600));
        let clone = later.clone();
        assert!(!clone.expired());
        later.cancel();
        assert!(clone.is_cancelled() && clone.expired());
        assert_eq!(clone.remaining(), Duration::ZERO);
        assert!(format!("{clone:?}").contains("cancelled: true"));

        let at = Instant::now() + Duration::from_secs(5);
        assert_eq!(Deadline::at(at).instant(), at);
    }
}
