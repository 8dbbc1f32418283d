//! Whether a thread is frozen by the cgroup freezer (`docker pause`,
//! `systemctl freeze`): such a thread runs no code and reaches no ptrace
//! stop until it is thawed; `/proc` shows it in state `D`, like a thread
//! in uninterruptible sleep, and only its cgroup tells the two apart.
//!
//! - cgroup v1: the `freezer` hierarchy's `freezer.state` reads `FROZEN`,
//!   or `FREEZING` while the freeze is under way (it shows the effective
//!   state: a cgroup whose ancestor is frozen reads `FROZEN` too);
//! - cgroup v2: `cgroup.events` has `frozen 1` once frozen (by this cgroup's
//!   `cgroup.freeze` or an ancestor's), and `cgroup.freeze` reads `1` while
//!   the freeze is asked for.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use heli_core::Pid;
use procfs::process::{MountInfos, Process};
use procfs::ProcessCGroups;

use crate::error::{to_io, unless_gone};
use crate::process::Proc;

impl Proc {
    /// Whether a cgroup freezer holds it (its main thread's cgroup): see
    /// [`thread_frozen`](Proc::thread_frozen). A frozen process runs no
    /// code and reaches no ptrace stop until thawed; in v1 it cannot even
    /// be killed until then. `false` when it is gone, or when no freezer
    /// is mounted where this process sees it.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn is_frozen(&self) -> io::Result<bool> {
        Ok(self.thread_frozen(self.pid())?.is_some())
    }

    /// The directory of the cgroup that freezes thread `tid`, when the
    /// cgroup freezer holds it (cgroup v1 `freezer.state` `FROZEN` or
    /// `FREEZING`; v2 `cgroup.events` `frozen 1` or `cgroup.freeze` `1`);
    /// `None` when it is not frozen (or the hierarchy is not mounted in this
    /// process's mount namespace), or is gone.
    ///
    /// A frozen thread shows state `D` (uninterruptible sleep) in `/proc`,
    /// runs no code, and reaches no ptrace stop until thawed: this tells
    /// it apart from one waiting for I/O or for a `vfork` child.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn thread_frozen(&self, tid: Pid) -> io::Result<Option<PathBuf>> {
        let what = format_args!("/proc/{}/task/{tid}/cgroup", self.pid());
        let Some(task) = unless_gone(self.dir().task_from_tid(tid.get() as i32), what)? else {
            return Ok(None);
        };
        let Some(cgroups) = unless_gone(task.read::<_, ProcessCGroups>("cgroup"), what)? else {
            return Ok(None);
        };
        let mounts = Process::myself()
            .and_then(|me| me.mountinfo())
            .map_err(|err| to_io(err, "/proc/self/mountinfo"))?;
        Ok(frozen_cgroup(&cgroups, &mounts))
    }
}

/// Whether process `pid` is frozen; see [`Proc::is_frozen`].
///
/// # Errors
///
/// When `/proc` cannot be read.
pub fn is_frozen(pid: Pid) -> io::Result<bool> {
    match Proc::open(pid)? {
        Some(proc) => proc.is_frozen(),
        None => Ok(false),
    }
}

/// The directory of the cgroup that freezes a thread in `cgroups` (its
/// `/proc/PID/task/TID/cgroup`), under the mounts `mounts` (this
/// process's `/proc/self/mountinfo`); `None` when none does, or when the
/// hierarchies are not mounted here.
pub(crate) fn frozen_cgroup(cgroups: &ProcessCGroups, mounts: &MountInfos) -> Option<PathBuf> {
    for cgroup in &cgroups.0 {
        let v1 = cgroup.controllers.iter().any(|name| name == "freezer");
        let v2 = cgroup.hierarchy == 0 && cgroup.controllers.is_empty();
        if !v1 && !v2 {
            continue;
        }
        let mount = mounts.0.iter().find(|mount| {
            if v1 {
                mount.fs_type == "cgroup" && mount.super_options.contains_key("freezer")
            } else {
                mount.fs_type == "cgroup2"
            }
        });
        let Some(mount) = mount else { continue };
        let dir = under_mount(&mount.mount_point, &mount.root, &cgroup.pathname);
        let frozen = if v1 {
            read(&dir.join("freezer.state"))
                .is_some_and(|state| matches!(state.trim(), "FROZEN" | "FREEZING"))
        } else {
            read(&dir.join("cgroup.events"))
                .is_some_and(|events| events.lines().any(|line| line.trim() == "frozen 1"))
                || read(&dir.join("cgroup.freeze")).is_some_and(|freeze| freeze.trim() == "1")
        };
        if frozen {
            return Some(dir);
        }
    }
    None
}

/// Where cgroup `path` lies under a hierarchy mounted at `mount_point`,
/// whose mount shows the hierarchy from `root` on.
fn under_mount(mount_point: &Path, root: &str, path: &str) -> PathBuf {
    let relative = Path::new(path)
        .strip_prefix(root)
        .unwrap_or(Path::new(path));
    let relative = relative.strip_prefix("/").unwrap_or(relative);
    mount_point.join(relative)
}

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn places_cgroups_under_their_mount() {
        let mount = Path::new("/sys/fs/cgroup/freezer");
        assert_eq!(
            under_mount(mount, "/", "/docker/abc"),
            Path::new("/sys/fs/cgroup/freezer/docker/abc")
        );
        assert_eq!(under_mount(mount, "/", "/"), mount);
        assert_eq!(
            under_mount(mount, "/docker", "/docker/abc"),
            Path::new("/sys/fs/cgroup/freezer/abc")
        );
    }

    /// As root, with a cgroup v1 freezer mounted (this project's test
    /// machines have one): a process put in a frozen group is frozen, and
    /// no longer once thawed.
    #[test]
    fn a_process_in_a_frozen_v1_group_is_frozen() {
        assert!(!is_frozen(Pid::this()).unwrap());
        let root = Path::new("/sys/fs/cgroup/freezer");
        if !root.join("freezer.state").exists() && !root.join("tasks").exists() {
            // No v1 freezer here: nothing more to check on this machine.
            assert!(!Path::new("/sys/fs/cgroup/freezer").exists());
            return;
        }
        let group = root.join(format!("heli-proc-test-{}", std::process::id()));
        fs::create_dir_all(&group).unwrap();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::new(child.id()).unwrap();
        fs::write(group.join("tasks"), pid.to_string()).unwrap();
        fs::write(group.join("freezer.state"), "FROZEN").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_frozen(pid).unwrap() {
            assert!(Instant::now() < deadline, "never frozen");
            std::thread::sleep(Duration::from_millis(10));
        }
        fs::write(group.join("freezer.state"), "THAWED").unwrap();
        let thawed = is_frozen(pid).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_dir(&group);
        assert!(!thawed);
    }
}
