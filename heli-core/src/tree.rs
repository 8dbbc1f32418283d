//! The supervised tree: the target and every living descendant of it, as
//! `PS` lists it and `STACKS ALL` walks it.
//!
//! The facts come from an [`Inspector`](crate::Inspector) (on Linux, read
//! from `/proc`); the controller adds what only it knows: which process is
//! the target and who holds a grant on each.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::process::{Pid, ProcessId};

/// A process's place in the supervised tree, as headers and messages name
/// it: `target`, or `child of <parent>`.
///
/// # Examples
///
/// ```
/// use heli_core::tree::Role;
/// use heli_core::Pid;
///
/// assert_eq!(Role::Target.to_string(), "target");
/// assert_eq!(Role::ChildOf(Pid::new(42).unwrap()).to_string(), "child of 42");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The target: the process the controller runs.
    Target,
    /// Another process of the tree, child of the given process.
    ChildOf(Pid),
}

impl Role {
    /// The role of a process that is the target or not, with `parent`:
    /// `None` for a process that is not the target and whose parent is not
    /// known (a process of the tree always has one).
    pub fn of(target: bool, parent: Option<Pid>) -> Option<Role> {
        match (target, parent) {
            (true, _) => Some(Role::Target),
            (false, Some(parent)) => Some(Role::ChildOf(parent)),
            (false, None) => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Target => f.write_str("target"),
            Role::ChildOf(parent) => write!(f, "child of {parent}"),
        }
    }
}

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
    /// When it started, in clock ticks after boot, as
    /// [`ProcessId::start_time`]: with `pid`, which process this is for
    /// good (0 when not known).
    #[serde(default)]
    pub start_time: u64,
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
    /// Its effective user id (differs from `uid` in a setuid program).
    #[serde(default)]
    pub euid: u32,
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
            start_time: 0,
            parent: None,
            target: false,
            state: '?',
            threads: 0,
            cpu_percent: 0.0,
            rss_bytes: 0,
            uptime_secs: 0,
            uid: 0,
            euid: 0,
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

    /// Which process it is for good: its pid and start time.
    pub fn id(&self) -> ProcessId {
        ProcessId {
            pid: self.pid,
            start_time: self.start_time,
        }
    }

    /// Its role in the tree: [`Role::Target`], or [`Role::ChildOf`] its
    /// parent; `None` for a process that is not the target and whose
    /// parent is not known.
    pub fn role(&self) -> Option<Role> {
        Role::of(self.target, self.parent)
    }
}

/// The answer to `PS`: the tree in depth-first order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tree {
    /// The target first, then its descendants, in depth-first order (the
    /// order of `ps f`): each process followed by its children's subtrees,
    /// the children in pid order. When the controller is a subreaper, the
    /// processes it adopted (descendants of the target whose parent died)
    /// follow the target's subtree, each with its own subtree, their parent
    /// being the controller.
    pub processes: Vec<TreeProcess>,
    /// Whether the controller is a child subreaper (`PR_SET_CHILD_SUBREAPER`,
    /// or PID 1): if not, a process that daemonises (double fork) leaves the
    /// tree and is not listed.
    pub subreaper: bool,
    /// Whether the target has had a child since the controller started it
    /// (some tree read saw more than one process): a client then says what
    /// a controller that is not a subreaper cannot see.
    #[serde(default)]
    pub forked: bool,
    /// Set when the whole tree would not fit in a reply: says what was
    /// left out. The controller first cuts long command lines (each cut one
    /// ends in `... (cut: the command line is N bytes)`), then leaves the
    /// last processes out; `processes` then holds the first ones, and this
    /// says how many were left out. `None` (and absent from the JSON) when
    /// nothing was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<String>,
}

impl Tree {
    /// A tree of `processes`.
    pub fn new(processes: Vec<TreeProcess>, subreaper: bool) -> Tree {
        Tree {
            processes,
            subreaper,
            forked: false,
            cut: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_role_is_the_target_or_child_of_its_parent() {
        let mut process = TreeProcess::new(Pid::new(12).unwrap());
        assert_eq!(process.role(), None);
        process.parent = Pid::new(11);
        assert_eq!(process.role(), Some(Role::ChildOf(Pid::new(11).unwrap())));
        process.target = true;
        assert_eq!(process.role(), Some(Role::Target));
        process.start_time = 99;
        assert_eq!(
            process.id(),
            ProcessId {
                pid: Pid::new(12).unwrap(),
                start_time: 99
            }
        );
    }

    #[test]
    fn a_tree_from_an_older_controller_reads_with_the_new_facts_unknown() {
        let old = r#"{"processes":[{"pid":7,"parent":null,"state":"S","threads":1,"cpu_percent":0.0,"rss_bytes":0,"uptime_secs":0,"uid":1000,"python":null,"command":"x"}],"subreaper":false}"#;
        let tree: Tree = serde_json::from_str(old).unwrap();
        let process = &tree.processes[0];
        assert_eq!(
            (process.start_time, process.euid, tree.forked),
            (0, 0, false)
        );
        let mut new = tree.clone();
        new.forked = true;
        new.processes[0].euid = 1000;
        let json = serde_json::to_string(&new).unwrap();
        assert!(json.contains(r#""euid":1000"#) && json.contains(r#""forked":true"#));
        assert_eq!(serde_json::from_str::<Tree>(&json).unwrap(), new);
    }
}
