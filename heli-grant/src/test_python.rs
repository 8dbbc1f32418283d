//! Python 3.14 targets for the crate's unit tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use heli_core::{ProcessId, Processes};

/// Debian's CPython 3.14, which scripts/test.sh installs: missing, the
/// test fails.
fn python314() -> PathBuf {
    std::env::var_os("HELI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| deps_dir().join("py314/usr/bin/python3.14"))
}

/// The directory scripts/install-python314.sh and scripts/test.sh install
/// into, as scripts/lib/deps.sh decides it: `$HELI_DEPS`, else /opt/heli
/// for root, else `$XDG_DATA_HOME/heli` or `~/.local/share/heli`.
fn deps_dir() -> PathBuf {
    if let Some(deps) = std::env::var_os("HELI_DEPS").filter(|d| !d.is_empty()) {
        return PathBuf::from(deps);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/opt/heli");
    }
    match std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|data| data.is_absolute())
    {
        Some(data) => data.join("heli"),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".local/share/heli")
        }
    }
}

/// Runs Python 3.14 code, its stdin and stdout ours; killed when dropped.
pub(crate) struct Target {
    child: Child,
    pub(crate) input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Target {
    /// Python 3.14 running `code`.
    pub(crate) fn start(code: &str) -> Target {
        let mut child = Command::new(python314())
            .args(["-c", code])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("Python 3.14 (HELI_PYTHON)");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Target {
            child,
            input,
            output,
        }
    }

    /// The next line it prints.
    pub(crate) fn line(&mut self) -> String {
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line
    }

    /// Who it is.
    pub(crate) fn id(&self) -> ProcessId {
        let pid = heli_core::Pid::new(self.child.id()).unwrap();
        heli_proc::ProcFs.identity(pid).unwrap().unwrap()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
