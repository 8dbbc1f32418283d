//! The error of the CPython reader: a kind, and a message that says what to
//! do about it.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use crate::scope::PtraceScope;

use super::version::PyVersion;

/// What went wrong inspecting or driving a Python process; see
/// [`Pep768Error::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Pep768ErrorKind {
    /// There is no such process.
    NoSuchProcess,
    /// The process maps no CPython (no file named `*python*` with a
    /// `.PyRuntime` section and a valid cookie).
    NotPython,
    /// A CPython before 3.14 ([`Pep768Error::python_version`] says which,
    /// when known).
    TooOld,
    /// A CPython whose `_Py_DebugOffsets` layout heli does not know: newer
    /// than 3.14, or a 3.14 pre-release.
    UnknownLayout,
    /// A free-threaded build (`python3.14t`), not supported yet.
    FreeThreaded,
    /// The target runs with remote debugging disabled.
    RemoteDebugDisabled,
    /// The interpreter has no thread to run a script.
    NoThread,
    /// The script's path is too long for the target, or not a path it can
    /// open.
    BadPath,
    /// The caller may not read or write the target's memory.
    PermissionDenied,
    /// The target did not run the script in time.
    Timeout,
    /// The caller called the work off (its
    /// [`Deadline`](heli_core::Deadline) was cancelled) before it was done.
    Cancelled,
    /// The target ran the script, which failed or did not report.
    ScriptFailed,
    /// The call the script made failed: [`Pep768Error::raw_os_error`] is
    /// its errno.
    CallFailed,
    /// Inconsistent data: a corrupt ELF file or `_Py_DebugOffsets`, or a
    /// pointer that led nowhere (memory changing under the reader).
    Corrupt,
    /// A 32-bit or big-endian binary.
    Unsupported,
    /// Another system error.
    Io,
}

/// An error of [`PyProcess`](crate::PyProcess) and its functions: a [kind](Pep768ErrorKind)
/// and a message that says what to do about it.
///
/// Converts into an [`io::Error`] (of a matching [`io::ErrorKind`]) that
/// keeps it as its inner error.
#[derive(Debug)]
pub struct Pep768Error {
    kind: Pep768ErrorKind,
    message: String,
    version: Option<PyVersion>,
    errno: Option<i32>,
    source: Option<io::Error>,
}

impl Pep768Error {
    pub(crate) fn new(kind: Pep768ErrorKind, message: String) -> Pep768Error {
        Pep768Error {
            kind,
            message,
            version: None,
            errno: None,
            source: None,
        }
    }

    pub(crate) fn io(message: String, err: io::Error) -> Pep768Error {
        Pep768Error {
            errno: err.raw_os_error(),
            source: Some(err),
            ..Pep768Error::new(Pep768ErrorKind::Io, message)
        }
    }

    pub(crate) fn permission_denied(pid: u32, what: &str, err: io::Error) -> Pep768Error {
        let scope = match PtraceScope::current() {
            Ok(scope) => format!("Yama's ptrace_scope here: {scope} ({})", scope.explain()),
            Err(_) => "Yama's ptrace_scope cannot be read".to_owned(),
        };
        Pep768Error {
            errno: err.raw_os_error(),
            source: Some(err),
            ..Pep768Error::new(
                Pep768ErrorKind::PermissionDenied,
                format!(
                    "permission denied to {what} PID {pid}: that needs the right to ptrace it \
                     (the same user, a dumpable target, and under Yama ptrace_scope=1 being its \
                     ancestor, as the controller is, or named by it with PR_SET_PTRACER; or \
                     CAP_SYS_PTRACE). {scope}"
                ),
            )
        }
    }

    pub(crate) fn with_version(mut self, version: PyVersion) -> Pep768Error {
        self.version = Some(version);
        self
    }

    pub(crate) fn with_errno(mut self, errno: i32) -> Pep768Error {
        self.errno = Some(errno);
        self
    }

    /// Prefixes the message with `what` (a file, a process).
    pub(crate) fn context(mut self, what: &str) -> Pep768Error {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> Pep768ErrorKind {
        self.kind
    }

    /// The target's CPython version, when known (for
    /// [`TooOld`](Pep768ErrorKind::TooOld) and
    /// [`UnknownLayout`](Pep768ErrorKind::UnknownLayout) in particular).
    pub fn python_version(&self) -> Option<PyVersion> {
        self.version
    }

    /// The errno behind it, if any (the failed call's, for
    /// [`CallFailed`](Pep768ErrorKind::CallFailed)).
    pub fn raw_os_error(&self) -> Option<i32> {
        self.errno
    }
}

impl fmt::Display for Pep768Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for Pep768Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_ref().map(|err| err as _)
    }
}

impl From<Pep768Error> for io::Error {
    fn from(err: Pep768Error) -> io::Error {
        use Pep768ErrorKind as K;
        let kind = match err.kind {
            K::NoSuchProcess | K::NoThread => io::ErrorKind::NotFound,
            K::PermissionDenied => io::ErrorKind::PermissionDenied,
            K::Timeout => io::ErrorKind::TimedOut,
            K::Cancelled => io::ErrorKind::Interrupted,
            K::BadPath => io::ErrorKind::InvalidInput,
            K::Corrupt => io::ErrorKind::InvalidData,
            K::CallFailed => err.errno.map_or(io::ErrorKind::Other, |errno| {
                io::Error::from_raw_os_error(errno).kind()
            }),
            K::Io => err
                .source
                .as_ref()
                .map_or(io::ErrorKind::Other, io::Error::kind),
            K::NotPython
            | K::TooOld
            | K::UnknownLayout
            | K::FreeThreaded
            | K::RemoteDebugDisabled
            | K::Unsupported => io::ErrorKind::Unsupported,
            K::ScriptFailed => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_to_io() {
        let err = Pep768Error::new(Pep768ErrorKind::TooOld, "old".to_owned());
        let io: io::Error = err.into();
        assert_eq!(io.kind(), io::ErrorKind::Unsupported);
        let inner = io.get_ref().unwrap().downcast_ref::<Pep768Error>().unwrap();
        assert_eq!(inner.kind(), Pep768ErrorKind::TooOld);
        let err =
            Pep768Error::new(Pep768ErrorKind::CallFailed, "x".to_owned()).with_errno(libc::EINVAL);
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidInput);
    }
}
