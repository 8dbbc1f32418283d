//! Which processes are CPython 3.14s whose stacks can be read, cheaply
//! enough to ask at every `PS` for a whole tree.
//!
//! Finding out is [`PyProcess::open`]: the memory map, the ELF headers of
//! the files named like Python (remembered by file, see `elf.rs`) and the
//! debug offsets in memory. Its answer is remembered per process, keyed by
//! what would make it wrong:
//!
//! - the process's identity (pid and start time): a pid reused by another
//!   process is another key;
//! - the program file it runs (`/proc/PID/exe`, by device, inode and last
//!   change): a process that calls `execve` to run something else is
//!   another key (one that runs the same file again is the same CPython);
//! - for a "no", also the size of its address space: a program that maps a
//!   `libpython` later (an embedding host loading its Python plugin, or
//!   the dynamic loader still at work just after `execve`) is asked again.
//!
//! A process whose program file cannot be read (a zombie leader) is asked
//! every time; errors that may pass (gone, no permission, a read torn by a
//! change) are not remembered.

use std::sync::{LazyLock, Mutex, PoisonError};

use heli_core::ProcessId;
use heli_proc::FileId;

use super::cache::Cache;
use super::error::Pep768ErrorKind;
use super::process::PyProcess;
use super::version::PyVersion;

/// The answers remembered, for every process asked about.
static KNOWN: LazyLock<Mutex<Known>> = LazyLock::new(|| Mutex::new(Known::new(MAX_PROCESSES)));

/// At most this many processes are remembered; past it, the half asked
/// about least recently is forgotten.
const MAX_PROCESSES: usize = 4096;

/// The CPython version of process `id` (its program file `exe`, its address
/// space `vm_bytes` long), when it is a CPython 3.14 whose stacks can be
/// read; `None` otherwise, or when that cannot be told now.
pub(crate) fn python_version(
    id: ProcessId,
    exe: Option<FileId>,
    vm_bytes: u64,
) -> Option<PyVersion> {
    let key = exe.map(|exe| Key { id, exe });
    if let Some(key) = key {
        let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(answer) = known.get(key, vm_bytes) {
            return answer;
        }
    }
    let answer = match PyProcess::open_id(id) {
        Ok(python) => Some(python.version()),
        Err(err) => match err.kind() {
            // What the process is, as long as it runs this program with
            // these mappings.
            Pep768ErrorKind::NotPython
            | Pep768ErrorKind::TooOld
            | Pep768ErrorKind::UnknownLayout
            | Pep768ErrorKind::FreeThreaded
            | Pep768ErrorKind::Unsupported => None,
            // May pass: not remembered.
            _ => return None,
        },
    };
    if let Some(key) = key {
        let mut known = KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
        known.insert(key, vm_bytes, answer);
    }
    answer
}

/// What an answer is remembered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    id: ProcessId,
    exe: FileId,
}

/// An answer, and for a "no", the address space's size when it was found.
#[derive(Clone, Copy, Debug)]
struct Answer {
    version: Option<PyVersion>,
    vm_bytes: u64,
}

/// The remembered answers.
#[derive(Debug)]
struct Known(Cache<Key, Answer>);

impl Known {
    fn new(capacity: usize) -> Known {
        Known(Cache::new(capacity))
    }

    /// The answer for `key`, if one is remembered and still holds (a "no"
    /// holds while the address space keeps its size).
    fn get(&mut self, key: Key, vm_bytes: u64) -> Option<Option<PyVersion>> {
        let answer = self.0.get(&key)?;
        (answer.version.is_some() || answer.vm_bytes == vm_bytes).then_some(answer.version)
    }

    fn insert(&mut self, key: Key, vm_bytes: u64, version: Option<PyVersion>) {
        self.0.insert(key, Answer { version, vm_bytes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heli_core::Pid;

    fn key(pid: u32, start_time: u64, inode: u64) -> Key {
        Key {
            id: ProcessId {
                pid: Pid::new(pid).unwrap(),
                start_time,
            },
            exe: FileId {
                dev: 0x801,
                inode,
                size: 8 << 20,
                changed: (1_700_000_000, 0),
            },
        }
    }

    const V: PyVersion = PyVersion {
        major: 3,
        minor: 14,
        micro: 2,
        level: 0xF,
        serial: 0,
    };

    #[test]
    fn an_answer_holds_for_its_process_and_program_only() {
        let mut known = Known::new(16);
        known.insert(key(100, 5, 7), 1 << 20, Some(V));
        assert_eq!(known.get(key(100, 5, 7), 1 << 20), Some(Some(V)));
        // A Python's address space changes all the time: still a Python.
        assert_eq!(known.get(key(100, 5, 7), 3 << 20), Some(Some(V)));
        // The pid reused by a later process.
        assert_eq!(known.get(key(100, 6, 7), 1 << 20), None);
        // The same process after execve of another program.
        assert_eq!(known.get(key(100, 5, 8), 1 << 20), None);
        // The same program file, changed since (its ctime).
        let mut changed = key(100, 5, 7);
        changed.exe.changed.1 = 1;
        assert_eq!(known.get(changed, 1 << 20), None);
        let mut rewritten = key(100, 5, 7);
        rewritten.exe.size += 1;
        assert_eq!(known.get(rewritten, 1 << 20), None);
        let mut elsewhere = key(100, 5, 7);
        elsewhere.exe.dev = 0x802;
        assert_eq!(known.get(elsewhere, 1 << 20), None);
    }

    #[test]
    fn a_no_holds_until_the_address_space_changes() {
        let mut known = Known::new(16);
        known.insert(key(200, 5, 9), 1 << 20, None);
        assert_eq!(known.get(key(200, 5, 9), 1 << 20), Some(None));
        // It mapped something (a libpython?): ask again.
        assert_eq!(known.get(key(200, 5, 9), 2 << 20), None);
        known.insert(key(200, 5, 9), 2 << 20, Some(V));
        assert_eq!(known.get(key(200, 5, 9), 2 << 20), Some(Some(V)));
    }

    #[test]
    fn at_capacity_the_least_recently_asked_are_forgotten() {
        let mut known = Known::new(8);
        for pid in 1..=8 {
            known.insert(key(pid, 1, 1), 0, None);
        }
        // 1 and 2 asked about again: recent.
        assert!(known.get(key(1, 1, 1), 0).is_some());
        assert!(known.get(key(2, 1, 1), 0).is_some());
        known.insert(key(9, 1, 1), 0, Some(V));
        for pid in [1, 2, 9] {
            assert!(known.get(key(pid, 1, 1), 0).is_some(), "{pid} forgotten");
        }
        assert!(known.get(key(3, 1, 1), 0).is_none());
    }
}
