//! The error type of heli's protocol and client.

use std::fmt;
use std::io;

/// An error of the line protocol or of a client request.
///
/// Inspect [`Error::kind`] to decide what to do; the [`Display`](fmt::Display)
/// form is a sentence meant for the user, and for protocol errors it is exactly
/// the message sent back in an `ERROR:` reply.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request named a command the protocol does not have.
    UnknownCommand,
    /// `GRANT_ACCESS` came without a valid process id.
    InvalidPid,
    /// A command came with arguments it does not take.
    UnexpectedArgument,
    /// A time limit (`FOR <secs>`) that is not a whole number of seconds
    /// within the limits.
    InvalidDuration,
    /// The line was longer than [`MAX_LINE`](crate::protocol::MAX_LINE) bytes.
    LineTooLong,
    /// The line was not UTF-8.
    NotUtf8,
    /// The line held nothing but white space.
    EmptyLine,
    /// A reply could not be understood, or did not answer the request.
    MalformedReply,
    /// No controller is listening where the client looked.
    NotRunning,
    /// The controller did not answer within the deadline.
    Timeout,
    /// The controller answered with `ERROR: <message>`; the message is this
    /// error's message.
    Refused,
    /// Another I/O error; see [`std::error::Error::source`].
    Io,
}

impl Error {
    /// Creates an error of `kind` with a message for the user.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Wraps an I/O error that happened while doing `what`.
    ///
    /// `NotFound` and `ConnectionRefused` become [`ErrorKind::NotRunning`],
    /// `TimedOut` and `WouldBlock` become [`ErrorKind::Timeout`]: transports
    /// report a missing controller and an expired deadline that way.
    pub fn io(what: impl Into<String>, err: io::Error) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ErrorKind::NotRunning,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ErrorKind::Timeout,
            _ => ErrorKind::Io,
        };
        Error {
            kind,
            message: format!("{}: {}", what.into(), err),
            source: Some(err),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message for the user (without the kind).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match err.kind {
            ErrorKind::NotRunning => io::ErrorKind::NotFound,
            ErrorKind::Timeout => io::ErrorKind::TimedOut,
            ErrorKind::Io => match &err.source {
                Some(source) => source.kind(),
                None => io::ErrorKind::Other,
            },
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_sorted_by_what_the_transport_meant() {
        for (kind, expected) in [
            (io::ErrorKind::NotFound, ErrorKind::NotRunning),
            (io::ErrorKind::ConnectionRefused, ErrorKind::NotRunning),
            (io::ErrorKind::TimedOut, ErrorKind::Timeout),
            (io::ErrorKind::WouldBlock, ErrorKind::Timeout),
            (io::ErrorKind::PermissionDenied, ErrorKind::Io),
        ] {
            let err = Error::io("Connecting", io::Error::new(kind, "why"));
            assert_eq!(err.kind(), expected, "{kind:?}");
            assert_eq!(err.message(), "Connecting: why");
            assert_eq!(err.to_string(), "Connecting: why");
            let source = std::error::Error::source(&err).expect("the io::Error");
            assert_eq!(source.to_string(), "why");
        }
        let plain = Error::new(ErrorKind::Refused, "no");
        assert!(std::error::Error::source(&plain).is_none());
    }

    #[test]
    fn into_io_error_keeps_the_kind_a_caller_can_act_on() {
        let cases = [
            (
                Error::new(ErrorKind::NotRunning, "m"),
                io::ErrorKind::NotFound,
            ),
            (Error::new(ErrorKind::Timeout, "m"), io::ErrorKind::TimedOut),
            (
                Error::io("m", io::Error::from(io::ErrorKind::PermissionDenied)),
                io::ErrorKind::PermissionDenied,
            ),
            (Error::new(ErrorKind::Io, "m"), io::ErrorKind::Other),
            (
                Error::new(ErrorKind::Refused, "m"),
                io::ErrorKind::InvalidData,
            ),
            (
                Error::new(ErrorKind::MalformedReply, "m"),
                io::ErrorKind::InvalidData,
            ),
        ];
        for (err, kind) in cases {
            let what = format!("{:?}", err.kind());
            let io_err = io::Error::from(err);
            assert_eq!(io_err.kind(), kind, "{what}");
            assert!(io_err.to_string().starts_with('m'), "{what}: {io_err}");
        }
    }
}
