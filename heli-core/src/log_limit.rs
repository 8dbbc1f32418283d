//! Keeps warnings that a peer can cause at will (bad requests, refused
//! grants, refused connections) from flooding the log: a few lines per peer
//! per window, the rest counted and reported with the peer's next line.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Lines each key may log per window.
pub const PER_KEY: u32 = 5;

/// Lines all keys together may log per window: a flood spread over many
/// processes is held back too.
pub const ALL_KEYS: u32 = 50;

/// The window's length.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Keys remembered at most; past it, keys whose window has ended are
/// forgotten, and the lines of keys that find no room are only counted.
const MAX_KEYS: usize = 1024;

/// A rate limit on repeated warnings, per key (for instance the peer's
/// process): at most [`PER_KEY`] lines per key and [`ALL_KEYS`] lines in
/// all per [`WINDOW`]. What it holds back is counted and said with the
/// key's next line that it lets through.
///
/// # Example
///
/// ```
/// use std::time::Instant;
/// use heli_core::LogLimit;
///
/// let mut limit = LogLimit::new();
/// let now = Instant::now();
/// let lines: Vec<_> = (0..8).filter_map(|_| limit.check("peer", now)).collect();
/// assert_eq!(lines.len(), heli_core::log_limit::PER_KEY as usize);
/// // The last line it lets through says that more are held back.
/// assert!(lines[4].to_string().contains("held back"));
/// // The next window's first line counts what was not logged.
/// let later = now + heli_core::log_limit::WINDOW;
/// assert!(limit.check("peer", later).unwrap().to_string().contains("3 similar"));
/// ```
#[derive(Debug)]
pub struct LogLimit<K> {
    keys: HashMap<K, Count>,
    all: Count,
    /// Lines held back for keys that found no room in `keys`.
    unattributed: u64,
}

/// What one window of one key (or of all keys) has logged.
#[derive(Clone, Copy, Debug)]
struct Count {
    since: Instant,
    logged: u32,
    /// Lines held back since the key's last logged line.
    held: u64,
}

impl Count {
    fn new(now: Instant) -> Count {
        Count {
            since: now,
            logged: 0,
            held: 0,
        }
    }

    /// Starts a new window when the last one has ended.
    fn roll(&mut self, now: Instant) {
        if now.saturating_duration_since(self.since) >= WINDOW {
            self.since = now;
            self.logged = 0;
        }
    }

    fn ended(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= WINDOW
    }
}

/// A line the limit lets through: its [`Display`](fmt::Display) is the
/// note to append to it (empty when there is nothing to say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// Similar lines held back since this key's last logged one.
    pub held_back: u64,
    /// Whether this key's next lines in this window will be held back.
    pub last: bool,
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.held_back > 0 {
            write!(f, " ({} similar lines were not logged)", self.held_back)?;
        }
        if self.last {
            write!(
                f,
                " (more like it are held back for up to {} s)",
                WINDOW.as_secs()
            )?;
        }
        Ok(())
    }
}

impl<K: Hash + Eq> LogLimit<K> {
    /// A limit that has let nothing through yet.
    pub fn new() -> LogLimit<K> {
        LogLimit {
            keys: HashMap::new(),
            all: Count::new(Instant::now()),
            unattributed: 0,
        }
    }

    /// Whether a line for `key` may be logged at `now`: `Some` with the
    /// note to append, or `None` when it is held back (and counted).
    pub fn check(&mut self, key: K, now: Instant) -> Option<Allowed> {
        if self.keys.len() >= MAX_KEYS && !self.keys.contains_key(&key) {
            // Forget keys whose window has ended; what they held back is
            // reported with the next line let through.
            let mut forgotten = 0;
            self.keys.retain(|_, count| {
                let ended = count.ended(now);
                if ended {
                    forgotten += count.held;
                }
                !ended
            });
            self.unattributed += forgotten;
            if self.keys.len() >= MAX_KEYS {
                self.unattributed += 1;
                return None;
            }
        }
        self.all.roll(now);
        let count = self.keys.entry(key).or_insert_with(|| Count::new(now));
        count.roll(now);
        if count.logged >= PER_KEY || self.all.logged >= ALL_KEYS {
            count.held += 1;
            return None;
        }
        count.logged += 1;
        self.all.logged += 1;
        let held_back = std::mem::take(&mut count.held) + std::mem::take(&mut self.unattributed);
        Some(Allowed {
            held_back,
            last: count.logged == PER_KEY || self.all.logged == ALL_KEYS,
        })
    }
}

impl<K: Hash + Eq> Default for LogLimit<K> {
    fn default() -> Self {
        LogLimit::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(limit: &mut LogLimit<u32>, key: u32, now: Instant, times: u32) -> Vec<Allowed> {
        (0..times).filter_map(|_| limit.check(key, now)).collect()
    }

    #[test]
    fn a_key_logs_a_few_lines_per_window_then_says_what_it_held_back() {
        let mut limit = LogLimit::new();
        let now = Instant::now();
        let lines = allowed(&mut limit, 7, now, 100);
        assert_eq!(lines.len(), PER_KEY as usize);
        assert!(lines[..4].iter().all(|line| *line
            == Allowed {
                held_back: 0,
                last: false
            }));
        // Nothing to add to those lines.
        assert_eq!(lines[0].to_string(), "");
        assert_eq!(
            lines[4],
            Allowed {
                held_back: 0,
                last: true
            }
        );
        // Still the same window: nothing.
        assert_eq!(
            limit.check(7, now + WINDOW - Duration::from_millis(1)),
            None
        );
        // The next window: logged again, with the count of what was not.
        let next = limit.check(7, now + WINDOW).unwrap();
        assert_eq!(next.held_back, 96);
        assert_eq!(
            next.to_string(),
            " (96 similar lines were not logged)",
            "{next:?}"
        );
        assert_eq!(limit.check(7, now + WINDOW).unwrap().held_back, 0);
    }

    #[test]
    fn each_key_has_its_own_allowance() {
        let mut limit = LogLimit::new();
        let now = Instant::now();
        assert_eq!(allowed(&mut limit, 1, now, 20).len(), PER_KEY as usize);
        assert_eq!(allowed(&mut limit, 2, now, 20).len(), PER_KEY as usize);
    }

    #[test]
    fn what_a_key_held_back_is_told_with_its_own_next_line() {
        let mut limit = LogLimit::new();
        let now = Instant::now();
        allowed(&mut limit, 1, now, PER_KEY + 3);
        // Another key's line in the next window says nothing of them.
        let later = now + WINDOW;
        assert_eq!(limit.check(2, later).unwrap().held_back, 0);
        assert_eq!(limit.check(1, later).unwrap().held_back, 3);
    }

    #[test]
    fn a_flood_from_many_keys_is_held_back_too() {
        let mut limit = LogLimit::new();
        let now = Instant::now();
        let lines: Vec<Allowed> = (0..1000).filter_map(|key| limit.check(key, now)).collect();
        assert_eq!(lines.len(), ALL_KEYS as usize);
        assert!(lines.last().unwrap().last);
        // A key that was held back says so with its next line.
        assert_eq!(limit.check(999, now + WINDOW).unwrap().held_back, 1);
    }

    #[test]
    fn memory_stays_bounded_and_nothing_goes_uncounted() {
        let mut limit = LogLimit::new();
        let now = Instant::now();
        for key in 0..(MAX_KEYS as u32 * 3) {
            limit.check(key, now);
        }
        assert_eq!(limit.keys.len(), MAX_KEYS);
        assert_eq!(limit.unattributed, 2 * MAX_KEYS as u64);
        // Once the window has ended, room is made for new keys, and the
        // first line let through reports every line held back: those of
        // keys forgotten, and those nobody was charged with.
        let later = now + WINDOW;
        let first = limit.check(u32::MAX, later).unwrap();
        assert_eq!(first.held_back, 3 * MAX_KEYS as u64 - u64::from(ALL_KEYS));
        assert!(limit.keys.len() <= MAX_KEYS);
    }
}
