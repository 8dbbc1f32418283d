//! The target as a CPython: which file it maps holds the runtime, and the
//! handle ([`PyProcess`]) that the stack reader and the remote execution
//! work through.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use log::debug;

use super::elf::PyRuntimeSection;
use super::error::{Pep768Error, Pep768ErrorKind};
use super::memory::RemoteMemory;
use super::offsets::{DebugOffsets, Offsets};
use super::version::{version_from_name, PyVersion};

/// A running CPython 3.14 whose `_PyRuntime` was found and validated: the
/// handle to read its stacks and to ask it to run scripts.
///
/// Opening reads the target's `/proc/PID/maps`, the ELF headers of the
/// files it maps, and `_Py_DebugOffsets` in its memory; it never stops the
/// target. The handle stays valid for the life of the target (a process
/// does not move its `_PyRuntime`).
///
/// # Examples
///
/// ```no_run
/// use heli_grant::PyProcess;
///
/// let python = PyProcess::open(4242)?;
/// println!("CPython {} in {}", python.version(), python.library().display());
/// for thread in python.stack_dump()? {
///     print!("{thread}");
/// }
/// # Ok::<(), heli_grant::Pep768Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct PyProcess {
    memory: RemoteMemory,
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
    pub fn open(pid: u32) -> Result<PyProcess, Pep768Error> {
        let memory = RemoteMemory::new(pid);
        let maps_path = format!("/proc/{pid}/maps");
        let maps = fs::read_to_string(&maps_path).map_err(|err| match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => Pep768Error::new(
                Pep768ErrorKind::NoSuchProcess,
                format!("no process with PID {pid}"),
            ),
            Some(libc::EACCES) | Some(libc::EPERM) => {
                Pep768Error::permission_denied(pid, "read the memory map of", err)
            }
            _ => Pep768Error::io(format!("cannot read {maps_path}"), err),
        })?;
        let candidates = candidates(&maps);
        if candidates.is_empty() {
            return Err(Pep768Error::new(
                Pep768ErrorKind::NotPython,
                format!(
                    "PID {pid} ({}) is not a Python process: it maps no file whose name contains \
                     \"python\"",
                    comm(pid, u64::from(pid)).unwrap_or_else(|| "?".to_owned())
                ),
            ));
        }
        let mut first_error: Option<Pep768Error> = None;
        for mapped in &candidates {
            match Self::try_file(&memory, mapped) {
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
    fn try_file(memory: &RemoteMemory, mapped: &Mapped) -> Result<Option<PyProcess>, Pep768Error> {
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
            memory: memory.clone(),
            runtime,
            debug,
            offsets,
            library: path,
        }))
    }

    /// The target's process id.
    pub fn pid(&self) -> u32 {
        self.memory.pid()
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
            .read_i32(interp + self.offsets.debugger.enabled)?
            == 1)
    }

    /// The main interpreter (id 0): `interpreters_head` is the newest one.
    pub(crate) fn main_interpreter(&self) -> Result<u64, Pep768Error> {
        let mut interp = self
            .memory
            .read_u64(self.runtime + self.offsets.interpreters_head)?;
        for _ in 0..MAX_INTERPRETERS {
            if interp == 0 {
                break;
            }
            let id = self.memory.read_u64(interp + self.offsets.interp.id)?;
            if id == 0 {
                return Ok(interp);
            }
            interp = self.memory.read_u64(interp + self.offsets.interp.next)?;
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

    pub(crate) fn offsets(&self) -> &Offsets {
        &self.offsets
    }
}

/// At most this many interpreters are walked (a loop in a corrupt list).
pub(crate) const MAX_INTERPRETERS: usize = 4096;

/// A file the target maps whose name contains `python`, and where its
/// file offset 0 is mapped.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapped {
    path: String,
    base: u64,
    end: u64,
    inode: u64,
}

impl Mapped {
    /// Opens the file the target maps, wherever it sees it: through the
    /// target's root (mount namespaces), then as named; a deleted one
    /// through `/proc/PID/exe` (when it is the executable) or
    /// `/proc/PID/map_files`.
    fn open(&self, pid: u32) -> Result<(PathBuf, fs::File), Pep768Error> {
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
fn candidates(maps: &str) -> Vec<Mapped> {
    let mut found: Vec<Mapped> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    for line in maps.lines() {
        let Some(map) = parse_maps_line(line) else {
            continue;
        };
        let basename = Path::new(map.path).file_name().unwrap_or(OsStr::new(""));
        if !basename.as_bytes().windows(6).any(|w| w == b"python") {
            continue;
        }
        if map.offset != 0 || seen.contains(map.path) {
            continue;
        }
        seen.insert(map.path.to_owned());
        found.push(Mapped {
            path: map.path.to_owned(),
            base: map.start,
            end: map.end,
            inode: map.inode,
        });
    }
    found
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, PartialEq, Eq)]
struct MapsLine<'a> {
    start: u64,
    end: u64,
    offset: u64,
    inode: u64,
    path: &'a str,
}

fn parse_maps_line(line: &str) -> Option<MapsLine<'_>> {
    // start-end perms offset dev inode path (the path may hold spaces).
    let mut rest = line;
    let mut field = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (word, tail) = trimmed.split_at(end);
        rest = tail;
        word
    };
    let (start, end) = field().split_once('-')?;
    let _perms = field();
    let offset = u64::from_str_radix(field(), 16).ok()?;
    let _dev = field();
    let inode = field().parse().ok()?;
    let path = rest.trim_start();
    if !path.starts_with('/') {
        return None;
    }
    Some(MapsLine {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset,
        inode,
        path,
    })
}

/// The name of thread `tid` of process `pid` (`/proc/PID/task/TID/comm`).
pub(crate) fn comm(pid: u32, tid: u64) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .ok()
        .map(|name| name.trim_end_matches('\n').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
003ff000-00400000 r--p 00000000 08:01 1234 /opt/py/usr/bin/python3.14
00400000-00422000 r--p 00001000 08:01 1234 /opt/py/usr/bin/python3.14
00ba0000-00bf0000 rw-p 007a1000 08:01 1234 /opt/py/usr/bin/python3.14
01000000-01100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000100000 r--p 00000000 08:01 99 /usr/lib/libpython3.13.so.1.0
7f0000200000-7f0000300000 r-xp 00000000 08:01 77 /usr/lib/libc.so.6
7f0000400000-7f0000500000 r--p 00000000 08:01 55 /tmp/my python (deleted)
7f0000600000-7f0000700000 r--p 00001000 08:01 56 /usr/lib/python3.14/lib-dynload/x.so
";

    #[test]
    fn picks_python_files_with_their_base() {
        let found = candidates(MAPS);
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
    fn parses_maps_lines() {
        assert_eq!(
            parse_maps_line("00400000-00401000 r--p 00000000 08:01 1234"),
            None
        );
        assert_eq!(parse_maps_line("garbage"), None);
        assert_eq!(parse_maps_line(""), None);
        let line = parse_maps_line("10-20 r--p 00000030 08:01 42    /a b/c").unwrap();
        assert_eq!(
            line,
            MapsLine {
                start: 0x10,
                end: 0x20,
                offset: 0x30,
                inode: 42,
                path: "/a b/c"
            }
        );
    }

    #[test]
    fn not_python() {
        let err = PyProcess::open(std::process::id()).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::NotPython, "{err}");
        let err = PyProcess::open(i32::MAX as u32).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::NoSuchProcess, "{err}");
    }
}
