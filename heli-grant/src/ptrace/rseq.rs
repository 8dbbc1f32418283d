//! Restartable sequences: a thread stopped inside an rseq critical section
//! must resume at its abort handler, as after any preemption.
//!
//! A thread that registered an rseq area (glibc 2.35 and later do it for
//! every thread) points the area's `rseq_cs` field at a descriptor while it
//! runs a critical section: `[start_ip, start_ip + post_commit_offset)`
//! must run without preemption, migration or signal, or start over at
//! `abort_ip`. The kernel checks this on the way back to user mode after
//! such an event: if the instruction pointer is inside the section, it
//! moves it to `abort_ip`; either way it clears `rseq_cs`.
//!
//! An injection breaks that check: the kernel makes it while the thread
//! leaves the stop with its instruction pointer on the injected system
//! call, outside the section, so it only clears `rseq_cs`; the registers
//! then put back resume the section in the middle, and its commit goes
//! through although the thread was stopped and maybe migrated. So, as
//! CRIU does when it dumps a thread, the injector reads the descriptor
//! while the thread is stopped, and when the saved instruction pointer
//! lies in the section, restores it to `abort_ip` instead: the thread
//! resumes exactly as a plain stop would have had it resume.
//!
//! Nothing is written to the target's memory: the stale `rseq_cs` left
//! behind is cleared by the kernel at the next preemption, as it clears it
//! after every abort.

use std::io;

use heli_proc::Memory;
use log::debug;
use nix::errno::Errno;
use nix::unistd::Pid;

use crate::sys;

use super::arch;

/// Where `rseq_cs` lies in `struct rseq` (after `cpu_id_start` and
/// `cpu_id`, two `u32`s).
const RSEQ_CS_OFFSET: u64 = 8;

/// The size of `struct rseq_cs`: `u32 version, u32 flags, u64 start_ip,
/// u64 post_commit_offset, u64 abort_ip`.
const RSEQ_CS_SIZE: usize = 32;

/// A critical section's descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CriticalSection {
    version: u32,
    start_ip: u64,
    post_commit_offset: u64,
    abort_ip: u64,
}

impl CriticalSection {
    fn parse(bytes: &[u8]) -> CriticalSection {
        let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap());
        let u64_at = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().unwrap());
        CriticalSection {
            version: u32_at(0),
            start_ip: u64_at(8),
            post_commit_offset: u64_at(16),
            abort_ip: u64_at(24),
        }
    }

    /// Whether `pc` lies in the section (the kernel's test, which also
    /// holds for a section that wraps around).
    fn contains(&self, pc: u64) -> bool {
        pc.wrapping_sub(self.start_ip) < self.post_commit_offset
    }

    /// Whether the kernel accepts it: version 0, its abort handler outside
    /// the section.
    fn is_valid(&self) -> bool {
        self.version == 0 && !self.contains(self.abort_ip)
    }
}

/// Moves the instruction pointer in `saved` (thread `tid` of PID `pid`,
/// stopped) to the abort handler of the rseq critical section it lies in,
/// if any; returns the handler's address then.
///
/// # Errors
///
/// When the thread is in a critical section that the kernel would refuse
/// (a bad descriptor, or no registered signature before its abort handler:
/// the kernel kills such a thread at its next preemption): injecting would
/// hide that, so the injection is refused.
pub(super) fn abort_critical_section(
    tid: Pid,
    pid: u32,
    memory: &Memory,
    saved: &mut arch::Regs,
) -> io::Result<Option<u64>> {
    // A thread in a system call is not in a critical section (the rseq ABI
    // forbids system calls there), and its restart must stay as it is.
    if arch::current_insn(saved).is_some() {
        return Ok(None);
    }
    let config = match sys::ptrace_get_config::<sys::RseqConfig>(tid.as_raw()) {
        Ok(config) => config,
        // A kernel before 5.13 (EIO: no such request) cannot say.
        Err(err) => {
            if err != Errno::EIO {
                debug!("PTRACE_GET_RSEQ_CONFIGURATION on thread {tid}: {err}");
            }
            return Ok(None);
        }
    };
    if config.rseq_abi_pointer == 0 {
        return Ok(None);
    }
    // The thread is stopped: what it wrote is settled. A read that fails
    // leaves the kernel to deal with the area as it would anyway.
    let Ok(descriptor) = memory.read_u64(config.rseq_abi_pointer.wrapping_add(RSEQ_CS_OFFSET))
    else {
        return Ok(None);
    };
    if descriptor == 0 {
        return Ok(None);
    }
    let Ok(bytes) = memory.read_vec(descriptor, RSEQ_CS_SIZE) else {
        return Ok(None);
    };
    let section = CriticalSection::parse(&bytes);
    let pc = arch::pc(saved);
    if !section.contains(pc) {
        return Ok(None);
    }
    let signature = match section.abort_ip.checked_sub(4) {
        Some(at) => memory.read_vec(at, 4).ok(),
        None => None,
    };
    let signed = signature.as_deref() == Some(&config.signature.to_ne_bytes()[..]);
    if !section.is_valid() || !signed {
        return Err(io::Error::other(format!(
            "thread {tid} of PID {pid} is in an rseq critical section at {pc:#x} whose \
             descriptor the kernel would refuse (version {}, abort handler {:#x}, {}): the \
             kernel kills such a thread when it is next preempted; refusing to inject",
            section.version,
            section.abort_ip,
            if signed {
                "signed"
            } else {
                "without the registered signature before it"
            }
        )));
    }
    debug!(
        "thread {tid} of PID {pid} was stopped in an rseq critical section at {pc:#x}: it \
         resumes at its abort handler {:#x}",
        section.abort_ip
    );
    arch::set_pc(saved, section.abort_ip);
    Ok(Some(section.abort_ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_descriptor() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&0x1000u64.to_ne_bytes());
        bytes.extend_from_slice(&0x20u64.to_ne_bytes());
        bytes.extend_from_slice(&0x1030u64.to_ne_bytes());
        let section = CriticalSection::parse(&bytes);
        assert_eq!(
            section,
            CriticalSection {
                version: 0,
                start_ip: 0x1000,
                post_commit_offset: 0x20,
                abort_ip: 0x1030
            }
        );
        assert!(section.is_valid());
        assert!(section.contains(0x1000) && section.contains(0x101f));
        assert!(!section.contains(0x1020) && !section.contains(0xfff));
        let inside = CriticalSection {
            abort_ip: 0x1010,
            ..section
        };
        assert!(!inside.is_valid());
        assert!(!CriticalSection {
            version: 1,
            ..section
        }
        .is_valid());
    }
}
