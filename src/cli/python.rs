//! Finding a Python: the one that runs `SCRIPT.py` under the controller and
//! the one that runs `pdb -p` in the client.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Python version pdb -p needs on both sides.
pub(crate) const MIN_PYTHON: (u32, u32) = (3, 14);

/// A Python interpreter and its version.
#[derive(Debug, Clone)]
pub(crate) struct Python {
    pub(crate) exe: PathBuf,
    pub(crate) version: Option<(u32, u32)>,
}

impl Python {
    /// The interpreter at `exe`, asked for its version.
    pub(crate) fn at(exe: PathBuf) -> Python {
        Python {
            version: python_version(&exe),
            exe,
        }
    }

    pub(crate) fn is_supported(&self) -> bool {
        self.version.is_some_and(|v| v >= MIN_PYTHON)
    }

    pub(crate) fn describe(&self) -> String {
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
pub(crate) fn configured_python(explicit: Option<&Path>) -> Option<Python> {
    let resolve = |p: &Path| -> PathBuf {
        if p.components().count() == 1 {
            which(p.as_os_str()).unwrap_or_else(|| p.to_path_buf())
        } else {
            p.to_path_buf()
        }
    };
    if let Some(exe) = explicit {
        return Some(Python::at(resolve(exe)));
    }
    if let Some(exe) = std::env::var_os("HELI_PYTHON").filter(|v| !v.is_empty()) {
        return Some(Python::at(resolve(Path::new(&exe))));
    }
    if let Some(exe) = which(OsStr::new("python3.14")) {
        return Some(Python::at(exe));
    }
    let exe = which(OsStr::new("python3"))?;
    Some(Python::at(exe))
}

/// The `major.minor` of the Python at `exe`, if it is one.
pub(crate) fn python_version(exe: &Path) -> Option<(u32, u32)> {
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

/// Whether `exe` is named like a Python interpreter (`python`, `python3.14`).
pub(crate) fn is_python_name(exe: &Path) -> bool {
    exe.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("python"))
}

/// Looks `name` up in `PATH`.
pub(crate) fn which(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a file someone may execute.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
