//! Another process's memory: `process_vm_readv`/`process_vm_writev`, with
//! `/proc/PID/mem` as the fallback (for kernels or seccomp profiles
//! without those calls). Both need the right to ptrace the target
//! (`PTRACE_MODE_ATTACH`), not a ptrace attachment: the target never stops.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;

use super::error::{Pep768Error, Pep768ErrorKind};

/// Reads and writes process `pid`'s memory.
#[derive(Clone, Debug)]
pub(crate) struct RemoteMemory {
    pid: u32,
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// `process_vm_*` are missing (ENOSYS): use `/proc/PID/mem` only.
    proc_only: AtomicBool,
    /// `/proc/PID/mem`, opened for reading at the first fallback.
    mem: OnceLock<File>,
}

impl RemoteMemory {
    pub(crate) fn new(pid: u32) -> RemoteMemory {
        RemoteMemory {
            pid,
            inner: Arc::default(),
        }
    }

    /// One that uses `/proc/PID/mem` only (for tests of the fallback).
    #[cfg(test)]
    pub(crate) fn proc_only(pid: u32) -> RemoteMemory {
        let memory = RemoteMemory::new(pid);
        memory.inner.proc_only.store(true, Ordering::Relaxed);
        memory
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Fills `buf` from `addr`.
    pub(crate) fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Pep768Error> {
        if buf.is_empty() {
            return Ok(());
        }
        if !self.inner.proc_only.load(Ordering::Relaxed) {
            let remote = [RemoteIoVec {
                base: addr as usize,
                len: buf.len(),
            }];
            let len = buf.len();
            match process_vm_readv(self.target(), &mut [IoSliceMut::new(buf)], &remote) {
                Ok(n) if n == len => return Ok(()),
                // The range runs into an unmapped page.
                Ok(_) | Err(Errno::EFAULT) => return Err(self.unmapped("read", addr, len)),
                Err(Errno::ESRCH) => return Err(self.gone()),
                Err(Errno::ENOSYS) => self.inner.proc_only.store(true, Ordering::Relaxed),
                // EPERM and the rest: /proc/PID/mem gives a second opinion,
                // and its own error.
                Err(_) => {}
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
    pub(crate) fn write(&self, addr: u64, data: &[u8]) -> Result<(), Pep768Error> {
        if data.is_empty() {
            return Ok(());
        }
        if !self.inner.proc_only.load(Ordering::Relaxed) {
            let remote = [RemoteIoVec {
                base: addr as usize,
                len: data.len(),
            }];
            match process_vm_writev(self.target(), &[IoSlice::new(data)], &remote) {
                Ok(n) if n == data.len() => return Ok(()),
                Ok(_) | Err(Errno::EFAULT) => return Err(self.unmapped("write", addr, data.len())),
                Err(Errno::ESRCH) => return Err(self.gone()),
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

    pub(crate) fn read_vec(&self, addr: u64, len: usize) -> Result<Vec<u8>, Pep768Error> {
        let mut buf = vec![0u8; len];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    pub(crate) fn read_u64(&self, addr: u64) -> Result<u64, Pep768Error> {
        let mut word = [0u8; 8];
        self.read(addr, &mut word)?;
        Ok(u64::from_le_bytes(word))
    }

    pub(crate) fn read_i32(&self, addr: u64) -> Result<i32, Pep768Error> {
        let mut word = [0u8; 4];
        self.read(addr, &mut word)?;
        Ok(i32::from_le_bytes(word))
    }

    fn target(&self) -> Pid {
        Pid::from_raw(self.pid as i32)
    }

    fn mem_path(&self) -> String {
        format!("/proc/{}/mem", self.pid)
    }

    fn gone(&self) -> Pep768Error {
        Pep768Error::new(
            Pep768ErrorKind::NoSuchProcess,
            format!("no process with PID {}", self.pid),
        )
    }

    fn unmapped(&self, what: &str, addr: u64, len: usize) -> Pep768Error {
        Pep768Error::new(
            Pep768ErrorKind::Corrupt,
            format!(
                "cannot {what} {len} bytes at {addr:#x} in PID {}: not mapped (a pointer read \
                 while the target changed it, or memory corrupt)",
                self.pid
            ),
        )
    }

    fn error(&self, what: &str, err: io::Error) -> Pep768Error {
        match err.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) => self.gone(),
            Some(libc::EPERM) | Some(libc::EACCES) => {
                Pep768Error::permission_denied(self.pid, &format!("{what} the memory of"), err)
            }
            _ => Pep768Error::io(format!("cannot {what} the memory of PID {}", self.pid), err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_own_memory_both_ways() {
        let me = std::process::id();
        for memory in [RemoteMemory::new(me), RemoteMemory::proc_only(me)] {
            let source = *b"heli reads this";
            let mut buf = [0u8; 15];
            memory.read(source.as_ptr() as u64, &mut buf).unwrap();
            assert_eq!(buf, source);
            let word = 0x1122_3344_5566_7788u64.to_le_bytes();
            assert_eq!(
                memory.read_u64(word.as_ptr() as u64).unwrap(),
                0x1122_3344_5566_7788
            );
            let target = std::hint::black_box(vec![0u8; 8]);
            memory.write(target.as_ptr() as u64, b"written!").unwrap();
            assert_eq!(std::hint::black_box(&target)[..], b"written!"[..]);
            let err = memory.read(8, &mut buf).unwrap_err();
            assert_eq!(err.kind(), Pep768ErrorKind::Corrupt, "{err}");
        }
    }

    #[test]
    fn no_such_process() {
        for memory in [
            RemoteMemory::new(i32::MAX as u32),
            RemoteMemory::proc_only(i32::MAX as u32),
        ] {
            let err = memory.read_u64(0x1000).unwrap_err();
            assert_eq!(err.kind(), Pep768ErrorKind::NoSuchProcess, "{err}");
        }
    }
}
