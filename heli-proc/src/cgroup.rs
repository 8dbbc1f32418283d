//! Whether a cgroup freezer holds a process (as `docker pause` does).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use heli_core::Pid;
use procfs::process::Process;

use crate::error::{to_io, unless_gone};
use crate::process::Proc;

impl Proc {
    /// Whether a cgroup freezer holds it: its cgroup v1 `freezer` hierarchy
    /// says `FROZEN` or `FREEZING` (`freezer.state`), or its cgroup v2
    /// group says `frozen 1` (`cgroup.events`). A frozen process runs no
    /// code and reaches no ptrace stop until thawed; in v1 it cannot even
    /// be killed until then.
    ///
    /// `false` when the process is gone, or when no freezer is mounted
    /// where this process sees it.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn is_frozen(&self) -> io::Result<bool> {
        let pid = self.pid();
        let groups = match Process::new(pid.get() as i32) {
            Ok(process) => unless_gone(process.cgroups(), format_args!("/proc/{pid}/cgroup"))?,
            Err(err) => unless_gone(Err(err), format_args!("/proc/{pid}"))?,
        };
        let Some(groups) = groups else {
            return Ok(false);
        };
        let mounts = Process::myself()
            .and_then(|me| me.mountinfo())
            .map_err(|err| to_io(err, "/proc/self/mountinfo"))?;
        for group in groups.0 {
            let freezer = group.controllers.iter().any(|c| c == "freezer");
            let unified = group.hierarchy == 0;
            if !(freezer || unified) {
                continue;
            }
            let Some(root) = mounts.0.iter().find_map(|mount| {
                let v1 = mount.fs_type == "cgroup" && mount.super_options.contains_key("freezer");
                let v2 = mount.fs_type == "cgroup2";
                ((freezer && v1) || (unified && v2)).then(|| mount.mount_point.clone())
            }) else {
                continue;
            };
            let dir = within(&root, &group.pathname);
            let frozen = if freezer {
                read(&dir.join("freezer.state"))
                    .is_some_and(|state| matches!(state.trim(), "FROZEN" | "FREEZING"))
            } else {
                read(&dir.join("cgroup.events"))
                    .is_some_and(|events| events.lines().any(|line| line.trim() == "frozen 1"))
            };
            if frozen {
                return Ok(true);
            }
        }
        Ok(false)
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

/// The directory of cgroup `pathname` (as `/proc/PID/cgroup` names it)
/// under mount point `root`.
fn within(root: &Path, pathname: &str) -> PathBuf {
    root.join(pathname.trim_start_matches('/'))
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
    fn paths_under_the_mount_point() {
        assert_eq!(
            within(Path::new("/sys/fs/cgroup/freezer"), "/heli/x"),
            PathBuf::from("/sys/fs/cgroup/freezer/heli/x")
        );
        assert_eq!(
            within(Path::new("/sys/fs/cgroup"), "/"),
            PathBuf::from("/sys/fs/cgroup/")
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
