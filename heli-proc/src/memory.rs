//! Another process's memory: `process_vm_readv`/`process_vm_writev`, with
//! `/proc/PID/mem` as the fallback (for kernels or seccomp profiles
//! without those calls, and for reads of special mappings, such as the
//! vDSO, that `process_vm_readv` refuses). Both need the
//! right to ptrace the process (`PTRACE_MODE_ATTACH`), not a ptrace
//! attachment: the process never stops.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use heli_core::Pid;
use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};

use crate::error::no_such_process;

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
    /// `/proc/PID/mem`, opened for reading at the first fallback.
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
        let mem = match self.inner.mem.get() {
            Some(mem) => mem,
            None => {
                let mem = File::open(self.mem_path()).map_err(|err| self.error("read", err))?;
                self.inner.mem.get_or_init(|| mem)
            }
        };
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
