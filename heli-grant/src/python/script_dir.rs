//! Where heli writes the scripts it asks a target to run: a directory of
//! one request, inside a per-user directory that no other user can write
//! to, so that no one else can ever put a file at a script's path.
//!
//! A target reads its script when it gets round to it, perhaps after heli
//! gave up waiting; a path under a name anyone may create (a directory of
//! `/tmp` once deleted) would let any local user choose what the target
//! runs, as the target's user. So the request's directory lives in
//! `<tmp>/heli-remote-exec-<euid>/`, which is kept (mode 0711: others may
//! only pass through, for a target of another user; in a sticky `/tmp`
//! only its owner may rename or remove it), and is refused when someone
//! else owns it.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use log::warn;

use super::error::Pep768Error;

/// The mode of the per-user directory.
const PARENT_MODE: u32 = 0o711;
/// A socket address holds 108 bytes; the longest path made here is
/// `<base>/heli-remote-exec-<uid>/pep768-XXXXXX/report`.
const MAX_BASE_LEN: usize = 50;

/// A directory for the files of one request: mode 0700, or 0711 with
/// world-readable files when the target runs as another user. Removed
/// with its files when dropped, unless [`keep`](Self::keep) was called.
#[derive(Debug)]
pub(crate) struct ScriptDir {
    path: PathBuf,
    other_user: bool,
    keep: bool,
}

impl ScriptDir {
    /// Creates a directory in the per-user one ([`parent`]).
    pub(crate) fn create(other_user: bool) -> Result<ScriptDir, Pep768Error> {
        let parent = parent()?;
        let path = nix::unistd::mkdtemp(&parent.join("pep768-XXXXXX")).map_err(|err| {
            Pep768Error::io(
                format!("cannot create a private directory in {}", parent.display()),
                err.into(),
            )
        })?;
        let dir = ScriptDir {
            path,
            other_user,
            keep: false,
        };
        if other_user {
            fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o711)).map_err(|err| {
                Pep768Error::io(format!("cannot open {}", dir.path.display()), err)
            })?;
        }
        Ok(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the file `name` (never an existing one) with `contents`;
    /// returns its path.
    pub(crate) fn write(&self, name: &str, contents: &[u8]) -> Result<PathBuf, Pep768Error> {
        let path = self.path.join(name);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if self.other_user { 0o644 } else { 0o600 })
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .and_then(|mut file| file.write_all(contents))
            .map_err(|err| Pep768Error::io(format!("cannot write {}", path.display()), err))?;
        Ok(path)
    }

    /// Leaves the directory and its files in place when dropped (a target
    /// may still read them).
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for ScriptDir {
    fn drop(&mut self) {
        if self.keep {
            warn!(
                "leaving {} in place: a target may still read it",
                self.path.display()
            );
            return;
        }
        if let Err(err) = fs::remove_dir_all(&self.path) {
            warn!("cannot remove {}: {err}", self.path.display());
        }
    }
}

/// The per-user directory, `<base>/heli-remote-exec-<euid>`, created when
/// missing: `<base>` is the temp directory when it is short and
/// trustworthy (see [`trusted_base`]), else `/tmp`. Refused when it is not
/// a directory of this user (a link, or someone else's).
pub(crate) fn parent() -> Result<PathBuf, Pep768Error> {
    let uid = nix::unistd::geteuid().as_raw();
    let name = format!("heli-remote-exec-{uid}");
    let temp = std::env::temp_dir();
    let base = if trusted_base(&temp, uid) {
        temp
    } else {
        PathBuf::from("/tmp")
    };
    if !trusted_base(&base, uid) {
        return Err(Pep768Error::io(
            format!(
                "{} is open to other users without the sticky bit: heli writes no script \
                 there",
                base.display()
            ),
            io::ErrorKind::PermissionDenied.into(),
        ));
    }
    let parent = base.join(name);
    make_parent(&parent, uid)
        .map_err(|err| Pep768Error::io(format!("cannot use {}", parent.display()), err))?;
    Ok(parent)
}

/// Whether files in `base` can be renamed or removed only by their owner
/// (and root): a short absolute path to a directory of root or `uid` that
/// others cannot write to, or that has the sticky bit (as `/tmp`).
fn trusted_base(base: &Path, uid: u32) -> bool {
    if !base.is_absolute() || base.as_os_str().len() > MAX_BASE_LEN {
        return false;
    }
    fs::metadata(base).is_ok_and(|meta| {
        let mode = meta.mode();
        meta.is_dir()
            && (meta.uid() == 0 || meta.uid() == uid)
            && (mode & 0o022 == 0 || mode & 0o1000 != 0)
    })
}

/// Creates `path` (mode 0711) when missing; checks it is a directory of
/// `uid`, not a link, and sets its mode.
fn make_parent(path: &Path, uid: u32) -> io::Result<()> {
    match DirBuilder::new().mode(PARENT_MODE).create(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    let meta = fs::symlink_metadata(path)?;
    // In a sticky directory such as /tmp, only its owner (or root) can
    // remove what someone else made: the user's way out is another base.
    let elsewhere = "or set TMPDIR to a directory of your own (heli then writes its scripts \
                     there)";
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it is not a directory (a link?): remove it if it is yours (uid {}), \
                 {elsewhere}",
                meta.uid()
            ),
        ));
    }
    if meta.uid() != uid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "it belongs to uid {}, not to you (uid {uid}): someone else made it, and only \
                 they or root can remove it; ask them to, {elsewhere}",
                meta.uid()
            ),
        ));
    }
    // Neither a link (checked) nor replaceable by anyone else (its base is
    // trusted): setting the mode by name is safe.
    if meta.mode() & 0o7777 != PARENT_MODE {
        fs::set_permissions(path, fs::Permissions::from_mode(PARENT_MODE))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_directories_are_private_and_go_away() {
        let dir = ScriptDir::create(false).unwrap();
        let path = dir.path().to_owned();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o700);
        let parent = path.parent().unwrap();
        let meta = fs::symlink_metadata(parent).unwrap();
        assert_eq!(meta.mode() & 0o7777, PARENT_MODE);
        assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
        let file = dir.write("a", b"x").unwrap();
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert!(dir.write("a", b"y").is_err());
        drop(dir);
        assert!(!path.exists());
        assert!(parent.exists(), "the per-user directory stays");

        let mut kept = ScriptDir::create(true).unwrap();
        let path = kept.path().to_owned();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o711);
        let file = kept.write("b", b"x").unwrap();
        assert_eq!(fs::metadata(file).unwrap().mode() & 0o777, 0o644);
        kept.keep();
        drop(kept);
        assert!(path.exists());
        fs::remove_dir_all(path).unwrap();
    }

    #[test]
    fn trusts_only_bases_others_cannot_rearrange() {
        let uid = nix::unistd::geteuid().as_raw();
        assert!(trusted_base(Path::new("/tmp"), uid));
        assert!(!trusted_base(Path::new("relative"), uid));
        assert!(!trusted_base(Path::new("/no/such/dir"), uid));
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!trusted_base(&open, uid));
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(trusted_base(&open, uid));
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(trusted_base(&open, uid));
        // Someone else's directory, or a link, is refused as the parent.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let err = make_parent(&link, uid).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        let err = make_parent(&open, uid + 1).unwrap_err();
        assert!(err.to_string().contains("someone else"), "{err}");
        // The user cannot remove it from a shared /tmp: told the way out.
        assert!(err.to_string().contains("set TMPDIR"), "{err}");
        make_parent(&open, uid).unwrap();
        assert_eq!(fs::metadata(&open).unwrap().mode() & 0o7777, PARENT_MODE);
    }
}
