//! The runtime directory: where it is (`XDG_RUNTIME_DIR` or `/tmp`),
//! opening and creating private directories, and checking the files in
//! them.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use log::debug;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::Uid;

use crate::io::{annotate, refuse};

/// The runtime directory of this process's effective user, given its
/// `XDG_RUNTIME_DIR` (see [`choose`]), if it is private or missing.
pub(super) fn current() -> io::Result<PathBuf> {
    let dir = choose(
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        Uid::effective().as_raw(),
    );
    match open_private_dir(&dir) {
        Ok(_) => Ok(dir),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(dir),
        Err(err) => Err(err),
    }
}

/// The runtime directory for user `uid` given `XDG_RUNTIME_DIR`:
/// `<XDG_RUNTIME_DIR>/heli` when that is an absolute path to an existing
/// directory (not a symbolic link) owned by `uid`, else `/tmp/heli-<uid>`.
pub(super) fn choose(xdg_runtime_dir: Option<&OsStr>, uid: u32) -> PathBuf {
    if let Some(xdg) = xdg_runtime_dir {
        // Without a trailing slash, which would make lstat follow a link.
        let xdg: PathBuf = Path::new(xdg).components().collect();
        let usable = xdg.is_absolute()
            && std::fs::symlink_metadata(&xdg).is_ok_and(|meta| meta.is_dir() && meta.uid() == uid);
        if usable {
            return xdg.join("heli");
        }
        debug!(
            "XDG_RUNTIME_DIR={} is not an absolute path to a directory of uid {uid}: not using it",
            xdg.display()
        );
    }
    PathBuf::from(format!("/tmp/heli-{uid}"))
}

pub(super) fn file_type(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

pub(super) fn stat_at(dir: &OwnedFd, file: &OsStr) -> nix::Result<FileStat> {
    fstatat(dir, file, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// Opens the directory `path` without following a link and checks that it
/// is the user's and closed to everyone else.
pub(super) fn open_private_dir(path: &Path) -> io::Result<OwnedFd> {
    let dir = nix::fcntl::open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_RDONLY,
        Mode::empty(),
    )
    .map_err(|err| match err {
        Errno::ELOOP | Errno::ENOTDIR => match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => refuse(path, "is a symbolic link"),
            _ => refuse(path, "is not a directory"),
        },
        Errno::ENOENT => io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} does not exist", path.display()),
        ),
        err => annotate(err.into(), path),
    })?;
    let stat = fstat(&dir)?;
    let me = Uid::effective().as_raw();
    if stat.st_uid != me {
        // In a shared /tmp only its owner or root can remove it.
        return Err(refuse(
            path,
            &format!(
                "is owned by uid {owner}, not by you (uid {me}); only uid {owner} or root can \
                 remove it: set XDG_RUNTIME_DIR to a directory of your own",
                owner = stat.st_uid
            ),
        ));
    }
    if stat.st_mode & 0o077 != 0 {
        return Err(refuse(
            path,
            &format!(
                "is open to group or others (mode {:04o}); it must be 0700",
                stat.st_mode & 0o7777
            ),
        ));
    }
    Ok(dir)
}

/// Creates the directory `path` (mode 0700) when missing, then opens and
/// checks it as [`open_private_dir`] does.
pub(super) fn make_private_dir(path: &Path) -> io::Result<OwnedFd> {
    let created = match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => true,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => false,
        Err(err) => return Err(annotate(err, path)),
    };
    let dir = open_private_dir(path)?;
    if created {
        // The umask may have taken the owner's bits too.
        fchmod(&dir, Mode::from_bits_truncate(0o700))?;
    }
    Ok(dir)
}

/// Refuses a file at `path` that is not a socket of the user.
pub(super) fn check_socket(stat: &FileStat, path: &Path) -> io::Result<()> {
    match file_type(stat) {
        SFlag::S_IFSOCK => {}
        SFlag::S_IFLNK => return Err(refuse(path, "is a symbolic link")),
        _ => return Err(refuse(path, "is not a socket")),
    }
    let me = Uid::effective().as_raw();
    if stat.st_uid != me {
        return Err(refuse(
            path,
            &format!("is owned by uid {}, not by you (uid {me})", stat.st_uid),
        ));
    }
    Ok(())
}
