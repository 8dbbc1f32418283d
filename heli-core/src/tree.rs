//! The supervised tree: the target and every living descendant of it, as
//! `PS` lists it and `STACKS ALL` walks it.
//!
//! The facts come from an [`Inspector`](crate::Inspector) (on Linux, read
//! from `/proc`); the controller adds what only it knows: which process is
//! the target and who holds a grant on each.

use serde::{Deserialize, Serialize};

use crate::process::Pid;

/// One process of the supervised tree.
///
/// # Examples
///
/// ```
/// use heli_core::tree::TreeProcess;
/// use heli_core::Pid;
///
/// let mut worker = TreeProcess::new(Pid::new(4243).unwrap());
/// worker.parent = Pid::new(4242);
/// worker.python = Some("3.14.0".into());
/// assert!(worker.is_python());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TreeProcess {
    /// Its process id.
    pub pid: Pid,
    /// Its parent's pid (`None` for a process whose parent is 0).
    pub parent: Option<Pid>,
    /// Whether it is the target (the root of the tree).
    #[serde(default)]
    pub target: bool,
    /// The kernel's one-letter state (`ps`'s STAT): `R`, `S`, `D`, `T`...
    pub state: char,
    /// How many threads it has.
    pub threads: u32,
    /// CPU time used over its lifetime, as a percentage of one CPU (as
    /// `ps`'s `%CPU`).
    pub cpu_percent: f64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Its real user id.
    pub uid: u32,
    /// The CPython version it runs (`3.14.0`), when it is a Python process
    /// whose stacks can be read; `None` otherwise.
    pub python: Option<String>,
    /// The client process that holds a grant on it, if one does.
    #[serde(default)]
    pub holder: Option<Pid>,
    /// Its command line, arguments separated by spaces.
    pub command: String,
}

impl TreeProcess {
    /// Process `pid` with every other fact empty.
    pub fn new(pid: Pid) -> TreeProcess {
        TreeProcess {
            pid,
            parent: None,
            target: false,
            state: '?',
            threads: 0,
            cpu_percent: 0.0,
            rss_bytes: 0,
            uptime_secs: 0,
            uid: 0,
            python: None,
            holder: None,
            command: String::new(),
        }
    }

    /// Whether its stacks can be read: a Python process the inspector
    /// understands.
    pub fn is_python(&self) -> bool {
        self.python.is_some()
    }
}

/// The answer to `PS`: the tree, parents before their children.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tree {
    /// The target first, then its descendants, each after its parent.
    pub processes: Vec<TreeProcess>,
    /// Whether the controller is a child subreaper (`PR_SET_CHILD_SUBREAPER`,
    /// or PID 1): if not, a process that daemonises (double fork) leaves the
    /// tree and is not listed.
    pub subreaper: bool,
}

impl Tree {
    /// A tree of `processes`.
    pub fn new(processes: Vec<TreeProcess>, subreaper: bool) -> Tree {
        Tree {
            processes,
            subreaper,
        }
    }
}
