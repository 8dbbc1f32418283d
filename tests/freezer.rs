//! A cgroup freezer group of a test's or a bench's own, to freeze a target
//! as `docker pause` does. Self-contained: `benches/frozen.rs` includes
//! this file too.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A group of its own in a freezer hierarchy: thawed, emptied and removed
/// when dropped, whatever the test did.
#[derive(Debug)]
pub(crate) struct Freezer {
    dir: PathBuf,
    /// In the cgroup v2 hierarchy (where a frozen process dies of
    /// SIGKILL), not in v1's freezer hierarchy (where it dies only once
    /// thawed).
    pub(crate) v2: bool,
}

impl Freezer {
    /// A new group in cgroup v1's freezer hierarchy, else in the cgroup v2
    /// hierarchy, named after this process and `purpose` (so that runs at
    /// once never share one). Panics when neither can be made here (not
    /// root, or no hierarchy mounted): the tests that need one fail.
    pub(crate) fn new(purpose: &str) -> Freezer {
        static GROUPS: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "heli-{purpose}-{}-{}",
            std::process::id(),
            GROUPS.fetch_add(1, Ordering::Relaxed)
        );
        let v1 = Path::new("/sys/fs/cgroup/freezer");
        let (base, v2) = if v1.join("cgroup.procs").exists() {
            (v1.to_path_buf(), false)
        } else if let Some(mount) = cgroup2_mount() {
            (mount, true)
        } else {
            panic!("this test needs root and a cgroup freezer (v1 or v2)");
        };
        let dir = base.join(name);
        if let Err(err) = fs::create_dir(&dir) {
            panic!(
                "cannot create {}: {err}: this test needs root",
                dir.display()
            );
        }
        Freezer { dir, v2 }
    }

    /// The group's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves process `pid`, all its threads, into the group.
    pub(crate) fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// Whether the group is frozen (all of it: not still freezing).
    pub(crate) fn frozen(&self) -> bool {
        if self.v2 {
            read(&self.dir.join("cgroup.events")).contains("frozen 1")
        } else {
            read(&self.dir.join("freezer.state")).trim() == "FROZEN"
        }
    }

    /// Freezes or thaws the group, and waits (up to 20 s) until it is so.
    pub(crate) fn set(&self, frozen: bool) {
        let (file, value) = self.control(frozen);
        fs::write(self.dir.join(file), value).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.frozen() != frozen {
            assert!(
                Instant::now() < deadline,
                "{} not frozen: {frozen} after 20 s",
                self.dir.display()
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn control(&self, frozen: bool) -> (&'static str, &'static str) {
        match (self.v2, frozen) {
            (true, true) => ("cgroup.freeze", "1"),
            (true, false) => ("cgroup.freeze", "0"),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        }
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let (file, thawed) = self.control(false);
        let _ = fs::write(self.dir.join(file), thawed);
        let parent = self.dir.parent().unwrap().join("cgroup.procs");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in read(&self.dir.join("cgroup.procs")).lines() {
                let _ = fs::write(&parent, pid);
            }
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(err) if Instant::now() > deadline => {
                    eprintln!("cannot remove {}: {err}", self.dir.display());
                    return;
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted, if it is.
fn cgroup2_mount() -> Option<PathBuf> {
    read(Path::new("/proc/self/mountinfo"))
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}
