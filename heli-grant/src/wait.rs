//! Who may wait for the supervisor's children: its reaper, or a granter that
//! ptraces them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use heli_core::ExitStatus;

/// Who may wait for the supervisor's children, shared by its reaper and a
/// granter that ptraces them.
///
/// A thread that waits for a traced child sees its ptrace stops, whatever
/// flags it passes: the reaper must not wait while a granter traces the
/// child, and a granter whose child dies while traced reaps it and must hand
/// the status on. Both hold [`ChildWaits::lock`] while they wait; a granter
/// that reaped a child records its status with [`ChildWaitsGuard::reaped`],
/// and the reaper reports it.
#[derive(Clone, Debug, Default)]
pub struct ChildWaits(Arc<Mutex<Waits>>);

#[derive(Debug, Default)]
struct Waits {
    /// Statuses of targets reaped by someone other than their reaper.
    reaped: HashMap<u32, ExitStatus>,
    /// Targets whose reaper has not reported them yet.
    targets: HashSet<u32>,
}

/// Exclusive right to wait for the supervisor's children; see [`ChildWaits`].
#[derive(Debug)]
pub struct ChildWaitsGuard<'a>(MutexGuard<'a, Waits>);

impl ChildWaits {
    /// Takes the right to wait for the children, blocking until the holder
    /// lets go.
    pub fn lock(&self) -> ChildWaitsGuard<'_> {
        ChildWaitsGuard(
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

impl ChildWaitsGuard<'_> {
    /// Records that the holder reaped child `pid`, which ended with `status`.
    pub fn reaped(&mut self, pid: heli_core::Pid, status: ExitStatus) {
        self.0.reaped.insert(pid.get(), status);
    }

    /// The status of target `pid` if someone else reaped it, taken out.
    pub(crate) fn take(&mut self, pid: u32) -> Option<ExitStatus> {
        self.0.reaped.remove(&pid)
    }

    /// Marks `pid` as a target, whose status goes to its own reaper.
    pub(crate) fn add_target(&mut self, pid: u32) {
        self.0.targets.insert(pid);
    }

    /// Forgets target `pid`: its reaper has reported it.
    pub(crate) fn remove_target(&mut self, pid: u32) {
        self.0.targets.remove(&pid);
    }

    /// Whether `pid` is a target that its reaper has not reported yet.
    pub(crate) fn is_target(&self, pid: u32) -> bool {
        self.0.targets.contains(&pid)
    }
}
