//! What the controller knows about processes: their ids, their identity
//! (pid and start time), their state, and how to ask the platform for them.
//!
//! The types here carry no platform code: [`Processes`] is the question, a
//! platform answers it (on Linux, `heli-proc` reads `/proc`).

use std::fmt;
use std::io;
use std::num::NonZeroU32;
use std::str::FromStr;

/// A process (or thread) id: 1 to `i32::MAX`, as the kernel gives them.
///
/// The protocol writes it in decimal; [`FromStr`] accepts exactly that
/// (digits only, no sign, no blanks).
///
/// # Examples
///
/// ```
/// use heli_core::Pid;
///
/// let pid: Pid = "4242".parse().unwrap();
/// assert_eq!(pid.get(), 4242);
/// assert_eq!(pid.to_string(), "4242");
/// assert!(Pid::new(0).is_none());
/// assert!("-1".parse::<Pid>().is_err());
/// assert!(Pid::new(i32::MAX as u32 + 1).is_none());
/// ```
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "u32", into = "u32")]
pub struct Pid(NonZeroU32);

impl Pid {
    /// The largest pid a kernel gives (`i32::MAX`; Linux's own limit is
    /// lower).
    pub const MAX: u32 = i32::MAX as u32;

    /// `raw` as a pid, if it is one (1 to [`Pid::MAX`]).
    pub const fn new(raw: u32) -> Option<Pid> {
        if raw > Self::MAX {
            return None;
        }
        match NonZeroU32::new(raw) {
            Some(raw) => Some(Pid(raw)),
            None => None,
        }
    }

    /// The number.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// This process's id.
    pub fn this() -> Pid {
        Pid::new(std::process::id()).expect("the kernel gives pids from 1 to i32::MAX")
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Pid> for u32 {
    fn from(pid: Pid) -> u32 {
        pid.get()
    }
}

impl From<Pid> for u64 {
    fn from(pid: Pid) -> u64 {
        u64::from(pid.get())
    }
}

impl From<Pid> for i64 {
    fn from(pid: Pid) -> i64 {
        i64::from(pid.get())
    }
}

/// As the C library's `pid_t`: every pid fits.
impl From<Pid> for i32 {
    fn from(pid: Pid) -> i32 {
        pid.get() as i32
    }
}

/// The error of parsing a [`Pid`]: not decimal digits, or out of range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidPid;

impl fmt::Display for InvalidPid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Invalid PID")
    }
}

impl std::error::Error for InvalidPid {}

impl FromStr for Pid {
    type Err = InvalidPid;

    fn from_str(text: &str) -> Result<Pid, InvalidPid> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidPid);
        }
        text.parse::<u32>()
            .ok()
            .and_then(Pid::new)
            .ok_or(InvalidPid)
    }
}

impl TryFrom<u32> for Pid {
    type Error = InvalidPid;

    fn try_from(raw: u32) -> Result<Pid, InvalidPid> {
        Pid::new(raw).ok_or(InvalidPid)
    }
}

/// One process for good: its pid and when it started. A pid alone may be
/// reused by a later process; the pair tells them apart (up to the start
/// time's resolution, a clock tick: see the platform's notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessId {
    /// Its process id.
    pub pid: Pid,
    /// When it started, in clock ticks after boot (Linux: field 22 of
    /// `/proc/PID/stat`).
    pub start_time: u64,
}

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PID {}", self.pid)
    }
}

/// What a process (or thread) is doing, as the kernel's one-letter state
/// says (`ps`'s STAT column, `/proc/PID/stat` field 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProcessState {
    /// `R`: on a CPU, or ready to run.
    Running,
    /// `S`: asleep, interruptibly (waiting for an event).
    Sleeping,
    /// `D`: asleep, uninterruptibly (usually waiting for I/O); a signal or a
    /// ptrace stop reaches it only when it wakes.
    DiskSleep,
    /// `T`: stopped by a signal (job control).
    Stopped,
    /// `t`: stopped by its tracer.
    TracingStop,
    /// `Z`: exited, not reaped yet.
    Zombie,
    /// `X` (or `x`): dead, being removed.
    Dead,
    /// `I`: an idle kernel thread.
    Idle,
    /// Any other letter (`P` parked, `W`, `K` of old kernels...).
    Other(char),
}

impl ProcessState {
    /// The state for the kernel's letter.
    pub fn from_code(code: char) -> ProcessState {
        match code {
            'R' => ProcessState::Running,
            'S' => ProcessState::Sleeping,
            'D' => ProcessState::DiskSleep,
            'T' => ProcessState::Stopped,
            't' => ProcessState::TracingStop,
            'Z' => ProcessState::Zombie,
            'X' | 'x' => ProcessState::Dead,
            'I' => ProcessState::Idle,
            other => ProcessState::Other(other),
        }
    }

    /// The kernel's letter.
    pub fn code(self) -> char {
        match self {
            ProcessState::Running => 'R',
            ProcessState::Sleeping => 'S',
            ProcessState::DiskSleep => 'D',
            ProcessState::Stopped => 'T',
            ProcessState::TracingStop => 't',
            ProcessState::Zombie => 'Z',
            ProcessState::Dead => 'X',
            ProcessState::Idle => 'I',
            ProcessState::Other(code) => code,
        }
    }

    /// Whether the process has exited: a zombie or dead. Such a process
    /// runs no code any more, and its pid is about to be free.
    pub fn is_gone(self) -> bool {
        matches!(self, ProcessState::Zombie | ProcessState::Dead)
    }
}

/// Facts about one process (or thread) at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Who it is.
    pub id: ProcessId,
    /// Its parent's pid (`None` for a process the kernel started, whose
    /// parent is 0).
    pub parent: Option<Pid>,
    /// The process it belongs to: its own pid for a process (a thread group
    /// leader), the leader's for a thread.
    pub process: Pid,
    /// What it is doing.
    pub state: ProcessState,
    /// Its real user id.
    pub uid: u32,
    /// Its effective user id (differs from `uid` in a setuid program).
    pub euid: u32,
    /// Whether it is a kernel thread (which runs no user program).
    pub kernel_thread: bool,
}

/// Longest chain of parents walked: more than any real process tree, far
/// less than forever should a platform report a loop.
const MAX_DEPTH: usize = 1 << 16;

/// Where the controller learns about processes: the platform's process
/// table, as of the moment it is asked.
///
/// One method is required, [`process`](Processes::process); the others are
/// built on it. On Linux, `heli-proc` implements it from `/proc`; the
/// process supervisor answers for its platform (see
/// [`Supervisor`](crate::Supervisor)).
///
/// # Examples
///
/// A table in memory, as the crate's tests use:
///
/// ```
/// use heli_core::{Pid, ProcessId, ProcessInfo, ProcessState, Processes};
/// use std::collections::HashMap;
///
/// struct Table(HashMap<u32, ProcessInfo>);
/// impl Processes for Table {
///     fn process(&self, pid: Pid) -> std::io::Result<Option<ProcessInfo>> {
///         Ok(self.0.get(&pid.get()).cloned())
///     }
/// }
/// let info = |pid: u32, parent: u32, start_time: u64| {
///     let id = ProcessId { pid: Pid::new(pid).unwrap(), start_time };
///     let (uid, euid, kernel_thread) = (1000, 1000, false);
///     let state = ProcessState::Sleeping;
///     (pid, ProcessInfo { id, parent: Pid::new(parent), process: id.pid, state, uid, euid, kernel_thread })
/// };
/// let table = Table([info(1, 0, 1), info(10, 1, 50), info(11, 10, 60)].into_iter().collect());
/// let shell = table.identity(Pid::new(10).unwrap())?.unwrap();
/// assert!(table.is_self_or_descendant(Pid::new(11).unwrap(), shell)?);
/// assert!(!table.is_self_or_descendant(Pid::new(1).unwrap(), shell)?);
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Processes {
    /// Facts about process (or thread) `pid` now; `Ok(None)` when there is
    /// no such process.
    ///
    /// # Errors
    ///
    /// When the platform could not be asked (not when the process is
    /// missing).
    fn process(&self, pid: Pid) -> io::Result<Option<ProcessInfo>>;

    /// Who `pid` is now, if it is a process that has not exited (a zombie
    /// counts as gone).
    ///
    /// # Errors
    ///
    /// As [`process`](Processes::process).
    fn identity(&self, pid: Pid) -> io::Result<Option<ProcessId>> {
        Ok(self
            .process(pid)?
            .filter(|info| !info.state.is_gone())
            .map(|info| info.id))
    }

    /// Whether this very process still runs: not exited, and its pid not
    /// taken by a later process. An error of the platform counts as no.
    fn is_running(&self, id: ProcessId) -> bool {
        self.identity(id.pid).is_ok_and(|now| now == Some(id))
    }

    /// Whether process `pid` is frozen (a cgroup freezer holds it, as
    /// `docker pause` does): it runs no code, takes no signal and reaches no
    /// ptrace stop until thawed (default: the table cannot tell, `false`).
    ///
    /// # Errors
    ///
    /// When the platform could not be asked.
    fn is_frozen(&self, pid: Pid) -> io::Result<bool> {
        let _ = pid;
        Ok(false)
    }

    /// Whether process `candidate` is `ancestor` itself or one of its
    /// descendants.
    ///
    /// # Race conditions
    ///
    /// Processes come and go while the table is read. The answer is `true`
    /// only when every link was consistent: each parent started no later
    /// than its child (a reused pid is younger than the process it would be
    /// the parent of), the ancestor is still the process `ancestor` names,
    /// and the candidate has the same identity and parent after the walk as
    /// before it. A process that vanishes, or a chain that reaches pid 1
    /// first, means `false`.
    ///
    /// # Errors
    ///
    /// As [`process`](Processes::process).
    fn is_self_or_descendant(&self, candidate: Pid, ancestor: ProcessId) -> io::Result<bool> {
        let Some(first) = self.process(candidate)? else {
            return Ok(false);
        };
        let found = if candidate == ancestor.pid {
            first.id == ancestor
        } else {
            let mut child = first.clone();
            let mut found = false;
            for _ in 0..MAX_DEPTH {
                let Some(parent) = child.parent else {
                    break;
                };
                let Some(info) = self.process(parent)? else {
                    break;
                };
                if info.id.start_time > child.id.start_time {
                    // A reused pid: younger than its supposed child.
                    break;
                }
                if parent == ancestor.pid {
                    found = info.id == ancestor;
                    break;
                }
                if parent.get() == 1 {
                    break;
                }
                child = info;
            }
            found
        };
        if !found {
            return Ok(false);
        }
        // The candidate is still the process the walk started from.
        Ok(self
            .process(candidate)?
            .is_some_and(|now| now.id == first.id && now.parent == first.parent))
    }
}

macro_rules! forward_processes {
    ($($wrapper:ty),*) => {$(
        impl<P: Processes + ?Sized> Processes for $wrapper {
            fn process(&self, pid: Pid) -> io::Result<Option<ProcessInfo>> {
                (**self).process(pid)
            }
            fn identity(&self, pid: Pid) -> io::Result<Option<ProcessId>> {
                (**self).identity(pid)
            }
            fn is_frozen(&self, pid: Pid) -> io::Result<bool> {
                (**self).is_frozen(pid)
            }
        }
    )*};
}

forward_processes!(&P, Box<P>);

#[cfg(test)]
pub(crate) mod table {
    //! A process table in memory, for the crate's tests.

    use super::*;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    /// Shared so a test can change it while a controller reads it.
    #[derive(Clone, Debug, Default)]
    pub(crate) struct Table(pub(crate) Arc<Mutex<HashMap<u32, ProcessInfo>>>);

    pub(crate) fn pid(raw: u32) -> Pid {
        Pid::new(raw).unwrap()
    }

    impl Table {
        /// Adds a running process of uid 1000.
        pub(crate) fn add(&self, raw: u32, parent: u32, start_time: u64) -> ProcessId {
            let id = ProcessId {
                pid: pid(raw),
                start_time,
            };
            self.put(ProcessInfo {
                id,
                parent: Pid::new(parent),
                process: id.pid,
                state: ProcessState::Sleeping,
                uid: 1000,
                euid: 1000,
                kernel_thread: false,
            });
            id
        }

        pub(crate) fn put(&self, info: ProcessInfo) {
            self.0.lock().unwrap().insert(info.id.pid.get(), info);
        }

        pub(crate) fn remove(&self, raw: u32) {
            self.0.lock().unwrap().remove(&raw);
        }

        pub(crate) fn edit(&self, raw: u32, change: impl FnOnce(&mut ProcessInfo)) {
            change(self.0.lock().unwrap().get_mut(&raw).unwrap());
        }
    }

    impl Processes for Table {
        fn process(&self, pid: Pid) -> io::Result<Option<ProcessInfo>> {
            Ok(self.0.lock().unwrap().get(&pid.get()).cloned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::table::{pid, Table};
    use super::*;
    use std::cell::Cell;

    #[test]
    fn pids_are_1_to_i32_max() {
        assert_eq!(Pid::new(1).unwrap().get(), 1);
        assert_eq!(Pid::new(Pid::MAX).unwrap().get(), i32::MAX as u32);
        assert_eq!(Pid::new(0), None);
        assert_eq!(Pid::new(Pid::MAX + 1), None);
        assert_eq!(Pid::try_from(7u32), Ok(pid(7)));
        assert_eq!(Pid::try_from(0u32), Err(InvalidPid));
        assert_eq!(u32::from(pid(9)), 9);
        assert_eq!(u64::from(pid(9)), 9);
        assert_eq!(i64::from(pid(9)), 9);
        assert_eq!(i32::from(Pid::new(Pid::MAX).unwrap()), i32::MAX);
        assert_eq!(i64::from(Pid::new(Pid::MAX).unwrap()), i64::from(i32::MAX));
        assert_eq!(Pid::this().get(), std::process::id());
        assert_eq!(InvalidPid.to_string(), "Invalid PID");
    }

    #[test]
    fn a_table_that_cannot_see_freezers_calls_nothing_frozen() {
        // Else the controller would report every target as frozen, and
        // stop waiting for a killed one that has not ended yet.
        let table = table_of(&[(10, 1, 5)]);
        assert!(!table.is_frozen(pid(10)).unwrap());
    }

    #[test]
    fn pids_parse_as_the_protocol_writes_them() {
        assert_eq!("1".parse(), Ok(pid(1)));
        assert_eq!("0042".parse(), Ok(pid(42)));
        assert_eq!("2147483647".parse(), Ok(pid(Pid::MAX)));
        for bad in [
            "",
            "0",
            "-1",
            "+1",
            " 1",
            "1 ",
            "2147483648",
            "99999999999",
            "1e3",
            "x",
        ] {
            assert_eq!(bad.parse::<Pid>(), Err(InvalidPid), "{bad:?}");
        }
    }

    #[test]
    fn states_from_letters() {
        for code in ['R', 'S', 'D', 'T', 't', 'Z', 'X', 'I', 'P'] {
            assert_eq!(ProcessState::from_code(code).code(), code);
        }
        assert_eq!(ProcessState::from_code('x'), ProcessState::Dead);
        let gone: Vec<char> = "RSDTtZXxIPW"
            .chars()
            .filter(|&c| ProcessState::from_code(c).is_gone())
            .collect();
        assert_eq!(gone, ['Z', 'X', 'x']);
    }

    fn check(table: &Table, candidate: u32, ancestor: u32, start: u64) -> bool {
        let ancestor = ProcessId {
            pid: pid(ancestor),
            start_time: start,
        };
        table
            .is_self_or_descendant(pid(candidate), ancestor)
            .unwrap()
    }

    /// A table of running processes, each given as (pid, parent, start
    /// time).
    fn table_of(processes: &[(u32, u32, u64)]) -> Table {
        let table = Table::default();
        for &(raw, parent, start) in processes {
            table.add(raw, parent, start);
        }
        table
    }

    /// 1 -> 10 -> 20 -> 30 -> 40; 50 is 1's other child.
    fn family() -> Table {
        table_of(&[
            (1, 0, 1),
            (10, 1, 100),
            (20, 10, 200),
            (30, 20, 300),
            (40, 30, 400),
            (50, 1, 500),
        ])
    }

    #[test]
    fn walks_parent_links() {
        let table = family();
        assert!(check(&table, 20, 20, 200), "itself");
        assert!(check(&table, 30, 20, 200), "child");
        assert!(check(&table, 40, 20, 200), "grandchild");
        assert!(!check(&table, 10, 20, 200), "its parent");
        assert!(!check(&table, 1, 20, 200), "init");
        assert!(!check(&table, 50, 20, 200), "unrelated");
        assert!(!check(&table, 99, 20, 200), "no such process");
        assert!(check(&table, 40, 1, 1), "everything descends from init");
        // The ancestor pid now belongs to another process.
        assert!(!check(&table, 40, 20, 199), "ancestor restarted");
        assert!(!check(&table, 20, 20, 199), "itself, restarted");
    }

    #[test]
    fn a_reused_pid_is_no_parent() {
        // 30's parent 20 died and its pid went to a younger process whose
        // parent is the ancestor 10: 30 is no descendant of 10 any more.
        let table = table_of(&[(1, 0, 1), (10, 1, 100), (20, 10, 350), (30, 20, 300)]);
        assert!(!check(&table, 30, 10, 100));
        assert!(check(&table, 20, 10, 100));
    }

    #[test]
    fn a_child_may_start_in_the_same_tick_as_its_parent() {
        // Start times count clock ticks: a child forked at once shares its
        // parent's.
        let table = table_of(&[(1, 0, 1), (10, 1, 100), (20, 10, 100), (30, 20, 100)]);
        assert!(check(&table, 30, 10, 100));
        assert!(check(&table, 20, 10, 100));
    }

    #[test]
    fn a_loop_in_the_table_ends() {
        let table = table_of(&[(5, 6, 10), (6, 5, 10)]);
        assert!(!check(&table, 5, 7, 1));
    }

    /// Answers from `table`, except that the second look at 30 shows
    /// `later` instead.
    struct Changing<'a> {
        table: &'a Table,
        reads: Cell<u32>,
        later: ProcessInfo,
    }

    impl Processes for Changing<'_> {
        fn process(&self, pid: Pid) -> io::Result<Option<ProcessInfo>> {
            if pid.get() == 30 {
                self.reads.set(self.reads.get() + 1);
                if self.reads.get() > 1 {
                    return Ok(Some(self.later.clone()));
                }
            }
            self.table.process(pid)
        }
    }

    #[test]
    fn the_candidate_must_not_change_during_the_walk() {
        let table = table_of(&[(1, 0, 1), (10, 1, 100), (11, 1, 110)]);
        let thirty = table.add(30, 10, 300);
        let ancestor = table.identity(pid(10)).unwrap().unwrap();
        let before = table.process(thirty.pid).unwrap().unwrap();
        // Another process with the same pid; then the same one re-parented.
        let reused = ProcessInfo {
            id: ProcessId {
                start_time: 301,
                ..thirty
            },
            ..before.clone()
        };
        let adopted = ProcessInfo {
            parent: Some(pid(11)),
            ..before
        };
        for later in [reused, adopted] {
            let changing = Changing {
                table: &table,
                reads: Cell::new(0),
                later,
            };
            assert!(!changing.is_self_or_descendant(pid(30), ancestor).unwrap());
            assert_eq!(changing.reads.get(), 2);
        }
        assert!(table.is_self_or_descendant(pid(30), ancestor).unwrap());
    }

    #[test]
    fn identity_and_running_count_a_zombie_as_gone() {
        let table = family();
        let id = table.identity(pid(20)).unwrap().unwrap();
        assert_eq!(
            id,
            ProcessId {
                pid: pid(20),
                start_time: 200
            }
        );
        assert!(table.is_running(id));
        assert!(!table.is_running(ProcessId {
            start_time: 201,
            ..id
        }));
        table.edit(20, |info| info.state = ProcessState::Zombie);
        assert_eq!(table.identity(pid(20)).unwrap(), None);
        assert!(!table.is_running(id));
        table.remove(20);
        assert!(!table.is_running(id));
        assert_eq!(table.identity(pid(20)).unwrap(), None);
    }

    #[test]
    fn references_and_boxes_are_the_table_they_hold() {
        fn check(processes: impl Processes, ten: ProcessId) {
            assert_eq!(processes.identity(pid(10)).unwrap(), Some(ten));
            assert!(processes.is_running(ten));
            assert!(processes.is_self_or_descendant(pid(40), ten).unwrap());
            assert_eq!(processes.process(pid(99)).unwrap(), None);
        }
        let table = family();
        let ten = table.identity(pid(10)).unwrap().unwrap();
        check(&table, ten);
        check(Box::new(table.clone()), ten);
        let boxed: Box<dyn Processes> = Box::new(table.clone());
        check(&boxed, ten);
        check(boxed, ten);
    }

    #[test]
    fn a_process_id_is_shown_by_its_pid() {
        let id = ProcessId {
            pid: pid(4242),
            start_time: 17,
        };
        assert_eq!(id.to_string(), "PID 4242");
    }
}
