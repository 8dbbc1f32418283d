//! Where the system call instruction lies: the one the thread is leaving,
//! or one in the target's vDSO (found through its auxiliary vector and
//! `/proc/PID/maps`), checked in its memory.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use heli_proc::{Mapped, Memory, Proc};

use super::arch;

/// The address of a system call instruction the thread whose registers
/// are `saved` may execute; `process` (the thread's process, or the thread
/// itself) gives its memory map, `memory` its memory.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) fn syscall_insn(process: &Proc, memory: &Memory, saved: &arch::Regs) -> io::Result<u64> {
    if let Some(addr) = arch::current_insn(saved) {
        if memory.read_vec(addr, arch::INSN.len()).ok().as_deref() == Some(arch::INSN) {
            return Ok(addr);
        }
    }
    find_syscall_insn(process, memory, arch::pc(saved))
}

/// Where the system call instruction lies in the vDSO, once found (the
/// kernel maps the same vDSO in every native process); `usize::MAX` until
/// then.
static VDSO_INSN_OFFSET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The auxiliary vector's key for the vDSO's address (the same on every
/// architecture).
const AT_SYSINFO_EHDR: u64 = 33;

/// The address of a system call instruction in the target's vDSO or, if
/// it has none, in the executable mapping that holds `pc`.
fn find_syscall_insn(process: &Proc, memory: &Memory, pc: u64) -> io::Result<u64> {
    let vdso_base = || {
        process
            .auxv(AT_SYSINFO_EHDR)
            .ok()
            .flatten()
            .filter(|&base| base != 0)
    };
    // Fast path: the vDSO's address from the auxiliary vector, and the
    // instruction's offset found in an earlier scan, checked.
    let offset = VDSO_INSN_OFFSET.load(Ordering::Relaxed);
    if offset != usize::MAX {
        if let Some(addr) = vdso_base().map(|base| base + offset as u64) {
            if memory.read_vec(addr, arch::INSN.len()).ok().as_deref() == Some(arch::INSN) {
                return Ok(addr);
            }
        }
    }
    let mut candidates: Vec<(u64, u64)> = Vec::new();
    for map in process.maps()? {
        if !map.executable {
            continue;
        }
        if map.what == Mapped::Vdso {
            candidates.insert(0, (map.start, map.end));
        } else if (map.start..map.end).contains(&pc) {
            candidates.push((map.start, map.end));
        }
    }
    for (index, (start, end)) in candidates.into_iter().enumerate() {
        // A mapping of the target's own code may be large: look in its first
        // megabytes only.
        let len = (end - start).min(4 << 20) as usize;
        let code = memory.read_vec(start, len)?;
        if let Some(offset) = find_insn(&code) {
            if index == 0 && vdso_base() == Some(start) {
                VDSO_INSN_OFFSET.store(offset, Ordering::Relaxed);
            }
            return Ok(start + offset as u64);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no system call instruction found in PID {}'s vDSO",
            process.pid()
        ),
    ))
}

/// The offset of the first system call instruction in `code` (which starts
/// on an instruction boundary for the architectures that need one).
fn find_insn(code: &[u8]) -> Option<usize> {
    (0..code.len().saturating_sub(arch::INSN.len() - 1))
        .step_by(arch::INSN_ALIGN)
        .find(|&offset| code[offset..].starts_with(arch::INSN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use heli_core::Pid;

    #[test]
    fn finds_an_instruction_in_own_vdso() {
        let me = Proc::open_existing(Pid::this()).unwrap();
        let vdso = me
            .maps()
            .unwrap()
            .into_iter()
            .find(|map| map.what == Mapped::Vdso)
            .expect("a vDSO");
        assert_eq!(me.auxv(AT_SYSINFO_EHDR).unwrap(), Some(vdso.start));
        let addr = find_syscall_insn(&me, &Memory::new(Pid::this()), 0).unwrap();
        assert!((vdso.start..vdso.end).contains(&addr), "{addr:#x}");
        let bytes = Memory::new(Pid::this())
            .read_vec(addr, arch::INSN.len())
            .unwrap();
        assert_eq!(bytes, arch::INSN);
    }

    #[test]
    fn finds_instruction() {
        let insn = arch::INSN;
        let mut code = vec![0x90u8; 64];
        assert_eq!(find_insn(&code), None);
        code[40..40 + insn.len()].copy_from_slice(insn);
        assert_eq!(find_insn(&code), Some(40));
        assert_eq!(find_insn(insn), Some(0));
        assert_eq!(find_insn(&[]), None);
    }
}
