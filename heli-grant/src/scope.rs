//! What the kernel lets a process ptrace: Yama's `ptrace_scope`.

use std::fmt;
use std::io;
use std::path::Path;

/// Where Yama publishes its setting.
pub const PTRACE_SCOPE_PATH: &str = "/proc/sys/kernel/yama/ptrace_scope";

/// Yama's `kernel.yama.ptrace_scope`, or its absence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PtraceScope {
    /// The kernel has no Yama: only the classic checks (same user).
    NoYama,
    /// 0, classic: a process may ptrace any process of its own user.
    Classic,
    /// 1, restricted: only ancestors, or the process a target named with
    /// `prctl(PR_SET_PTRACER)` and that process's descendants.
    Restricted,
    /// 2, admin-only: only processes with `CAP_SYS_PTRACE`.
    AdminOnly,
    /// 3, no attach: nobody, until reboot.
    NoAttach,
}

impl PtraceScope {
    /// Reads the running kernel's setting.
    ///
    /// # Errors
    ///
    /// When the file exists but cannot be read or parsed.
    pub fn current() -> io::Result<PtraceScope> {
        Self::read_from(Path::new(PTRACE_SCOPE_PATH))
    }

    /// Reads the setting from `path` (a missing file means no Yama).
    ///
    /// # Errors
    ///
    /// When the file exists but cannot be read or holds no known value.
    pub fn read_from(path: &Path) -> io::Result<PtraceScope> {
        match std::fs::read_to_string(path) {
            Ok(text) => text
                .trim()
                .parse::<u8>()
                .ok()
                .and_then(Self::from_value)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: unexpected content {:?}", path.display(), text.trim()),
                    )
                }),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(PtraceScope::NoYama),
            Err(err) => Err(err),
        }
    }

    /// The scope for a value of the sysctl.
    pub fn from_value(value: u8) -> Option<PtraceScope> {
        Some(match value {
            0 => PtraceScope::Classic,
            1 => PtraceScope::Restricted,
            2 => PtraceScope::AdminOnly,
            3 => PtraceScope::NoAttach,
            _ => return None,
        })
    }

    /// The sysctl's value, `None` without Yama.
    pub fn value(&self) -> Option<u8> {
        match self {
            PtraceScope::NoYama => None,
            PtraceScope::Classic => Some(0),
            PtraceScope::Restricted => Some(1),
            PtraceScope::AdminOnly => Some(2),
            PtraceScope::NoAttach => Some(3),
        }
    }

    /// What it means for attaching a debugger, in a sentence for the user.
    pub fn explain(&self) -> &'static str {
        match self {
            PtraceScope::NoYama => {
                "the kernel has no Yama LSM: any process of your user may attach; no grant is needed"
            }
            PtraceScope::Classic => {
                "ptrace_scope 0 (classic): any process of your user may attach; no grant is needed"
            }
            PtraceScope::Restricted => {
                "ptrace_scope 1 (restricted): only ancestors, or a process the target names with PR_SET_PTRACER, may attach; the controller grants that"
            }
            PtraceScope::AdminOnly => {
                "ptrace_scope 2 (admin-only): only processes with CAP_SYS_PTRACE may attach; run the client with that capability (e.g. via sudo) or lower the scope"
            }
            PtraceScope::NoAttach => {
                "ptrace_scope 3 (no attach): attaching is disabled until reboot"
            }
        }
    }
}

impl fmt::Display for PtraceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value() {
            Some(value) => write!(f, "{value}"),
            None => f.write_str("none (no Yama)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_value_and_absence() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ptrace_scope");
        for value in 0..=3u8 {
            std::fs::write(&file, format!("{value}\n")).unwrap();
            let scope = PtraceScope::read_from(&file).unwrap();
            assert_eq!(scope.value(), Some(value));
            assert_eq!(scope.to_string(), value.to_string());
        }
        std::fs::write(&file, "7\n").unwrap();
        assert!(PtraceScope::read_from(&file).is_err());
        std::fs::remove_file(&file).unwrap();
        assert_eq!(PtraceScope::read_from(&file).unwrap(), PtraceScope::NoYama);
    }

    #[test]
    fn reads_this_kernel() {
        let scope = PtraceScope::current().unwrap();
        assert_eq!(
            scope == PtraceScope::NoYama,
            !Path::new(PTRACE_SCOPE_PATH).exists()
        );
    }
}
