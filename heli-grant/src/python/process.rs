//! The target as a CPython: which file it maps holds the runtime, and the
//! handle ([`PyProcess`]) that the stack reader and the remote execution
//! work through.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use heli_core::{Pid, ProcessId};
use heli_proc::{Mapping, Proc};
use log::debug;

use super::elf::PyRuntimeSection;
use super::error::{Pep768Error, Pep768ErrorKind};
use super::memory::{at, RemoteMemory};
use super::offsets::{DebugOffsets, Offsets};
use super::version::{version_from_name, PyVersion};

/// A running CPython 3.14 whose `_PyRuntime` was found and validated: the
/// handle to read its stacks and to ask it to run scripts.
///
/// Opening reads the target's `/proc/PID/maps`, the ELF headers of the
/// files it maps, and `_Py_DebugOffsets` in its memory; it never stops the
/// target. The handle stays valid for the life of the target (a process
/// does not move its `_PyRuntime`), and is bound to it: what it writes
/// (remote execution) reaches that process or nothing, never a later one
/// that reuses its pid, nor the program it runs after an `execve`.
///
/// # Examples
///
/// ```no_run
/// use heli_grant::PyProcess;
///
/// let python = PyProcess::open(heli_core::Pid::new(4242).unwrap())?;
/// println!("CPython {} in {}", python.version(), python.library().display());
/// for thread in python.stack_dump()? {
///     print!("{thread}");
/// }
/// # Ok::<(), heli_grant::Pep768Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PyProcess {
    /// Its `/proc` directory, opened once (bound to it).
    proc: Arc<Proc>,
    /// Who it is: read through `proc` when it was opened.
    id: ProcessId,
    memory: RemoteMemory,
    /// Whether `memory` was [pinned](heli_proc::Memory::pin) before the
    /// runtime was looked for: [`same_runtime`](Self::same_runtime) then
    /// reads the program it was found in, and no later one.
    pinned: bool,
    runtime: u64,
    debug: DebugOffsets,
    offsets: Offsets,
    library: PathBuf,
}

impl PyProcess {
    /// Finds and validates the CPython runtime of process `pid`.
    ///
    /// # Errors
    ///
    /// [`NoSuchProcess`](Pep768ErrorKind::NoSuchProcess),
    /// [`PermissionDenied`](Pep768ErrorKind::PermissionDenied) (the message
    /// explains the ptrace rights needed),
    /// [`NotPython`](Pep768ErrorKind::NotPython),
    /// [`TooOld`](Pep768ErrorKind::TooOld) (saying which version, when the
    /// target has debug offsets or its file name tells it),
    /// [`UnknownLayout`](Pep768ErrorKind::UnknownLayout),
    /// [`FreeThreaded`](Pep768ErrorKind::FreeThreaded), and
    /// [`Corrupt`](Pep768ErrorKind::Corrupt) or [`Io`](Pep768ErrorKind::Io).
    pub fn open(pid: Pid) -> Result<PyProcess, Pep768Error> {
        let process = Proc::open(pid)
            .map_err(|err| Pep768Error::io(format!("cannot read /proc/{pid}"), err))?
            .ok_or_else(|| no_such_process(pid))?;
        let id = process
            .identity()
            .map_err(|err| Pep768Error::io(format!("cannot read /proc/{pid}"), err))?
            .ok_or_else(|| no_such_process(pid))?;
        Self::from_proc(process, id)
    }

    /// Finds and validates the CPython runtime of process `id` and no
    /// other: [`open`](Self::open), refused when its pid names another
    /// process now (one started at another time: `id` has exited).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open); [`NoSuchProcess`](Pep768ErrorKind::NoSuchProcess)
    /// when `id` is gone.
    pub fn open_id(id: ProcessId) -> Result<PyProcess, Pep768Error> {
        let pid = id.pid;
        let process = Proc::open_id(id)
            .map_err(|err| Pep768Error::io(format!("cannot read /proc/{pid}"), err))?
            .ok_or_else(|| {
                Pep768Error::new(
                    Pep768ErrorKind::NoSuchProcess,
                    format!(
                        "PID {pid} (started at tick {}) is gone: it has exited, and its pid \
                         may name another process now",
                        id.start_time
                    ),
                )
            })?;
        Self::from_proc(process, id)
    }

    /// The CPython runtime of `process`, which is `id`, and whose memory it
    /// is [bound to](Proc::memory): whatever the handle later writes
    /// reaches that process (or nothing, once it is gone), never one that
    /// reuses its pid.
    fn from_proc(process: Proc, id: ProcessId) -> Result<PyProcess, Pep768Error> {
        let process = Arc::new(process);
        let pid = process.pid();
        let no_such_process = || no_such_process(pid);
        // Through a live thread when the main one has exited.
        let memory = process.memory().map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => no_such_process(),
            _ => Pep768Error::io(format!("cannot read /proc/{pid}"), err),
        })?;
        // Before anything is looked for: what is found is of this program
        // or a later one, never an earlier one.
        let pinned = match memory.pin() {
            Ok(()) => true,
            Err(err) => {
                debug!("PID {pid}: its memory file cannot be opened: {err}");
                false
            }
        };
        let memory = RemoteMemory::of(memory);
        let maps = process.maps().map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => no_such_process(),
            io::ErrorKind::PermissionDenied => {
                Pep768Error::permission_denied(pid.get(), "read the memory map of", err)
            }
            _ => Pep768Error::io(format!("cannot read /proc/{pid}/maps"), err),
        })?;
        let candidates = candidates(&maps);
        if candidates.is_empty() {
            return Err(Pep768Error::new(
                Pep768ErrorKind::NotPython,
                format!(
                    "PID {pid} ({}) is not a Python process: it maps no file whose name contains \
                     \"python\"",
                    process
                        .thread_name(u64::from(pid.get()))
                        .unwrap_or_else(|| "?".to_owned())
                ),
            ));
        }
        let mut first_error: Option<Pep768Error> = None;
        for mapped in &candidates {
            match Self::try_file(&process, id, &memory, pinned, mapped) {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => debug!("PID {pid}: {} has no .PyRuntime", mapped.path),
                Err(err) => {
                    debug!("PID {pid}: {}: {err}", mapped.path);
                    // The first decisive error wins; a later file may still
                    // be the right one.
                    if first_error.is_none() {
                        first_error = Some(err);
                    }
                }
            }
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        let names: Vec<&str> = candidates.iter().map(|m| m.path.as_str()).collect();
        let hint = candidates.iter().find_map(|m| version_from_name(&m.path));
        let mut err = Pep768Error::new(
            match hint {
                Some(_) => Pep768ErrorKind::TooOld,
                None => Pep768ErrorKind::NotPython,
            },
            format!(
                "PID {pid} maps {} but none has a .PyRuntime section{}",
                names.join(", "),
                match hint {
                    Some((major, minor)) => format!(
                        ": by its name a Python {major}.{minor}; remote execution and stack \
                         dumps need CPython 3.14"
                    ),
                    None => ": not a CPython 3.14".to_owned(),
                }
            ),
        );
        if let Some((major, minor)) = hint {
            err = err.with_version(PyVersion {
                major,
                minor,
                micro: 0,
                level: 0,
                serial: 0,
            });
        }
        Err(err)
    }

    /// The runtime in `mapped`, if it holds one.
    fn try_file(
        process: &Arc<Proc>,
        id: ProcessId,
        memory: &RemoteMemory,
        pinned: bool,
        mapped: &Mapped,
    ) -> Result<Option<PyProcess>, Pep768Error> {
        let pid = memory.pid();
        let (path, file) = mapped.open(pid)?;
        let section = match PyRuntimeSection::find_in(&file) {
            Ok(Some(section)) => section,
            Ok(None) => return Ok(None),
            Err(err) => return Err(err.context(&path.display().to_string())),
        };
        let runtime = section.address(mapped.base);
        let mut header = [0u8; DebugOffsets::SIZE];
        let len = header.len().min(section.sh_size as usize);
        memory.read(runtime, &mut header[..len])?;
        let debug = DebugOffsets::parse(&header[..len]).map_err(|err| {
            let err = err.context(&format!("PID {pid}, {}", mapped.path));
            match (err.kind(), version_from_name(&mapped.path)) {
                // No cookie, yet named like an old Python.
                (Pep768ErrorKind::NotPython, Some((3, minor))) if minor < 14 => Pep768Error::new(
                    Pep768ErrorKind::TooOld,
                    format!("{err}; by its name a Python 3.{minor}: heli needs CPython 3.14"),
                ),
                _ => err,
            }
        })?;
        let offsets = debug.typed()?;
        debug!(
            "PID {pid}: CPython {} in {}, _PyRuntime at {runtime:#x}",
            debug.version(),
            mapped.path
        );
        Ok(Some(PyProcess {
            proc: process.clone(),
            id,
            memory: memory.clone(),
            pinned,
            runtime,
            debug,
            offsets,
            library: path,
        }))
    }

    /// The target's process id.
    pub fn pid(&self) -> Pid {
        self.id.pid
    }

    /// Who the target is: its pid and start time, as read when it was
    /// opened.
    pub fn id(&self) -> ProcessId {
        self.id
    }

    /// Whether the target still runs (it has not exited; an `execve` does
    /// not count): what it read from memory meanwhile was its own, as its
    /// pid was never another's.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn is_running(&self) -> Result<bool, Pep768Error> {
        let running = self
            .proc
            .identity()
            .map_err(|err| Pep768Error::io(format!("cannot read /proc/{}", self.id.pid), err))?;
        Ok(running == Some(self.id))
    }

    /// Whether it still runs the runtime it was opened with: the same
    /// `_Py_DebugOffsets` at the same address. An `execve` gives a process
    /// new memory, its runtime elsewhere (address space layout
    /// randomization) or none: at the old address is then something else,
    /// or nothing mapped. One that ran the same Python again at the same
    /// address (no randomization) has the same layout there. The bytes
    /// alone cannot tell programs apart (any program can hold these 760
    /// bytes at that address: measured, a static one whose image holds
    /// them was profiled as an empty Python): they are read through the
    /// memory pinned when it was opened, which an `execve` leaves behind
    /// (then `false`), unless it could not be pinned.
    ///
    /// # Errors
    ///
    /// [`NoSuchProcess`](Pep768ErrorKind::NoSuchProcess) when it exited,
    /// [`PermissionDenied`](Pep768ErrorKind::PermissionDenied).
    pub(crate) fn same_runtime(&self) -> Result<bool, Pep768Error> {
        let expected = self.debug.bytes();
        let read = match self.pinned {
            true => self.memory.read_pinned(self.runtime, expected.len()),
            false => self.memory.read_vec(self.runtime, expected.len()).map(Some),
        };
        match read {
            Ok(Some(found)) => Ok(found == expected),
            // Its memory is gone: it called `execve` (or exited).
            Ok(None) => Ok(false),
            Err(err)
                if matches!(
                    err.kind(),
                    Pep768ErrorKind::NoSuchProcess | Pep768ErrorKind::PermissionDenied
                ) =>
            {
                Err(err)
            }
            Err(_) => Ok(false),
        }
    }

    /// Its CPython version.
    pub fn version(&self) -> PyVersion {
        self.debug.version()
    }

    /// The address of its `_PyRuntime`.
    pub fn runtime_address(&self) -> u64 {
        self.runtime
    }

    /// Its `_Py_DebugOffsets`.
    pub fn debug_offsets(&self) -> &DebugOffsets {
        &self.debug
    }

    /// The file that holds its runtime: the `python3.14` executable, a
    /// `libpython3.14.so`, or `/proc/PID/exe` for a deleted executable.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Whether the main interpreter accepts remote execution (its
    /// `remote_debugging_enabled` is 1).
    ///
    /// # Errors
    ///
    /// When its memory cannot be read; see [`open`](Self::open).
    pub fn remote_debugging_enabled(&self) -> Result<bool, Pep768Error> {
        let interp = self.main_interpreter()?;
        Ok(self
            .memory
            .read_i32(at(interp, self.offsets.debugger.enabled))?
            == 1)
    }

    /// The main interpreter (id 0): `interpreters_head` is the newest one.
    pub(crate) fn main_interpreter(&self) -> Result<u64, Pep768Error> {
        let mut interp = self
            .memory
            .read_u64(at(self.runtime, self.offsets.interpreters_head))?;
        for _ in 0..MAX_INTERPRETERS {
            if interp == 0 {
                break;
            }
            let id = self.memory.read_u64(at(interp, self.offsets.interp.id))?;
            if id == 0 {
                return Ok(interp);
            }
            interp = self.memory.read_u64(at(interp, self.offsets.interp.next))?;
        }
        Err(Pep768Error::new(
            Pep768ErrorKind::NoThread,
            format!(
                "PID {}: CPython has no main interpreter (not initialised yet, or finalizing)",
                self.pid()
            ),
        ))
    }

    pub(crate) fn memory(&self) -> &RemoteMemory {
        &self.memory
    }

    /// Its `/proc` directory, opened once.
    pub(crate) fn proc(&self) -> &Proc {
        &self.proc
    }

    pub(crate) fn offsets(&self) -> &Offsets {
        &self.offsets
    }
}

/// The error for a process that is gone.
fn no_such_process(pid: Pid) -> Pep768Error {
    Pep768Error::new(
        Pep768ErrorKind::NoSuchProcess,
        format!("no process with PID {pid}"),
    )
}

/// At most this many interpreters are walked (a loop in a corrupt list).
pub(crate) const MAX_INTERPRETERS: usize = 4096;

/// A file the target maps whose name contains `python`, and where its
/// file offset 0 is mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mapped {
    pub(crate) path: String,
    pub(crate) base: u64,
    end: u64,
    inode: u64,
}

impl Mapped {
    /// Opens the file the target maps, wherever it sees it: through the
    /// target's root (mount namespaces), then as named; a deleted one
    /// through `/proc/PID/exe` (when it is the executable) or
    /// `/proc/PID/map_files`.
    pub(crate) fn open(&self, pid: u32) -> Result<(PathBuf, fs::File), Pep768Error> {
        let mut tries: Vec<PathBuf> = Vec::new();
        match self.path.strip_suffix(" (deleted)") {
            Some(_) => {
                let exe = PathBuf::from(format!("/proc/{pid}/exe"));
                if fs::metadata(&exe).is_ok_and(|meta| meta.ino() == self.inode) {
                    tries.push(exe);
                }
                tries.push(PathBuf::from(format!(
                    "/proc/{pid}/map_files/{:x}-{:x}",
                    self.base, self.end
                )));
            }
            None => {
                let mut rooted = PathBuf::from(format!("/proc/{pid}/root"));
                rooted.push(self.path.trim_start_matches('/'));
                tries.push(rooted);
                tries.push(PathBuf::from(&self.path));
            }
        }
        let mut last = None;
        for path in tries {
            match fs::File::open(&path) {
                Ok(file) => return Ok((path, file)),
                Err(err) => last = Some((path, err)),
            }
        }
        let (path, err) = last.expect("at least one path tried");
        Err(Pep768Error::io(
            format!(
                "PID {pid} maps {}, which cannot be opened as {}",
                self.path,
                path.display()
            ),
            err,
        ))
    }
}

/// The files in `maps` whose base name contains `python`, in order of first
/// appearance, each with the start of its mapping of file offset 0.
fn candidates(maps: &[Mapping]) -> Vec<Mapped> {
    mapped_files(maps, b"python")
}

/// The files in `maps` whose base name contains `part`, in order of first
/// appearance, each with the start of its mapping of file offset 0.
pub(crate) fn mapped_files(maps: &[Mapping], part: &[u8]) -> Vec<Mapped> {
    let mut found: Vec<Mapped> = Vec::new();
    let mut seen: HashSet<&Path> = HashSet::new();
    for map in maps {
        let Some(path) = map.file() else {
            continue;
        };
        let basename = path.file_name().unwrap_or(OsStr::new(""));
        if !basename.as_bytes().windows(part.len()).any(|w| w == part) {
            continue;
        }
        if map.offset != 0 || !seen.insert(path) {
            continue;
        }
        found.push(Mapped {
            path: path.to_string_lossy().into_owned(),
            base: map.start,
            end: map.end,
            inode: map.inode,
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::test_python::Target;
    use heli_proc::Mapped;

    #[test]
    fn a_process_that_runs_the_same_python_again_has_another_runtime() {
        // The same executable at the same address (Debian's python3.14 is
        // not position-independent): the same 760 bytes where the runtime
        // was, in another program's memory.
        let mut target = Target::start(
            "import os, sys\nprint('ready', flush=True)\ninput()\n\
             os.execv(sys.executable, [sys.executable, '-c', \
             'print(\"again\", flush=True); input()'])",
        );
        assert_eq!(target.line(), "ready\n");
        let python = PyProcess::open_id(target.id()).unwrap();
        assert!(python.same_runtime().unwrap());
        writeln!(target.input, "go").unwrap();
        assert_eq!(target.line(), "again\n");
        let again = PyProcess::open_id(target.id()).unwrap();
        assert_eq!(again.runtime, python.runtime);
        assert_eq!(again.debug.bytes(), python.debug.bytes());
        assert!(again.same_runtime().unwrap());
        assert!(!python.same_runtime().unwrap());
        let err = python.stack_dump().unwrap_err();
        assert!(err.to_string().contains("has run another program"), "{err}");
    }

    #[test]
    fn a_runtime_no_longer_where_it_was_found_is_told() {
        let mut target = Target::start("print('ready', flush=True); input()");
        assert_eq!(target.line(), "ready\n");
        let mut python = PyProcess::open_id(target.id()).unwrap();
        assert!(python.same_runtime().unwrap());
        assert!(python.stack_dump().is_ok());
        // As if it ran another program: other bytes where its runtime
        // was (the walk from there finds threads all the same, as a walk
        // of another program's memory may), then nothing mapped there.
        python.runtime += 8;
        assert!(!python.same_runtime().unwrap());
        let err = python.stack_dump().unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::NoSuchProcess, "{err}");
        assert!(err.to_string().contains("has run another program"), "{err}");
        python.runtime = 8;
        assert!(!python.same_runtime().unwrap());
    }

    fn map(range: (u64, u64), offset: u64, inode: u64, what: &str) -> Mapping {
        Mapping {
            start: range.0,
            end: range.1,
            readable: true,
            executable: false,
            offset,
            inode,
            what: match what {
                "" => Mapped::Other,
                path => Mapped::File(path.into()),
            },
        }
    }

    #[test]
    fn picks_python_files_with_their_base() {
        let maps = [
            map((0x3ff000, 0x400000), 0, 1234, "/opt/py/usr/bin/python3.14"),
            map(
                (0x400000, 0x422000),
                0x1000,
                1234,
                "/opt/py/usr/bin/python3.14",
            ),
            map(
                (0xba0000, 0xbf0000),
                0x7a1000,
                1234,
                "/opt/py/usr/bin/python3.14",
            ),
            map((0x1000000, 0x1100000), 0, 0, ""),
            map(
                (0x7f00_0000_0000, 0x7f00_0010_0000),
                0,
                99,
                "/usr/lib/libpython3.13.so.1.0",
            ),
            map(
                (0x7f00_0020_0000, 0x7f00_0030_0000),
                0,
                77,
                "/usr/lib/libc.so.6",
            ),
            map(
                (0x7f00_0040_0000, 0x7f00_0050_0000),
                0,
                55,
                "/tmp/my python (deleted)",
            ),
            map(
                (0x7f00_0060_0000, 0x7f00_0070_0000),
                0x1000,
                56,
                "/usr/lib/python3.14/x.so",
            ),
        ];
        let found = candidates(&maps);
        let summary: Vec<(&str, u64)> = found.iter().map(|m| (m.path.as_str(), m.base)).collect();
        assert_eq!(
            summary,
            [
                ("/opt/py/usr/bin/python3.14", 0x3ff000),
                ("/usr/lib/libpython3.13.so.1.0", 0x7f00_0000_0000),
                ("/tmp/my python (deleted)", 0x7f00_0040_0000),
            ]
        );
        assert_eq!(found[2].inode, 55);
        assert_eq!(found[2].end, 0x7f00_0050_0000);
    }

    #[test]
    fn not_python() {
        let err = PyProcess::open(Pid::this()).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::NotPython, "{err}");
        let me = heli_core::Processes::identity(&heli_proc::ProcFs, Pid::this())
            .unwrap()
            .unwrap();
        let err = PyProcess::open_id(me).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::NotPython, "{err}");
        let later = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        let err = PyProcess::open_id(later).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::NoSuchProcess, "{err}");
        assert!(err.to_string().contains("is gone"), "{err}");
        let err = PyProcess::open(Pid::new(i32::MAX as u32).unwrap()).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::NoSuchProcess, "{err}");
    }
}
