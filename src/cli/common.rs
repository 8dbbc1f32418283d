//! What the controller and client programs share: finding a Python and
//! printing errors.

#![allow(dead_code, unreachable_pub)]

use std::error::Error;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How clients reach the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportKind {
    /// A Unix socket per session in the user's runtime directory
    /// (authenticated, many clients at once)
    Socket,
    /// The original's named pipes (one client at a time)
    Fifo,
}

/// The Python version pdb -p needs on both sides.
pub const MIN_PYTHON: (u32, u32) = (3, 14);

/// The `major.minor` of the Python at `exe`, if it is one.
pub fn python_version(exe: &Path) -> Option<(u32, u32)> {
    // `pythonX.Y` (after symlinks) says it without starting an interpreter,
    // which costs tens of milliseconds.
    let real = std::fs::canonicalize(exe).ok()?;
    let named = real
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("python"))
        .and_then(|v| v.split_once('.'))
        .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)));
    if named.is_some() {
        return named;
    }
    let output = Command::new(exe)
        .args(["-I", "-c", "import sys; print(*sys.version_info[:2])"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let mut words = text.split_whitespace().map(|w| w.parse::<u32>());
    match (words.next(), words.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Some((major, minor)),
        _ => None,
    }
}

/// Looks `name` up in `PATH`.
pub fn which(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A Python interpreter and its version.
#[derive(Debug, Clone)]
pub struct Python {
    pub exe: PathBuf,
    pub version: Option<(u32, u32)>,
}

impl Python {
    pub fn is_supported(&self) -> bool {
        self.version.is_some_and(|v| v >= MIN_PYTHON)
    }

    pub fn describe(&self) -> String {
        match self.version {
            Some((major, minor)) => format!("{} (Python {major}.{minor})", self.exe.display()),
            None => format!("{} (not a working Python)", self.exe.display()),
        }
    }
}

/// The configured Python: `explicit` (`--python`), else `$HELI_PYTHON`,
/// else `python3.14`, else `python3` if it is 3.14 or newer.
///
/// Returns the first one configured even if it is too old (the caller
/// warns); `None` when nothing is found at all.
pub fn configured_python(explicit: Option<&Path>) -> Option<Python> {
    let resolve = |p: &Path| -> PathBuf {
        if p.components().count() == 1 {
            which(p.as_os_str()).unwrap_or_else(|| p.to_path_buf())
        } else {
            p.to_path_buf()
        }
    };
    if let Some(exe) = explicit {
        let exe = resolve(exe);
        return Some(Python {
            version: python_version(&exe),
            exe,
        });
    }
    if let Some(exe) = std::env::var_os("HELI_PYTHON").filter(|v| !v.is_empty()) {
        let exe = resolve(Path::new(&exe));
        return Some(Python {
            version: python_version(&exe),
            exe,
        });
    }
    if let Some(exe) = which(OsStr::new("python3.14")) {
        return Some(Python {
            version: python_version(&exe),
            exe,
        });
    }
    let exe = which(OsStr::new("python3"))?;
    Some(Python {
        version: python_version(&exe),
        exe,
    })
}

/// Prints `err` and its chain of sources to stderr.
pub fn report(program: &str, err: &dyn Error) {
    eprintln!("{program}: error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !err.to_string().contains(&text) {
            eprintln!("  caused by: {text}");
        }
        source = cause.source();
    }
}
