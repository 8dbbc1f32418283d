//! A process's memory map (`/proc/PID/maps`).

use std::path::PathBuf;

use procfs::process::{MMPermissions, MMapPath, MemoryMap};

/// One mapping of a process's memory map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Its first address.
    pub start: u64,
    /// The address after its last byte.
    pub end: u64,
    /// Whether it may be read.
    pub readable: bool,
    /// Whether it may be executed.
    pub executable: bool,
    /// Where in its file it starts.
    pub offset: u64,
    /// The file's inode (0 for memory that is no file's).
    pub inode: u64,
    /// What is mapped.
    pub what: Mapped,
}

/// What a [`Mapping`] holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mapped {
    /// A file, by the path the process sees (it may hold spaces; a file
    /// deleted since ends in ` (deleted)`).
    File(PathBuf),
    /// The kernel's vDSO.
    Vdso,
    /// Anonymous memory, the heap, stacks and the kernel's other special
    /// mappings (`[vvar]`, ...).
    Other,
}

impl Mapping {
    /// The mapped file's path, if a file is mapped.
    pub fn file(&self) -> Option<&std::path::Path> {
        match &self.what {
            Mapped::File(path) => Some(path),
            _ => None,
        }
    }
}

impl From<MemoryMap> for Mapping {
    fn from(map: MemoryMap) -> Mapping {
        Mapping {
            start: map.address.0,
            end: map.address.1,
            readable: map.perms.contains(MMPermissions::READ),
            executable: map.perms.contains(MMPermissions::EXECUTE),
            offset: map.offset,
            inode: map.inode,
            what: match map.pathname {
                MMapPath::Path(path) => Mapped::File(path),
                MMapPath::Vdso => Mapped::Vdso,
                _ => Mapped::Other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Proc;
    use heli_core::Pid;

    #[test]
    fn maps_show_the_program_the_vdso_and_names_with_spaces() {
        // A program whose path holds spaces and parentheses, as a mapped
        // file's name may.
        let dir = std::env::temp_dir().join(format!("heli proc (maps) {}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let program = dir.join("sle ep (copy)");
        std::fs::copy("/bin/sleep", &program).unwrap();
        let mut child = std::process::Command::new(&program)
            .arg("30")
            .spawn()
            .unwrap();
        let pid = Pid::new(child.id()).unwrap();
        // Until it has exec'd, it maps the test binary; the vdso comes
        // after the program in execve.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let maps = loop {
            let maps = Proc::open(pid).unwrap().unwrap().maps().unwrap();
            if maps.iter().any(|m| m.file() == Some(program.as_path()))
                && maps.iter().any(|m| m.what == Mapped::Vdso)
            {
                break maps;
            }
            assert!(std::time::Instant::now() < deadline, "{maps:#?}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let _ = child.kill();
        let _ = child.wait();
        std::fs::remove_dir_all(&dir).unwrap();
        let code = maps
            .iter()
            .find(|m| m.file() == Some(program.as_path()) && m.executable)
            .unwrap_or_else(|| panic!("no executable mapping of {program:?} in {maps:#?}"));
        assert!(code.readable && code.start < code.end && code.inode != 0);
        assert!(maps.iter().any(|m| m.what == Mapped::Vdso && m.executable));
        assert!(maps.windows(2).all(|pair| pair[0].end <= pair[1].start));
        // Once reaped, there is no map to read.
        let err = Proc::open(pid).unwrap().map_or_else(
            || crate::error::no_such_process(pid),
            |p| p.maps().unwrap_err(),
        );
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    }
}
