//! The target's memory, as the PEP 768 reader sees it: `heli-proc`'s
//! [`Memory`], with its errors told as this module's.

use std::io;

use heli_proc::Memory;

use super::error::{Pep768Error, Pep768ErrorKind};

/// The address `offset` bytes past `base`. Addresses come from the
/// target's memory, read while it runs: one can be anything, and an offset
/// past it can pass the end of the address space. It then wraps around (as
/// it does in a release build), to an address where a read fails as it
/// does anywhere unmapped, instead of the overflow panic of a debug build.
pub(crate) fn at(base: u64, offset: u64) -> u64 {
    base.wrapping_add(offset)
}

/// Reads and writes process `pid`'s memory; see [`Memory`].
#[derive(Clone, Debug)]
pub(crate) struct RemoteMemory {
    pid: u32,
    memory: Option<Memory>,
}

impl RemoteMemory {
    /// Process `pid`'s memory, by pid (for tests).
    #[cfg(test)]
    pub(crate) fn new(pid: u32) -> RemoteMemory {
        RemoteMemory {
            pid,
            memory: heli_core::Pid::new(pid).map(Memory::new),
        }
    }

    /// `memory` (bound to a process: [`heli_proc::Proc::memory`]).
    pub(crate) fn of(memory: Memory) -> RemoteMemory {
        RemoteMemory {
            pid: memory.pid().get(),
            memory: Some(memory),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Fills `buf` from `addr`.
    pub(crate) fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Pep768Error> {
        self.memory()?
            .read(addr, buf)
            .map_err(|err| self.error("read", err))
    }

    /// Writes `data` at `addr`.
    pub(crate) fn write(&self, addr: u64, data: &[u8]) -> Result<(), Pep768Error> {
        self.memory()?
            .write(addr, data)
            .map_err(|err| self.error("write", err))
    }

    /// `len` bytes from `addr` in the memory pinned ([`Memory::read_pinned`]):
    /// `Ok(None)` when that memory is gone (`execve`, or exit).
    pub(crate) fn read_pinned(
        &self,
        addr: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, Pep768Error> {
        let mut buf = vec![0u8; len];
        match self.memory()?.read_pinned(addr, &mut buf) {
            Ok(()) => Ok(Some(buf)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(self.error("read", err)),
        }
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

    fn memory(&self) -> Result<&Memory, Pep768Error> {
        self.memory.as_ref().ok_or_else(|| self.gone())
    }

    fn gone(&self) -> Pep768Error {
        Pep768Error::new(
            Pep768ErrorKind::NoSuchProcess,
            format!("no process with PID {}", self.pid),
        )
    }

    /// `err` (from heli-proc, whose message already names the process and
    /// what failed) as a PEP 768 error, saying it once.
    fn error(&self, what: &str, err: io::Error) -> Pep768Error {
        match err.kind() {
            io::ErrorKind::NotFound => self.gone(),
            io::ErrorKind::PermissionDenied => Pep768Error::permission_denied(
                self.pid,
                &format!("{what} the memory of"),
                io::ErrorKind::PermissionDenied.into(),
            ),
            io::ErrorKind::InvalidData => {
                Pep768Error::new(Pep768ErrorKind::Corrupt, err.to_string())
            }
            _ => Pep768Error::new(Pep768ErrorKind::Io, err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_told_as_pep768_errors() {
        let me = RemoteMemory::new(std::process::id());
        let word = 0x1122_3344_5566_7788u64.to_le_bytes();
        assert_eq!(
            me.read_u64(word.as_ptr() as u64).unwrap(),
            0x1122_3344_5566_7788
        );
        let err = me.read_u64(8).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::Corrupt, "{err}");
        for nobody in [0, i32::MAX as u32] {
            let err = RemoteMemory::new(nobody).read_u64(0x1000).unwrap_err();
            assert_eq!(err.kind(), Pep768ErrorKind::NoSuchProcess, "{err}");
        }
    }

    #[test]
    fn what_failed_is_said_once() {
        let me = RemoteMemory::new(std::process::id());
        let said = "cannot read the memory of PID 7: Invalid argument (os error 22)";
        let err = me.error("read", io::Error::other(said));
        assert_eq!(err.to_string(), said);
        let err = me.error(
            "read",
            io::Error::new(io::ErrorKind::PermissionDenied, said),
        );
        assert_eq!(err.to_string().matches("memory of").count(), 1, "{err}");
    }
}
