//! The programs' exit statuses, a contract with the scripts that run them,
//! and the client's failures that lead to them.

use std::io;
use std::process::ExitCode;

use crate::core::{Error, ErrorKind, ExitStatus};

use super::sanitize::escape;

/// How the client exits. Scripts rely on these values: they do not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientExit {
    /// 0: the command succeeded (its output's reader may have gone before
    /// the end: `client stack --all | head -3`), the interactive client
    /// ended (`quit`, Ctrl-D, `terminate`), or `--help` or `--version`
    /// printed its text.
    Success = 0,
    /// 1: the controller refused the request, the debugger failed, the
    /// target exited, or another error (reading the terminal, listing the
    /// sessions).
    Failed = 1,
    /// 2: bad usage (an unknown option, `--json` without `status`, `ps`,
    /// `stack` or `--list`, a `--pid` that is not a PID or given with
    /// `--all`, a `--timeout` that is not a positive number, an empty
    /// `--with`), or several sessions are running and no `--session` chose
    /// one.
    Usage = 2,
    /// 3: no controller is running where the client looked.
    NotRunning = 3,
    /// 4: the controller did not answer within `--timeout`.
    Timeout = 4,
    /// 5: attaching is impossible here: `ptrace_scope` is 3, or 2 without
    /// `CAP_SYS_PTRACE`; no Python 3.14 to run pdb; the `--with` tool is not
    /// installed; remote debugging is disabled in the target.
    Impossible = 5,
}

impl ClientExit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The status for an error of the protocol or of a client request:
    /// [`NotRunning`](Self::NotRunning) and [`Timeout`](Self::Timeout) for
    /// theirs, [`Failed`](Self::Failed) for any other (a refusal included).
    pub fn for_error(kind: ErrorKind) -> ClientExit {
        match kind {
            ErrorKind::NotRunning => ClientExit::NotRunning,
            ErrorKind::Timeout => ClientExit::Timeout,
            _ => ClientExit::Failed,
        }
    }

    /// The status when the debugger cannot be started: a program that is not
    /// there makes attaching [`Impossible`](Self::Impossible), anything else
    /// [`Failed`](Self::Failed).
    pub fn for_debugger_start(err: &io::Error) -> ClientExit {
        if err.kind() == io::ErrorKind::NotFound {
            ClientExit::Impossible
        } else {
            ClientExit::Failed
        }
    }

    /// The status for a command line clap rejected, or for the text
    /// (`--help`, `--version`) it printed instead of running.
    pub(crate) fn for_clap(err: &clap::Error) -> ClientExit {
        usage_or(err, ClientExit::Usage, ClientExit::Success)
    }
}

impl From<ErrorKind> for ClientExit {
    fn from(kind: ErrorKind) -> ClientExit {
        ClientExit::for_error(kind)
    }
}

impl From<ClientExit> for ExitCode {
    fn from(exit: ClientExit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// How the controller exits: as its target did, so that it can stand in
/// for the target (in a container's entrypoint, a service manager, a
/// script), or 125 when it fails itself (as `env` and `docker run` do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControllerExit {
    /// The target ended: its exit code, or 128 + the number of the signal
    /// that killed it, as a shell's `$?` shows it.
    Target(u8),
    /// 0: `--help` or `--version` printed its text.
    Help,
    /// 2: the command line could not be parsed (an unknown option, a
    /// missing target, a value of the wrong type).
    Usage,
    /// 125: the controller itself failed: a bad `--grace`, no Python for
    /// `SCRIPT.py`, another controller serving the same session or
    /// directory, a target that cannot start.
    Failed,
}

impl ControllerExit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            ControllerExit::Target(code) => code,
            ControllerExit::Help => 0,
            ControllerExit::Usage => 2,
            ControllerExit::Failed => 125,
        }
    }

    /// The status for a command line clap rejected, or for the text
    /// (`--help`, `--version`) it printed instead of running.
    pub(crate) fn for_clap(err: &clap::Error) -> ControllerExit {
        usage_or(err, ControllerExit::Usage, ControllerExit::Help)
    }
}

impl From<ExitStatus> for ControllerExit {
    /// The target's [`shell_code`](ExitStatus::shell_code), kept to its low
    /// eight bits as the kernel keeps an exit status.
    fn from(status: ExitStatus) -> ControllerExit {
        ControllerExit::Target((status.shell_code() & 0xff) as u8)
    }
}

impl From<ControllerExit> for ExitCode {
    fn from(exit: ControllerExit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

/// `usage` for a command line clap rejected, `printed` for the text
/// (`--help`, `--version`) it printed instead of running.
fn usage_or<E>(err: &clap::Error, usage: E, printed: E) -> E {
    if err.use_stderr() {
        usage
    } else {
        printed
    }
}

/// What the client says when no controller answers.
pub(crate) const START_HINT: &str =
    "\nStart the controller first, e.g.: cargo run --example controller -- examples/target.py";

/// A failure of the client: the message for the user and how to exit.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) exit: ClientExit,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(exit: ClientExit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    /// The error's sentence (its control characters escaped: the
    /// controller's refusals quote the target's data), with a hint to start
    /// a controller when none runs, and in plain words when the target is
    /// gone.
    fn from(err: Error) -> Self {
        let exit = ClientExit::for_error(err.kind());
        let mut message = escape(&err.to_string()).into_owned();
        if err.kind() == ErrorKind::NotRunning {
            message.push_str(START_HINT);
        }
        if err.kind() == ErrorKind::Refused {
            if let Some(rest) = message.strip_prefix("Target process not running") {
                message = format!(
                    "The target is not running{}: it exited, nothing to attach to. \
                     `status` shows what the controller is doing.",
                    rest.trim_end()
                );
            }
        }
        Failure { exit, message }
    }
}

impl From<io::Error> for Failure {
    /// The error's sentence, its control characters escaped.
    fn from(err: io::Error) -> Self {
        Failure::new(ClientExit::Failed, escape(&err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each exit has its code, as `code` says it and as the process ends.
    fn assert_codes<E>(codes: &[(E, u8)], code: fn(E) -> u8)
    where
        E: Copy + std::fmt::Debug + Into<ExitCode>,
    {
        for &(exit, expected) in codes {
            assert_eq!(code(exit), expected, "{exit:?}");
            assert_eq!(exit.into(), ExitCode::from(expected), "{exit:?}");
        }
    }

    #[test]
    fn exit_codes_are_the_documented_ones() {
        let client = [
            (ClientExit::Success, 0),
            (ClientExit::Failed, 1),
            (ClientExit::Usage, 2),
            (ClientExit::NotRunning, 3),
            (ClientExit::Timeout, 4),
            (ClientExit::Impossible, 5),
        ];
        assert_codes(&client, ClientExit::code);
        let controller = [
            (ControllerExit::Target(0), 0),
            (ControllerExit::Target(3), 3),
            (ControllerExit::Target(143), 143),
            (ControllerExit::Help, 0),
            (ControllerExit::Usage, 2),
            (ControllerExit::Failed, 125),
        ];
        assert_codes(&controller, ControllerExit::code);
    }

    #[test]
    fn controller_exits_as_its_target_did() {
        assert_eq!(
            ControllerExit::from(ExitStatus::Code(0)),
            ControllerExit::Target(0)
        );
        assert_eq!(
            ControllerExit::from(ExitStatus::Code(7)),
            ControllerExit::Target(7)
        );
        // SIGTERM and SIGKILL: 128 + the signal, as a shell says.
        assert_eq!(
            ControllerExit::from(ExitStatus::Signal(15)),
            ControllerExit::Target(143)
        );
        assert_eq!(ControllerExit::from(ExitStatus::Signal(9)).code(), 137);
    }

    #[test]
    fn error_kinds_map_to_client_exits() {
        let expected = [
            (ErrorKind::NotRunning, ClientExit::NotRunning),
            (ErrorKind::Timeout, ClientExit::Timeout),
            (ErrorKind::Refused, ClientExit::Failed),
            (ErrorKind::MalformedReply, ClientExit::Failed),
            (ErrorKind::Io, ClientExit::Failed),
            (ErrorKind::UnknownCommand, ClientExit::Failed),
        ];
        for (kind, exit) in expected {
            assert_eq!(ClientExit::for_error(kind), exit, "{kind:?}");
            assert_eq!(ClientExit::from(kind), exit, "{kind:?}");
            let failure = Failure::from(Error::new(kind, "it went wrong"));
            assert_eq!(failure.exit, exit, "{kind:?}");
        }
    }

    #[test]
    fn io_errors_map_to_client_exits() {
        let failure = Failure::from(io::Error::new(io::ErrorKind::PermissionDenied, "no way"));
        assert_eq!(failure.exit, ClientExit::Failed);
        assert_eq!(failure.message, "no way");
        let missing = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(
            ClientExit::for_debugger_start(&missing),
            ClientExit::Impossible
        );
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(ClientExit::for_debugger_start(&denied), ClientExit::Failed);
    }

    #[test]
    fn clap_errors_are_usage_and_help_is_success() {
        let command = || clap::Command::new("x").version("1");
        let bad = command()
            .try_get_matches_from(["x", "--bogus"])
            .unwrap_err();
        assert_eq!(ClientExit::for_clap(&bad), ClientExit::Usage);
        assert_eq!(ControllerExit::for_clap(&bad), ControllerExit::Usage);
        for asked in ["--help", "--version"] {
            let printed = command().try_get_matches_from(["x", asked]).unwrap_err();
            assert_eq!(ClientExit::for_clap(&printed), ClientExit::Success);
            assert_eq!(ControllerExit::for_clap(&printed), ControllerExit::Help);
        }
    }

    #[test]
    fn no_controller_comes_with_a_hint_to_start_one() {
        let failure = Failure::from(Error::new(ErrorKind::NotRunning, "Controller not running"));
        assert_eq!(
            failure.message,
            format!("Controller not running{START_HINT}")
        );
    }

    #[test]
    fn a_gone_target_is_said_in_plain_words() {
        let failure = Failure::from(Error::new(
            ErrorKind::Refused,
            "Target process not running (restarting in 400 ms)",
        ));
        assert_eq!(failure.exit, ClientExit::Failed);
        assert_eq!(
            failure.message,
            "The target is not running (restarting in 400 ms): it exited, nothing to attach to. \
             `status` shows what the controller is doing."
        );
        let other = Failure::from(Error::new(ErrorKind::Refused, "Access held by PID 7"));
        assert_eq!(other.message, "Access held by PID 7");
    }

    #[test]
    fn what_an_error_quotes_is_escaped() {
        let failure = Failure::from(Error::new(
            ErrorKind::Refused,
            "Cannot read the stacks of PID 9 (\x1b]0;T\x07\r): not Python",
        ));
        assert_eq!(
            failure.message,
            "Cannot read the stacks of PID 9 (\\x1b]0;T\\x07\\r): not Python"
        );
        let failure = Failure::from(io::Error::other("/tmp/a\nb: no"));
        assert_eq!(failure.message, "/tmp/a\\nb: no");
    }
}
