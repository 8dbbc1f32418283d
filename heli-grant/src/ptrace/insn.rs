//! Where the system call instruction lies: the one the thread is leaving,
//! or one in the target's vDSO (found through its auxiliary vector and
//! `/proc/PID/maps`), checked in its memory.

use std::fs;
use std::io::{self, IoSliceMut};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use super::arch;
use super::procfs::proc_error;

/// The address of a system call instruction the thread of `pid` whose
/// registers are `saved` may execute.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(super) fn syscall_insn(pid: u32, saved: &arch::Regs) -> io::Result<u64> {
    if let Some(addr) = arch::current_insn(saved) {
        if read_remote(pid, addr, arch::INSN.len()).ok().as_deref() == Some(arch::INSN) {
            return Ok(addr);
        }
    }
    find_syscall_insn(pid, arch::pc(saved))
}

/// Where the system call instruction lies in the vDSO, once found (the
/// kernel maps the same vDSO in every native process); `usize::MAX` until
/// then.
static VDSO_INSN_OFFSET: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The address of a system call instruction in the target's vDSO or, if
/// it has none, in the executable mapping that holds `pc`.
fn find_syscall_insn(pid: u32, pc: u64) -> io::Result<u64> {
    // Fast path: the vDSO's address from the auxiliary vector, and the
    // instruction's offset found in an earlier scan, checked.
    let offset = VDSO_INSN_OFFSET.load(Ordering::Relaxed);
    if offset != usize::MAX {
        if let Some(addr) = vdso_base(pid).map(|base| base + offset as u64) {
            if read_remote(pid, addr, arch::INSN.len()).ok().as_deref() == Some(arch::INSN) {
                return Ok(addr);
            }
        }
    }
    let path = format!("/proc/{pid}/maps");
    let maps = fs::read_to_string(&path).map_err(|err| proc_error(pid, &path, err))?;
    let mut candidates: Vec<(u64, u64)> = Vec::new();
    for line in maps.lines() {
        let Some((start, end, exec, name)) = parse_map(line) else {
            continue;
        };
        if !exec {
            continue;
        }
        if name == "[vdso]" {
            candidates.insert(0, (start, end));
        } else if (start..end).contains(&pc) {
            candidates.push((start, end));
        }
    }
    for (index, (start, end)) in candidates.into_iter().enumerate() {
        // A mapping of the target's own code may be large: look in its first
        // megabytes only.
        let len = (end - start).min(4 << 20) as usize;
        let code = read_remote(pid, start, len)?;
        if let Some(offset) = find_insn(&code) {
            if index == 0 && vdso_base(pid) == Some(start) {
                VDSO_INSN_OFFSET.store(offset, Ordering::Relaxed);
            }
            return Ok(start + offset as u64);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no system call instruction found in PID {pid}'s vDSO"),
    ))
}

/// The vDSO's address in process `pid`: `AT_SYSINFO_EHDR` in its
/// auxiliary vector.
fn vdso_base(pid: u32) -> Option<u64> {
    let auxv = fs::read(format!("/proc/{pid}/auxv")).ok()?;
    parse_auxv(&auxv, AT_SYSINFO_EHDR).filter(|&base| base != 0)
}

/// The auxiliary vector's key for the vDSO's address (the same on every
/// architecture).
const AT_SYSINFO_EHDR: u64 = 33;

/// The value of `key` in an auxiliary vector (native-endian word pairs).
fn parse_auxv(auxv: &[u8], key: u64) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<u64>();
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().expect("a word"));
        (word(&pair[..WORD]) == key).then(|| word(&pair[WORD..]))
    })
}

/// One line of `/proc/PID/maps`: start, end, executable, name.
fn parse_map(line: &str) -> Option<(u64, u64, bool, &str)> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let name = fields.nth(3).unwrap_or("");
    Some((
        u64::from_str_radix(start, 16).ok()?,
        u64::from_str_radix(end, 16).ok()?,
        perms.as_bytes().get(2) == Some(&b'x'),
        name,
    ))
}

/// The offset of the first system call instruction in `code` (which starts
/// on an instruction boundary for the architectures that need one).
fn find_insn(code: &[u8]) -> Option<usize> {
    (0..code.len().saturating_sub(arch::INSN.len() - 1))
        .step_by(arch::INSN_ALIGN)
        .find(|&offset| code[offset..].starts_with(arch::INSN))
}

/// Reads `len` bytes at `addr` in process `pid`.
fn read_remote(pid: u32, addr: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let remote = [RemoteIoVec {
        base: addr as usize,
        len,
    }];
    match process_vm_readv(
        Pid::from_raw(pid as i32),
        &mut [IoSliceMut::new(&mut buf)],
        &remote,
    ) {
        Ok(n) if n == len => return Ok(buf),
        Ok(_) | Err(_) => {}
    }
    // Special mappings may refuse process_vm_readv; /proc/PID/mem does not.
    let path = format!("/proc/{pid}/mem");
    fs::File::open(&path)
        .and_then(|mem| mem.read_exact_at(&mut buf, addr))
        .map_err(|err| proc_error(pid, &path, err))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps() {
        let line = "7ffd5e9f0000-7ffd5e9f2000 r-xp 00000000 00:00 0                  [vdso]";
        assert_eq!(
            parse_map(line),
            Some((0x7ffd5e9f0000, 0x7ffd5e9f2000, true, "[vdso]"))
        );
        let line = "55d0c0a00000-55d0c0a01000 rw-p 00000000 00:00 0 ";
        assert_eq!(
            parse_map(line),
            Some((0x55d0c0a00000, 0x55d0c0a01000, false, ""))
        );
    }

    #[test]
    fn finds_own_vdso() {
        let pairs: Vec<u8> = [(6u64, 4096u64), (33, 0x7fff_1234_0000), (0, 0)]
            .iter()
            .flat_map(|&(key, value)| [key.to_ne_bytes(), value.to_ne_bytes()])
            .flatten()
            .collect();
        assert_eq!(parse_auxv(&pairs, 33), Some(0x7fff_1234_0000));
        assert_eq!(parse_auxv(&pairs, 25), None);
        let maps = fs::read_to_string("/proc/self/maps").unwrap();
        let vdso = maps
            .lines()
            .filter_map(parse_map)
            .find(|map| map.3 == "[vdso]");
        assert_eq!(vdso_base(std::process::id()), vdso.map(|map| map.0));
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
