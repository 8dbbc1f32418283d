//! How the controller tells a service manager how it is doing.

use std::io;
use std::time::{Duration, Instant};

use log::{info, warn};

/// The controller's line to the service manager that runs it: systemd's
/// `Type=notify` protocol (`heli-transport`'s `SdNotifier`), or anything
/// that wants the same four moments.
///
/// The controller's event loop makes every call, on its own thread:
///
/// - [`ready`](Notifier::ready) once, when it serves clients (its listener
///   listens and the target has started);
/// - [`status`](Notifier::status) with a line of text (the target's pid
///   and state, the restarts, who holds which grant) whenever that line
///   changes;
/// - [`stopping`](Notifier::stopping) once, when it begins to shut down
///   (asked to, or its target ended for good);
/// - [`watchdog`](Notifier::watchdog) every half of
///   [`watchdog_timeout`](Notifier::watchdog_timeout), from the loop
///   itself: a loop that is wedged stops the pings, and the service
///   manager sees it. With no timeout (the default) the loop never wakes
///   for it.
///
/// Every method has a body that does nothing, as [`NoNotifier`] has. A
/// call that fails is logged as a warning (once, until a call succeeds
/// again) and the controller runs on: a service manager that cannot be
/// reached is no reason to stop serving.
///
/// # Examples
///
/// ```
/// use heli_core::Notifier;
/// use std::time::Duration;
///
/// /// Prints what a service manager would be told.
/// struct Print;
/// impl Notifier for Print {
///     fn status(&mut self, text: &str) -> std::io::Result<()> {
///         println!("STATUS={text}");
///         Ok(())
///     }
///     fn watchdog_timeout(&self) -> Option<Duration> {
///         Some(Duration::from_secs(30))
///     }
/// }
/// assert!(Print.ready().is_ok());
/// assert_eq!(heli_core::NoNotifier.watchdog_timeout(), None);
/// ```
pub trait Notifier {
    /// The controller serves clients.
    ///
    /// # Errors
    ///
    /// When the service manager cannot be told.
    fn ready(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// How the controller is doing, in one line (`target PID 4242
    /// running; restarts: 0; grants: client 77 on PID 4242`).
    ///
    /// # Errors
    ///
    /// As [`ready`](Notifier::ready).
    fn status(&mut self, text: &str) -> io::Result<()> {
        let _ = text;
        Ok(())
    }

    /// The controller begins to shut down.
    ///
    /// # Errors
    ///
    /// As [`ready`](Notifier::ready).
    fn stopping(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The controller's loop is alive: called every half of
    /// [`watchdog_timeout`](Notifier::watchdog_timeout).
    ///
    /// # Errors
    ///
    /// As [`ready`](Notifier::ready).
    fn watchdog(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// How long the service manager waits for a [`watchdog`](Notifier::watchdog)
    /// ping before it deems the controller hung (systemd's
    /// `WATCHDOG_USEC`); `None` (the default), or zero, for no watchdog.
    /// Asked once, when the controller starts.
    fn watchdog_timeout(&self) -> Option<Duration> {
        None
    }
}

/// Tells nobody anything: the [`Controller`](crate::Controller)'s default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoNotifier;

impl Notifier for NoNotifier {}

/// Implements [`Notifier`] for wrappers of a notifier (`&mut N`, `Box<N>`)
/// by handing every call to the notifier they hold.
macro_rules! forward_notifier {
    ($($wrapper:ty),*) => {$(
        impl<N: Notifier + ?Sized> Notifier for $wrapper {
            fn ready(&mut self) -> io::Result<()> {
                (**self).ready()
            }
            fn status(&mut self, text: &str) -> io::Result<()> {
                (**self).status(text)
            }
            fn stopping(&mut self) -> io::Result<()> {
                (**self).stopping()
            }
            fn watchdog(&mut self) -> io::Result<()> {
                (**self).watchdog()
            }
            fn watchdog_timeout(&self) -> Option<Duration> {
                (**self).watchdog_timeout()
            }
        }
    )*};
}

forward_notifier!(&mut N, Box<N>);

/// `Some` notifier tells what it holds; `None` tells nobody anything, as
/// [`NoNotifier`] does: for a program that finds out at run time whether a
/// service manager listens.
impl<N: Notifier> Notifier for Option<N> {
    fn ready(&mut self) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), N::ready)
    }
    fn status(&mut self, text: &str) -> io::Result<()> {
        self.as_mut()
            .map_or(Ok(()), |notifier| notifier.status(text))
    }
    fn stopping(&mut self) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), N::stopping)
    }
    fn watchdog(&mut self) -> io::Result<()> {
        self.as_mut().map_or(Ok(()), N::watchdog)
    }
    fn watchdog_timeout(&self) -> Option<Duration> {
        self.as_ref().and_then(N::watchdog_timeout)
    }
}

/// What the service manager has been told of the controller's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    /// Nothing yet: the controller is starting.
    Starting,
    /// `ready`: it serves.
    Ready,
    /// `stopping`: it shuts down.
    Stopping,
}

/// The event loop's side of a [`Notifier`]: what was told, when the
/// watchdog is pinged next, and one warning per run of failures.
#[derive(Debug)]
pub(crate) struct Notify<N> {
    notifier: N,
    told: Told,
    /// The last status line sent.
    status: Option<String>,
    /// Half the watchdog's timeout, if there is one.
    period: Option<Duration>,
    /// When the watchdog is pinged next.
    ping_at: Option<Instant>,
    /// Whether the last call failed (and was warned about).
    failing: bool,
}

impl<N: Notifier> Notify<N> {
    pub(crate) fn new(notifier: N) -> Notify<N> {
        let period = notifier
            .watchdog_timeout()
            .filter(|timeout| !timeout.is_zero())
            .map(|timeout| timeout / 2);
        Notify {
            notifier,
            told: Told::Starting,
            status: None,
            period,
            ping_at: None,
            failing: false,
        }
    }

    /// The controller serves: `ready`, once, and the watchdog's pings
    /// start.
    pub(crate) fn ready(&mut self) {
        self.told = Told::Ready;
        let result = self.notifier.ready();
        self.check("that the controller is ready", result);
        if let Some(period) = self.period {
            info!("pinging the service manager's watchdog every {period:?}");
            self.ping_at = Some(Instant::now() + period);
        }
    }

    /// The status line is `text`: sent if it changed.
    pub(crate) fn status(&mut self, text: String) {
        if self.status.as_ref() == Some(&text) {
            return;
        }
        let result = self.notifier.status(&text);
        self.check("the controller's status", result);
        self.status = Some(text);
    }

    /// The controller shuts down: `stopping`, once.
    pub(crate) fn stopping(&mut self) {
        if self.told == Told::Stopping {
            return;
        }
        self.told = Told::Stopping;
        let result = self.notifier.stopping();
        self.check("that the controller stops", result);
    }

    /// When the loop pings the watchdog next, if it does.
    pub(crate) fn ping_at(&self) -> Option<Instant> {
        self.ping_at
    }

    /// The ping's time came: pings, and sets the next.
    pub(crate) fn ping(&mut self) {
        let Some(period) = self.period else {
            return;
        };
        let result = self.notifier.watchdog();
        self.check("that the controller is alive (watchdog)", result);
        self.ping_at = Some(Instant::now() + period);
    }

    /// Warns of a failed call, unless the last one failed too.
    fn check(&mut self, what: &str, result: io::Result<()>) {
        match result {
            Ok(()) => self.failing = false,
            Err(err) => {
                if !self.failing {
                    warn!("cannot tell the service manager {what}: {err} (the controller runs on)");
                }
                self.failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the calls it gets.
    #[derive(Default)]
    struct Count([usize; 4]);

    impl Notifier for Count {
        fn ready(&mut self) -> io::Result<()> {
            self.0[0] += 1;
            Ok(())
        }
        fn status(&mut self, text: &str) -> io::Result<()> {
            self.0[1] += text.len();
            Ok(())
        }
        fn stopping(&mut self) -> io::Result<()> {
            self.0[2] += 1;
            Ok(())
        }
        fn watchdog(&mut self) -> io::Result<()> {
            Err(io::Error::other("watchdog"))
        }
        fn watchdog_timeout(&self) -> Option<Duration> {
            Some(Duration::from_secs(7))
        }
    }

    fn use_all(notifier: &mut dyn Notifier) {
        notifier.ready().unwrap();
        notifier.status("four").unwrap();
        notifier.stopping().unwrap();
        assert_eq!(notifier.watchdog().unwrap_err().to_string(), "watchdog");
        assert_eq!(notifier.watchdog_timeout(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn wrappers_forward_every_call() {
        let mut count = Count::default();
        use_all(&mut &mut count);
        assert_eq!(count.0, [1, 4, 1, 0]);
        let mut boxed: Box<Count> = Box::default();
        use_all(&mut boxed);
        assert_eq!(boxed.0, [1, 4, 1, 0]);
        let mut some = Some(Count::default());
        use_all(&mut some);
        assert_eq!(some.unwrap().0, [1, 4, 1, 0]);
    }

    #[test]
    fn none_tells_nothing_and_wants_no_watchdog() {
        let mut none: Option<Count> = None;
        assert!(none.ready().is_ok());
        assert!(none.status("x").is_ok());
        assert!(none.stopping().is_ok());
        assert!(none.watchdog().is_ok());
        assert_eq!(none.watchdog_timeout(), None);
    }

    #[test]
    fn no_notifier_tells_nothing_and_wants_no_watchdog() {
        let mut none = NoNotifier;
        assert!(none.ready().is_ok());
        assert!(none.status("x").is_ok());
        assert!(none.stopping().is_ok());
        assert!(none.watchdog().is_ok());
        assert_eq!(none.watchdog_timeout(), None);
    }

    #[test]
    fn pings_come_every_half_of_the_timeout() {
        let notify = Notify::new(Count::default());
        assert_eq!(notify.period, Some(Duration::from_millis(3500)));
        assert_eq!(notify.ping_at(), None);
        let mut notify = notify;
        let before = Instant::now();
        notify.ready();
        let at = notify.ping_at().unwrap();
        assert!(at >= before + Duration::from_millis(3500));
        assert!(at <= Instant::now() + Duration::from_millis(3500));
    }
}
