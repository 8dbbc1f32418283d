//! Why an injection was refused before anything was done to the target,
//! carried inside the [`io::Error`] the injector returns: what a granter
//! asks to tell whether another way to make the call (CPython's remote
//! execution) is safe, or meets the same obstacle.

use std::error::Error;
use std::fmt;
use std::io;

/// A reason the injector refused a thread, the target left untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It runs under seccomp (or a filter trapped the call): the filter
    /// applies to whatever makes the call in that process, injected or
    /// run by the process itself, and could kill it.
    Seccomp,
    /// It has Syscall User Dispatch on: an injected call would go to the
    /// program's own `SIGSYS` handler, which a call the program makes
    /// itself (from its allowed region) does not.
    UserDispatch,
    /// Another tracer (a debugger) is attached to it.
    Traced,
}

/// The error's payload: the reason, and the message shown.
#[derive(Debug)]
struct Refused {
    why: Refusal,
    message: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Refused {}

impl Refusal {
    /// The error of kind `kind` saying `message`, which tells this reason
    /// to [`of`](Self::of).
    pub(crate) fn error(self, kind: io::ErrorKind, message: String) -> io::Error {
        io::Error::new(kind, Refused { why: self, message })
    }

    /// The reason `err` carries, if it is such a refusal (as the injector
    /// returned it, not rewrapped).
    pub(crate) fn of(err: &io::Error) -> Option<Refusal> {
        err.get_ref()?
            .downcast_ref::<Refused>()
            .map(|refused| refused.why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_its_reason_and_message() {
        let err = Refusal::Traced.error(io::ErrorKind::ResourceBusy, "traced".to_owned());
        assert_eq!(Refusal::of(&err), Some(Refusal::Traced));
        assert_eq!(err.to_string(), "traced");
        assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
        let plain = io::Error::new(io::ErrorKind::PermissionDenied, "no");
        assert_eq!(Refusal::of(&plain), None);
        // Rewrapped, it is a plain error again.
        let rewrapped = io::Error::new(err.kind(), format!("cannot: {err}"));
        assert_eq!(Refusal::of(&rewrapped), None);
    }
}
