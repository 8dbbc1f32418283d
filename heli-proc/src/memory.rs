//! Another process's memory: `process_vm_readv`/`process_vm_writev`, with
//! `/proc/PID/mem` as the fallback (for kernels or seccomp profiles
//! without those calls, and for reads of special mappings, such as the
//! vDSO, that `process_vm_readv` refuses). Both need the
//! right to ptrace the process (`PTRACE_MODE_ATTACH`), not a ptrace
//! attachment: the process never stops.
//!
//! A memory [bound](crate::Proc::memory) to an opened process writes only
//! through its `/proc/PID/mem`, opened through that process's own `/proc`
//! directory: a write can reach no other process.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use heli_core::Pid;
use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};

use crate::error::{no_such_process, unless_gone};
use crate::process::Proc;

/// Reads and writes the memory of process `pid`.
///
/// Errors are [`io::Error`]s of three kinds the callers tell apart:
/// [`NotFound`](io::ErrorKind::NotFound) when the process is gone,
/// [`PermissionDenied`](io::ErrorKind::PermissionDenied) without the right
/// to ptrace it, and [`InvalidData`](io::ErrorKind::InvalidData) when the
/// range is not mapped (a pointer read while the process changed it, or
/// memory that is not what the caller thinks).
///
/// Clones share the fallback's open file.
///
/// # Which process: by pid, or bound
///
/// [`Memory::new`] names a process by its pid, at each read and write:
/// once that process has exited and its pid went to another, they reach
/// the other. [`Proc::memory`] makes one bound to the process opened:
///
/// - its writes go only through `/proc/PID/mem` opened through the
///   process's `/proc` directory (the one [`Proc`] holds, which a later
///   process with the same pid does not share). That file reaches the
///   memory the process had when it was opened, and nothing else: once the
///   process has exited, or called `execve` (which gives it new memory),
///   writes fail with [`NotFound`](io::ErrorKind::NotFound);
/// - its reads are by pid (`process_vm_readv`, the faster call), with that
///   file as the fallback: a caller that must know what it read came from
///   the process checks, after reading, that the process still runs
///   ([`Proc::identity`]): a process that runs after the reads ran during
///   them, and its pid was never another's meanwhile.
///
/// # Examples
///
/// ```
/// use heli_core::Pid;
/// use heli_proc::Memory;
///
/// let text = *b"read me";
/// let memory = Memory::new(Pid::this());
/// assert_eq!(memory.read_vec(text.as_ptr() as u64, 7)?, b"read me");
/// let err = memory.read_u64(8).unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Memory {
    pid: Pid,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// `process_vm_*` are missing (ENOSYS): use `/proc/PID/mem` only.
    proc_only: AtomicBool,
    /// Bound to a process: its `/proc` directory (`O_PATH`), through which
    /// `mem` is opened; `None`: by pid.
    bound: Option<File>,
    /// `/proc/PID/mem`, opened at the first fallback: for reading, or
    /// bound, for reading and writing.
    mem: OnceLock<File>,
}

impl Memory {
    /// The memory of process `pid`.
    pub fn new(pid: Pid) -> Memory {
        Memory {
            pid,
            inner: Arc::default(),
        }
    }

    /// One that uses `/proc/PID/mem` only (to test the fallback).
    #[doc(hidden)]
    pub fn proc_only(pid: Pid) -> Memory {
        let memory = Memory::new(pid);
        memory.inner.proc_only.store(true, Ordering::Relaxed);
        memory
    }

    /// Whose memory it is.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Fills `buf` from `addr`.
    ///
    /// # Errors
    ///
    /// See [`Memory`].
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let Some(remote) = self.remote("read", addr, buf.len())? else {
            return Ok(());
        };
        if !self.inner.proc_only.load(Ordering::Relaxed) {
            match process_vm_readv(self.target(), &mut [IoSliceMut::new(buf)], &remote) {
                Ok(n) if n == remote[0].len => return Ok(()),
                Err(Errno::ESRCH) => return Err(no_such_process(self.pid)),
                Err(Errno::ENOSYS) => self.inner.proc_only.store(true, Ordering::Relaxed),
                // A short read or EFAULT (the range runs into an unmapped
                // page, or a special mapping such as the vDSO that the call
                // refuses), EPERM and the rest: /proc/PID/mem gives a second
                // opinion, and its own error.
                Ok(_) | Err(_) => {}
            }
        }
        let mem = self.mem("read")?;
        mem.read_exact_at(buf, addr)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::EIO) | Some(libc::EFAULT) => self.unmapped("read", addr, buf.len()),
                _ if err.kind() == io::ErrorKind::UnexpectedEof => {
                    self.unmapped("read", addr, buf.len())
                }
                _ => self.error("read", err),
            })
    }

    /// Writes `data` at `addr`.
    ///
    /// # Errors
    ///
    /// See [`Memory`].
    pub fn write(&self, addr: u64, data: &[u8]) -> io::Result<()> {
        let Some(remote) = self.remote("write", addr, data.len())? else {
            return Ok(());
        };
        if self.inner.bound.is_some() {
            // Never by pid: only through the file bound to the process.
            let mem = self.mem("write")?;
            return mem
                .write_all_at(data, addr)
                .map_err(|err| match err.raw_os_error() {
                    Some(libc::EIO) | Some(libc::EFAULT) => {
                        self.unmapped("write", addr, data.len())
                    }
                    // The memory the file was opened on is no more.
                    _ if err.kind() == io::ErrorKind::WriteZero => self.replaced(),
                    _ => self.error("write", err),
                });
        }
        if !self.inner.proc_only.load(Ordering::Relaxed) {
            match process_vm_writev(self.target(), &[IoSlice::new(data)], &remote) {
                Ok(n) if n == data.len() => return Ok(()),
                // Nothing was written past an unmapped page: say so.
                Ok(_) | Err(Errno::EFAULT) => return Err(self.unmapped("write", addr, data.len())),
                Err(Errno::ESRCH) => return Err(no_such_process(self.pid)),
                Err(Errno::ENOSYS) => self.inner.proc_only.store(true, Ordering::Relaxed),
                Err(_) => {}
            }
        }
        let mem = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.mem_path())
            .map_err(|err| self.error("write", err))?;
        mem.write_all_at(data, addr)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::EIO) | Some(libc::EFAULT) => self.unmapped("write", addr, data.len()),
                _ => self.error("write", err),
            })
    }

    /// `len` bytes from `addr`.
    ///
    /// # Errors
    ///
    /// See [`Memory`].
    pub fn read_vec(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    /// The little-endian 64-bit word at `addr`.
    ///
    /// # Errors
    ///
    /// See [`Memory`].
    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut word = [0u8; 8];
        self.read(addr, &mut word)?;
        Ok(u64::from_le_bytes(word))
    }

    /// The little-endian 32-bit integer at `addr`.
    ///
    /// # Errors
    ///
    /// See [`Memory`].
    pub fn read_i32(&self, addr: u64) -> io::Result<i32> {
        let mut word = [0u8; 4];
        self.read(addr, &mut word)?;
        Ok(i32::from_le_bytes(word))
    }

    /// Opens its `/proc/PID/mem` now, if not yet (through the process's
    /// own directory when bound): the file reaches the memory of the
    /// program the process runs now and of no later one (an `execve`
    /// gives a process new memory; the file keeps the old, gone). See
    /// [`read_pinned`](Self::read_pinned).
    ///
    /// # Errors
    ///
    /// See [`Memory`].
    pub fn pin(&self) -> io::Result<()> {
        self.mem("read").map(|_| ())
    }

    /// Fills `buf` from `addr` in the memory [`pin`](Self::pin) reached
    /// (opened now if it was not): that of the program the process ran
    /// then, and no other.
    ///
    /// # Errors
    ///
    /// [`NotFound`](io::ErrorKind::NotFound) once that memory is gone (the
    /// process called `execve`, or exited); else see [`Memory`].
    pub fn read_pinned(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.remote("read", addr, buf.len())?.is_none() {
            return Ok(());
        }
        let mem = self.mem("read")?;
        mem.read_exact_at(buf, addr)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::EIO) | Some(libc::EFAULT) => self.unmapped("read", addr, buf.len()),
                // A memory no process uses any more reads as empty.
                _ if err.kind() == io::ErrorKind::UnexpectedEof => self.replaced(),
                _ => self.error("read", err),
            })
    }

    /// `/proc/PID/mem`, opened once for `what` (read or write): through the
    /// process's directory when bound (for reading and writing), else by
    /// path, for reading.
    fn mem(&self, what: &str) -> io::Result<&File> {
        if let Some(mem) = self.inner.mem.get() {
            return Ok(mem);
        }
        let mem = match &self.inner.bound {
            Some(dir) => rustix::fs::openat(
                dir,
                "mem",
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map(File::from)
            .map_err(io::Error::from),
            None => File::open(self.mem_path()),
        }
        .map_err(|err| self.error(what, err))?;
        Ok(self.inner.mem.get_or_init(|| mem))
    }

    /// The error for a bound memory whose process is gone.
    fn replaced(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the memory of PID {} is gone: the process exited, or called execve",
                self.pid
            ),
        )
    }

    fn target(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.pid.get() as i32)
    }

    fn mem_path(&self) -> String {
        format!("/proc/{}/mem", self.pid)
    }

    /// The range of `len` bytes at `addr` in the target, for `what` (read
    /// or write): `None` when it is empty (nothing to do), an error when
    /// no process could map it.
    fn remote(&self, what: &str, addr: u64, len: usize) -> io::Result<Option<[RemoteIoVec; 1]>> {
        if len == 0 {
            return Ok(None);
        }
        if !addressable(addr, len) {
            return Err(self.unmapped(what, addr, len));
        }
        Ok(Some([RemoteIoVec {
            base: addr as usize,
            len,
        }]))
    }

    fn unmapped(&self, what: &str, addr: u64, len: usize) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "cannot {what} {len} bytes at {addr:#x} in PID {}: not mapped (a pointer read \
                 while the process changed it, or memory corrupt)",
                self.pid
            ),
        )
    }

    fn error(&self, what: &str, err: io::Error) -> io::Error {
        match err.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) => no_such_process(self.pid),
            Some(libc::EPERM) | Some(libc::EACCES) => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "permission denied to {what} the memory of PID {}: {err}",
                    self.pid
                ),
            ),
            _ => io::Error::new(
                err.kind(),
                format!("cannot {what} the memory of PID {}: {err}", self.pid),
            ),
        }
    }
}

impl Proc {
    /// Its memory, [bound](Memory#which-process-by-pid-or-bound) to it:
    /// no write can reach another process, even one that later has its
    /// pid. When its main thread has exited while others run on, through a
    /// live thread ([`memory_thread`](Proc::memory_thread)).
    ///
    /// # Errors
    ///
    /// [`NotFound`](io::ErrorKind::NotFound) when it is gone, and when
    /// `/proc` cannot be read.
    pub fn memory(&self) -> io::Result<Memory> {
        let pid = self.pid();
        let via = self.memory_thread()?;
        let dir = match via == pid {
            true => ".".to_owned(),
            false => format!("task/{via}"),
        };
        let flags =
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
        let opened = self.dir().open_relative_flags(&dir, flags);
        let dir = unless_gone(opened, format_args!("/proc/{pid}/{dir}"))?
            .ok_or_else(|| no_such_process(pid))?;
        Ok(Memory {
            pid: via,
            inner: Arc::new(Inner {
                bound: Some(dir),
                ..Inner::default()
            }),
        })
    }
}

/// Whether `len` bytes at `addr` lie where a process's memory can be: a
/// pointer read while the target changed it can be anything, and
/// `/proc/PID/mem` takes no offset past `i64::MAX` (EINVAL, which would
/// say nothing of the pointer).
fn addressable(addr: u64, len: usize) -> bool {
    addr.checked_add(len as u64)
        .is_some_and(|end| end <= i64::MAX as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_no_memory_can_have_are_not_mapped() {
        let me = Memory::new(Pid::this());
        for memory in [me.clone(), Memory::proc_only(Pid::this())] {
            for addr in [u64::MAX - 3, 1 << 63, (1 << 63) - 4] {
                let err = memory.read_u64(addr).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{addr:#x}: {err}");
                assert!(err.to_string().contains("not mapped"), "{err}");
            }
        }
    }

    #[test]
    fn reads_and_writes_own_memory_both_ways() {
        let me = Pid::this();
        for memory in [Memory::new(me), Memory::proc_only(me)] {
            let source = *b"heli reads this";
            let mut buf = [0u8; 15];
            memory.read(source.as_ptr() as u64, &mut buf).unwrap();
            assert_eq!(buf, source);
            let word = 0x1122_3344_5566_7788u64.to_le_bytes();
            assert_eq!(
                memory.read_u64(word.as_ptr() as u64).unwrap(),
                0x1122_3344_5566_7788
            );
            let int = (-5i32).to_le_bytes();
            assert_eq!(memory.read_i32(int.as_ptr() as u64).unwrap(), -5);
            let target = std::hint::black_box(vec![0u8; 8]);
            memory.write(target.as_ptr() as u64, b"written!").unwrap();
            assert_eq!(std::hint::black_box(&target)[..], b"written!"[..]);
            let err = memory.read(8, &mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            let err = memory.write(8, b"x").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(memory.read(8, &mut []).is_ok());
        }
    }

    #[test]
    fn a_bound_memory_never_writes_into_another_program() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        // A shell that calls execve once it reads a line: the same pid and
        // process, another memory.
        let mut child = Command::new("sh")
            .args(["-c", "read line; exec sleep 30"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::new(child.id()).unwrap();
        let proc = Proc::open_existing(pid).unwrap();
        // Its own memory, before: read and written through it (what a
        // shell that has not run execve yet maps from its stack).
        let stack = |proc: &Proc| {
            let maps = std::fs::read_to_string(format!("/proc/{}/maps", proc.pid())).unwrap();
            let line = maps.lines().find(|line| line.ends_with("[stack]")).unwrap();
            let end = line.split(['-', ' ']).nth(1).unwrap();
            u64::from_str_radix(end, 16).unwrap() - 64
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let sh = Some(crate::FileId::of(&std::fs::metadata("/bin/sh").unwrap()));
        while proc.exe_id().unwrap() != sh {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let bound = proc.memory().unwrap();
        assert_eq!(bound.pid(), pid);
        let before = stack(&proc);
        let word = bound.read_u64(before).unwrap();
        bound.write(before, &word.to_le_bytes()).unwrap();
        // Now another program: the bound memory writes nowhere, where the
        // pid alone would reach the new one.
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        while proc.exe_id().unwrap() == sh {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let after = stack(&proc);
        let word = Memory::new(pid).read_u64(after).unwrap();
        let err = bound.write(after, &word.to_le_bytes()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        Memory::new(pid).write(after, &word.to_le_bytes()).unwrap();
        // Bound again: the new memory.
        proc.memory()
            .unwrap()
            .write(after, &word.to_le_bytes())
            .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        let err = proc.memory().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn no_such_process() {
        let nobody = Pid::new(Pid::MAX).unwrap();
        for memory in [Memory::new(nobody), Memory::proc_only(nobody)] {
            let err = memory.read_u64(0x1000).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
            assert_eq!(err.to_string(), format!("no process with PID {nobody}"));
            let err = memory.write(0x1000, b"x").unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        }
    }
}
