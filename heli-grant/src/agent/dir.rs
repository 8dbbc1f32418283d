//! The agent's private directory: its Python files, written by the
//! controller, removed when the controller ends (and, after a controller
//! that was killed, by the next one that starts).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use heli_core::{Pid, ProcessId};
use heli_proc::Proc;
use log::{debug, warn};

/// What the directory holds, each file with its text.
const FILES: [(&str, &str); 3] = [
    ("sitecustomize.py", include_str!("python/sitecustomize.py")),
    ("_heli_agent.py", include_str!("python/_heli_agent.py")),
    ("_heli_attach.py", include_str!("python/_heli_attach.py")),
];

/// The start of every agent directory's name; then the controller's pid
/// and start time, which tell a later controller whether it is gone.
const PREFIX: &str = "heli-agent-";

/// A `0700` directory of the controller in the temporary directory,
/// holding the agent's files; removed on drop.
#[derive(Debug)]
pub(crate) struct AgentDir {
    path: PathBuf,
    /// Until removed (see [`remove`](AgentDir::remove)).
    dir: std::sync::Mutex<Option<tempfile::TempDir>>,
}

impl AgentDir {
    /// Writes the agent's files into a new private directory in `parent`,
    /// first removing the directories that controllers which are gone
    /// left there.
    pub(crate) fn create(parent: &Path, controller: ProcessId) -> io::Result<AgentDir> {
        sweep(parent);
        let dir = tempfile::Builder::new()
            .prefix(&format!(
                "{PREFIX}{}-{}-",
                controller.pid, controller.start_time
            ))
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)?;
        for (name, text) in FILES {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.path().join(name))?;
            io::Write::write_all(&mut file, text.as_bytes())?;
        }
        debug!("agent files in {}", dir.path().display());
        Ok(AgentDir {
            path: dir.path().to_owned(),
            dir: std::sync::Mutex::new(Some(dir)),
        })
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes it now (a thread that still holds it may outlive the
    /// program's last step); dropping it does the same.
    pub(crate) fn remove(&self) {
        let dir = self
            .dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(dir) = dir {
            if let Err(err) = dir.close() {
                warn!("cannot remove {}: {err}", self.path.display());
            }
        }
    }
}

/// Removes the agent directories in `parent` of this user whose controller
/// is gone (its pid names no process, or one started at another time).
fn sweep(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let me = nix::unistd::Uid::effective().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name.to_str().and_then(controller_of) else {
            continue;
        };
        let path = entry.path();
        // Not following links, and only ours: another user's directory, or
        // a link someone put there, is left alone.
        let ours = fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir() && meta.uid() == me);
        if !ours || is_alive(owner) {
            continue;
        }
        match fs::remove_dir_all(&path) {
            Ok(()) => debug!("removed {} (its controller is gone)", path.display()),
            Err(err) => warn!("cannot remove {}: {err}", path.display()),
        }
    }
}

/// The controller named by an agent directory's name.
fn controller_of(name: &str) -> Option<ProcessId> {
    let mut words = name.strip_prefix(PREFIX)?.splitn(3, '-');
    let pid = Pid::new(words.next()?.parse().ok()?)?;
    let start_time = words.next()?.parse().ok()?;
    words.next()?;
    Some(ProcessId { pid, start_time })
}

fn is_alive(controller: ProcessId) -> bool {
    // When in doubt (an error reading /proc), the directory stays.
    !matches!(Proc::open_id(controller), Ok(None))
}

/// The directory agent directories go in: `TMPDIR`, else `/tmp`.
pub(crate) fn default_parent() -> PathBuf {
    std::env::temp_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> ProcessId {
        Proc::open(Pid::this())
            .unwrap()
            .unwrap()
            .identity()
            .unwrap()
            .unwrap()
    }

    #[test]
    fn names_tell_their_controller() {
        let id = controller_of("heli-agent-123-456-AbC9").unwrap();
        assert_eq!((id.pid.get(), id.start_time), (123, 456));
        for name in [
            "heli-agent-123-456",
            "heli-agent-x-1-a",
            "heli-agent-0-1-a",
            "other-1-2-a",
        ] {
            assert_eq!(controller_of(name), None, "{name}");
        }
    }

    #[test]
    fn the_files_are_private_and_go_with_the_directory() {
        let parent = tempfile::tempdir().unwrap();
        let dir = AgentDir::create(parent.path(), me()).unwrap();
        let path = dir.path().to_owned();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o700);
        for (name, text) in FILES {
            assert_eq!(fs::read_to_string(path.join(name)).unwrap(), text);
        }
        dir.remove();
        assert!(!path.exists());
        dir.remove();
        drop(dir);
    }

    #[test]
    fn a_later_controller_removes_what_a_gone_one_left_and_nothing_else() {
        let parent = tempfile::tempdir().unwrap();
        let gone = ProcessId {
            start_time: me().start_time + 1,
            ..me()
        };
        let left = parent
            .path()
            .join(format!("heli-agent-{}-{}-zzzz", gone.pid, gone.start_time));
        fs::create_dir(&left).unwrap();
        fs::write(left.join("sitecustomize.py"), "").unwrap();
        let alive = parent
            .path()
            .join(format!("heli-agent-{}-{}-yyyy", me().pid, me().start_time));
        fs::create_dir(&alive).unwrap();
        let link = parent.path().join("heli-agent-1-1-link");
        std::os::unix::fs::symlink(&left, &link).unwrap();
        let other = parent.path().join("not-heli-1-1-x");
        fs::create_dir(&other).unwrap();

        let dir = AgentDir::create(parent.path(), me()).unwrap();
        assert!(!left.exists());
        assert!(alive.exists() && other.exists() && dir.path().exists());
        assert!(
            fs::symlink_metadata(&link).is_ok(),
            "a link is not followed nor removed"
        );
    }
}
