//! What a failed read of `/proc` means: a process that is gone, or an error.

use std::fmt;
use std::io;

use procfs::ProcError;

/// Whether `err` says the process does not exist (any more): `ENOENT` when
/// opening its directory or files, `ESRCH` when it ended while they were
/// read.
pub(crate) fn is_gone(err: &ProcError) -> bool {
    match err {
        ProcError::NotFound(_) => true,
        ProcError::Io(err, _) => matches!(err.raw_os_error(), Some(libc::ESRCH | libc::ENOENT)),
        _ => false,
    }
}

/// `err`, of reading `what`, as an I/O error that names it.
pub(crate) fn to_io(err: ProcError, what: impl fmt::Display) -> io::Error {
    let kind = match &err {
        ProcError::PermissionDenied(_) => io::ErrorKind::PermissionDenied,
        ProcError::NotFound(_) => io::ErrorKind::NotFound,
        ProcError::Incomplete(_) => io::ErrorKind::UnexpectedEof,
        ProcError::Io(err, _) => err.kind(),
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, format!("{what}: {err}"))
}

/// The value read, `None` for a process that is gone, or the error.
pub(crate) fn unless_gone<T>(
    result: procfs::ProcResult<T>,
    what: impl fmt::Display,
) -> io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err) if is_gone(&err) => Ok(None),
        Err(err) => Err(to_io(err, what)),
    }
}

/// The error for a process that is not there.
pub(crate) fn no_such_process(pid: impl fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no process with PID {pid}"),
    )
}
