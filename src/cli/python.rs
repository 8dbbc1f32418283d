//! Finding a Python: the one that runs `SCRIPT.py` under the controller and
//! the one that runs `pdb -p` in the client. [`find`] answers for programs
//! (and tests) that want to start a target with that same interpreter.

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

/// The Python 3.14 (or newer) that `controller` and `client` run when not
/// given `--python`: `$HELI_PYTHON`, else `python3.14`, else `python3`
/// (looked up in `PATH`); `None` when that interpreter is missing or older.
///
/// # Examples
///
/// ```no_run
/// let python = heli::cli::python::find().expect("Python 3.14 or newer");
/// let status = std::process::Command::new(python).arg("--version").status()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn find() -> Option<PathBuf> {
    configured_python(None)
        .filter(Python::is_supported)
        .map(|python| python.exe)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// An executable shell script at `dir/name`.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn the_version_in_the_name_is_read_without_running_it() {
        let dir = tempfile::tempdir().unwrap();
        // It would fail if run: the name alone must say 3.14.
        let exe = script(dir.path(), "python3.14", "exit 1");
        assert_eq!(python_version(&exe), Some((3, 14)));
        // Through a symlink too, as /usr/bin/python3 -> python3.13.
        let real = script(dir.path(), "python3.13", "exit 1");
        let link = dir.path().join("python3");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(python_version(&link), Some((3, 13)));
    }

    #[test]
    fn otherwise_the_interpreter_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        for (name, answer, version) in [
            ("mypython", "echo 3 12", Some((3, 12))),
            ("notpython", "echo hello", None),
            ("broken", "echo 3 14; exit 1", None),
        ] {
            let exe = script(dir.path(), name, answer);
            assert_eq!(python_version(&exe), version, "{answer}");
        }
        assert_eq!(python_version(&dir.path().join("missing")), None);
    }

    #[test]
    fn only_3_14_and_newer_are_supported() {
        let python = |version| Python {
            exe: PathBuf::from("/usr/bin/python3"),
            version,
        };
        assert!(!python(None).is_supported());
        assert!(!python(Some((3, 13))).is_supported());
        assert!(python(Some((3, 14))).is_supported());
        assert!(python(Some((3, 15))).is_supported());
        assert!(python(Some((4, 0))).is_supported());
        assert_eq!(
            python(Some((3, 13))).describe(),
            "/usr/bin/python3 (Python 3.13)"
        );
        assert_eq!(
            python(None).describe(),
            "/usr/bin/python3 (not a working Python)"
        );
    }

    #[test]
    fn an_explicit_python_wins_and_bare_names_are_looked_up() {
        let missing = Path::new("/nonexistent/python3.14");
        let python = configured_python(Some(missing)).unwrap();
        assert_eq!(python.exe, missing);
        assert_eq!(python.version, None);
        let sh = configured_python(Some(Path::new("sh"))).unwrap();
        assert!(sh.exe.is_absolute(), "{}", sh.exe.display());
        assert!(sh.exe.ends_with("sh"), "{}", sh.exe.display());
        let unknown = configured_python(Some(Path::new("heli-no-such-python"))).unwrap();
        assert_eq!(unknown.exe, Path::new("heli-no-such-python"));
    }

    #[test]
    fn which_finds_executables_in_path() {
        let sh = which(OsStr::new("sh")).unwrap();
        assert!(sh.is_absolute() && is_executable(&sh), "{}", sh.display());
        assert_eq!(which(OsStr::new("heli-no-such-program")), None);
    }

    #[test]
    fn only_executable_files_are_executable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!is_executable(&path));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o744)).unwrap();
        assert!(is_executable(&path));
        assert!(!is_executable(dir.path()), "a directory");
        assert!(!is_executable(&dir.path().join("missing")));
    }

    #[test]
    fn python_names() {
        assert!(is_python_name(Path::new("/usr/bin/python3.14")));
        assert!(is_python_name(Path::new("python")));
        assert!(!is_python_name(Path::new("/usr/bin/node")));
        assert!(!is_python_name(Path::new("/opt/python3.14/bin/sleep")));
    }
}
