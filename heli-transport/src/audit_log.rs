//! The audit trail as a JSON Lines file: [`AuditLog`].

use std::fs::{File, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use heli_core::audit::{Audit, AuditRecord, ProcessFacts};
use heli_core::ProcessId;
use heli_proc::Proc;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// How long the audit thread waits for a peer's command line and user
/// name (the kernel reads a command line under the process's memory map
/// lock, which a hostile process can hold; a user database may be remote).
pub const DESCRIBE_DEADLINE: Duration = Duration::from_millis(250);

/// How many reads of command lines that did not end in time may hang at
/// once; past that no more are started (the record says so).
const MAX_HANGING_READS: usize = 4;

/// The controller's audit trail, appended to a file as JSON Lines (one
/// [`AuditRecord`] a line), or kept in memory only
/// ([`memory`](AuditLog::memory)).
///
/// # The file
///
/// [`open`](AuditLog::open) refuses, saying why, a path that is a symlink,
/// whose directory is owned by another user than this process's (root
/// excepted) or writable by anyone without its sticky bit, or a file that
/// is not a regular file, not this user's, has more than one link, may be
/// written by its group or others, or is the kernel's (`/proc`, `/sys`) (another name could lead a reader astray, or be the
/// way a file of someone else's was made to look like ours). It opens the
/// file with `O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC`, mode
/// `0600` when it creates it, relative to the directory it checked (opened
/// once, `openat`: a symlink on the path swapped after the checks cannot
/// send the file to another directory), and checks the file opened again.
///
/// Each record is written with one `write(2)` of the whole line (a write
/// cut short by a full disk leaves a partial line, ended with a newline
/// when one fits, and the record counts as failed): with
/// `O_APPEND` the kernel places it at the end of the file atomically, so
/// controllers sharing a file never interleave their lines. Nothing is
/// buffered in the process (each record is in the file once `record`
/// returns); it is not `fsync`ed (a crash of the machine may lose the last
/// records the kernel had not written back).
///
/// # Rotation
///
/// Before each record, the path is looked up again: a file renamed away
/// (logrotate's default way: rename, then a new file) is noticed by its
/// changed inode, and the path is opened anew with the same checks. Every
/// controller sharing the file follows it; nothing is lost (a record
/// written between the rename and the reopen is in the renamed file).
/// A file deleted instead (no name left to it) is warned about: its
/// records are gone. Do not use logrotate's `copytruncate`: what is
/// written between its copy and its truncation is lost. (Reopening on
/// `SIGHUP` is not possible: the controller forwards `SIGHUP` to its
/// target.)
///
/// # Errors during the run
///
/// A record that cannot be written (a full disk, the file size limit
/// `RLIMIT_FSIZE`: `open` catches `SIGXFSZ`, so the write fails with
/// `EFBIG` instead of killing the controller; a file replaced by one
/// refused) is an error of [`record`](Audit::record): the controller logs
/// it, says `audit=failing:<why>` in `STATUS` until a record is written
/// again, and runs on. A write that blocks (a hung NFS mount) holds up the
/// controller's audit thread only: its loop serves on, and counts the
/// records it has no room for (`audit_lost` in `STATUS`).
///
/// # Examples
///
/// ```
/// use heli_core::audit::{Audit, AuditEvent, AuditRecord};
/// use heli_transport::AuditLog;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("audit.jsonl");
/// let mut log = AuditLog::open(&path)?;
/// log.record(&AuditRecord::new(AuditEvent::Status))?;
/// let text = std::fs::read_to_string(&path)?;
/// assert!(text.starts_with('{') && text.ends_with("}\n"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct AuditLog {
    /// The file and its path; `None`: in memory only.
    file: Option<(PathBuf, File)>,
    /// Reads of command lines that have not ended yet.
    hanging: Arc<AtomicUsize>,
}

impl AuditLog {
    /// Appends to the file at `path`, created if missing.
    ///
    /// # Errors
    ///
    /// When the path is refused (see [the file](AuditLog#the-file)) or the
    /// file cannot be opened: the message says which and why.
    pub fn open(path: impl AsRef<Path>) -> io::Result<AuditLog> {
        let path = path.as_ref();
        catch_file_size_signal()?;
        let file = open_checked(path)?;
        Ok(AuditLog {
            file: Some((path.to_owned(), file)),
            hanging: Arc::default(),
        })
    }

    /// Records nothing to a file: the controller keeps its newest records
    /// in memory (for `client audit`), with the peers' executables and
    /// command lines all the same.
    pub fn memory() -> AuditLog {
        AuditLog {
            file: None,
            hanging: Arc::default(),
        }
    }

    /// The file's path, if it writes to one.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(path, _)| path.as_path())
    }
}

impl Audit for AuditLog {
    fn record(&mut self, record: &AuditRecord) -> io::Result<()> {
        let Some((path, file)) = &mut self.file else {
            return Ok(());
        };
        if rotated(path, file)? {
            if file.metadata()?.nlink() == 0 {
                // No name left: deleted, not renamed by a rotation.
                log::warn!(
                    "audit log {} was deleted (not renamed, as a rotation does): the \
                     records in it are gone; opening it anew",
                    path.display()
                );
            } else {
                log::info!("audit log {} was rotated: opening it anew", path.display());
            }
            *file = open_checked(path)?;
        }
        let line = record.to_json_line();
        // One write: O_APPEND puts it at the end whole.
        let written = file.write(line.as_bytes())?;
        if written != line.len() {
            // End the partial line, so the next record starts a line of
            // its own (a reader sees one line that does not parse); if
            // that fails too, its error says why (ENOSPC, EFBIG).
            let why = match file.write(b"\n") {
                Err(err) => err.to_string(),
                Ok(_) => "disk full?".to_owned(),
            };
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "only {written} of {} bytes written ({why}): a partial line is in {}",
                    line.len(),
                    path.display()
                ),
            ));
        }
        Ok(())
    }

    fn describe(&mut self, id: ProcessId) -> Option<ProcessFacts> {
        describe(id, &self.hanging)
    }
}

/// Catches `SIGXFSZ` (once for the process): a write past the file size
/// limit (`RLIMIT_FSIZE`: `ulimit -f`, systemd's `LimitFSIZE=`) then fails
/// with `EFBIG`, a record that failed, instead of killing the controller
/// and leaving its target unsupervised. A handler that does nothing, not
/// `SIG_IGN`: the programs the controller starts get the default action
/// back when they `exec`.
fn catch_file_size_signal() -> io::Result<()> {
    static CAUGHT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    CAUGHT
        .get_or_init(|| {
            let raised = Arc::new(std::sync::atomic::AtomicBool::new(false));
            signal_hook::flag::register(signal_hook::consts::SIGXFSZ, raised)
                .map(drop)
                .map_err(|err| format!("cannot catch SIGXFSZ: {err}"))
        })
        .clone()
        .map_err(io::Error::other)
}

/// Whether the file at `path` is no longer the one `file` has open.
fn rotated(path: &Path, file: &File) -> io::Result<bool> {
    let open = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(now) => Ok((now.dev(), now.ino()) != (open.dev(), open.ino())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(err) => Err(err),
    }
}

/// Opens `path` for appending after the checks of [`AuditLog`].
fn open_checked(path: &Path) -> io::Result<File> {
    let me = nix::unistd::geteuid().as_raw();
    let refused = |why: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("audit log {}: {why}", path.display()),
        )
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name() else {
        return Err(refused("names no file".into()));
    };
    // The directory opened once, checked and created in by that handle:
    // a directory on the path swapped (a symlink in it changed) after the
    // checks cannot receive the file.
    let dir_file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_CLOEXEC)
        .open(dir)
        .map_err(|err| refused(format!("its directory cannot be read: {err}")))?;
    let dir_meta = dir_file
        .metadata()
        .map_err(|err| refused(format!("its directory cannot be read: {err}")))?;
    if dir_meta.uid() != me && dir_meta.uid() != 0 {
        return Err(refused(format!(
            "its directory {} belongs to another user (uid {}): they could replace the file",
            dir.display(),
            dir_meta.uid()
        )));
    }
    // Anyone may rename or delete a file in a directory anyone may write
    // to, unless its sticky bit is set (as /tmp's).
    let mode = dir_meta.mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(refused(format!(
            "anyone can write to its directory {} (mode {:o}, no sticky bit): \
             they could delete the file or put their own in its place",
            dir.display(),
            mode & 0o7777
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => check_file(&meta, me).map_err(refused)?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(refused(format!("cannot be looked up: {err}"))),
    }
    let flags =
        OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_CREAT | OFlag::from_bits_retain(libc_flags());
    let file = nix::fcntl::openat(&dir_file, name, flags, Mode::from_bits_truncate(0o600))
        .map(File::from)
        .map_err(|err| match err {
            Errno::ELOOP => refused("is a symlink".into()),
            _ => refused(format!(
                "cannot be opened for appending: {}",
                io::Error::from(err)
            )),
        })?;
    // What was opened, checked again: the path may have changed meanwhile.
    check_file(&file.metadata()?, me).map_err(refused)?;
    if heli_proc::on_kernel_file_system(&file)? {
        return Err(refused(
            "is a kernel's file (/proc, /sys, ...), not a file to append to".into(),
        ));
    }
    Ok(file)
}

/// `O_NOFOLLOW | O_CLOEXEC` (std sets `O_CLOEXEC` too), and `O_NONBLOCK`:
/// a FIFO put in the file's place between the check and the open fails
/// (`ENXIO`) instead of blocking until someone reads it (a regular file's
/// writes ignore the flag).
fn libc_flags() -> i32 {
    nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK
}

/// Why `meta` is no file to append the audit trail to, for user `me`.
fn check_file(meta: &Metadata, me: u32) -> Result<(), String> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err("is a symlink".into());
    }
    if !kind.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.uid() != me {
        return Err(format!(
            "belongs to another user (uid {}, not {me})",
            meta.uid()
        ));
    }
    if meta.nlink() > 1 {
        return Err(format!(
            "has {} links (hard links): only a file with one name is used",
            meta.nlink()
        ));
    }
    // Group or others' write bit (with an ACL, the group bits are its
    // mask: a named user or group that may write shows there too).
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "others can write to it (mode {:o}): they could forge or truncate records \
             (chmod go-w it)",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The note of a process that ended (or whose pid another process took)
/// before the audit thread could describe it: a client that read its reply
/// and left at once, or the audit thread behind.
const GONE: &str = "ended before it could be described";

/// The executable (a `readlink`, at once), user name and command line
/// (on a thread of their own, within [`DESCRIBE_DEADLINE`]) of process
/// `id`, and no other: a process that reused its pid is not described
/// (only [`GONE`] is said, as of one that ended).
fn describe(id: ProcessId, hanging: &Arc<AtomicUsize>) -> Option<ProcessFacts> {
    let Some(proc) = Proc::open_id(id).ok()? else {
        return Some(ProcessFacts {
            note: Some(GONE.into()),
            ..ProcessFacts::default()
        });
    };
    let exe = proc.exe();
    if exe
        .as_ref()
        .is_err_and(|err| err.kind() == io::ErrorKind::NotFound)
    {
        // Ended, not reaped yet: nothing more to read.
        return Some(ProcessFacts {
            note: Some(GONE.into()),
            ..ProcessFacts::default()
        });
    }
    let mut facts = ProcessFacts {
        exe: exe.ok().map(|exe| exe.display().to_string()),
        ..ProcessFacts::default()
    };
    let uid = proc.info().ok().flatten().map(|info| info.uid);
    if hanging.load(Ordering::Relaxed) >= MAX_HANGING_READS {
        facts.note = Some("command line not read: earlier reads still hang".into());
        return Some(facts);
    }
    let (tx, rx) = crossbeam_channel::bounded(1);
    hanging.fetch_add(1, Ordering::Relaxed);
    let count = hanging.clone();
    let spawned = std::thread::Builder::new()
        .name("heli-audit-describe".into())
        .spawn(move || {
            let user = uid
                .and_then(|uid| nix::unistd::User::from_uid(uid.into()).ok().flatten())
                .map(|user| user.name);
            let cmdline = proc.command_line().ok();
            count.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send((user, cmdline));
        });
    if spawned.is_err() {
        hanging.fetch_sub(1, Ordering::Relaxed);
        facts.note = Some("command line not read: no thread".into());
        return Some(facts);
    }
    match rx.recv_timeout(DESCRIBE_DEADLINE) {
        Ok((user, cmdline)) => {
            facts.user = user;
            facts.cmdline = cmdline.filter(|line| !line.is_empty());
        }
        Err(_) => {
            facts.note = Some(format!(
                "command line and user name not read within {DESCRIBE_DEADLINE:?}"
            ));
        }
    }
    Some(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use heli_core::audit::AuditEvent;
    use std::os::unix::fs::PermissionsExt;

    fn refusal(path: &Path) -> String {
        AuditLog::open(path).unwrap_err().to_string()
    }

    #[test]
    fn a_new_file_is_created_private_and_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(dir.path().join("other"), b"").unwrap();
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.path(), Some(path.as_path()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        for _ in 0..3 {
            log.record(&AuditRecord::new(AuditEvent::Status)).unwrap();
        }
        drop(log);
        let mut log = AuditLog::open(&path).unwrap();
        log.record(&AuditRecord::new(AuditEvent::Terminate))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[3]["event"], "terminate");
    }

    #[test]
    fn symlinks_other_files_and_hard_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, b"").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(
            refusal(&link).ends_with("link: is a symlink"),
            "{}",
            refusal(&link)
        );
        // A dangling symlink too (O_NOFOLLOW would create nothing).
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(refusal(&dangling).contains("is a symlink"));
        assert!(!dir.path().join("nowhere").exists());
        assert!(refusal(dir.path()).contains("is not a regular file"));
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(refusal(&fifo).contains("is not a regular file"));
        // /proc/self/status is a regular file of ours, to the kernel.
        let status = refusal(Path::new("/proc/self/status"));
        assert!(status.contains("is a kernel's file"), "{status}");
        let hard = dir.path().join("hard");
        std::fs::hard_link(&real, &hard).unwrap();
        assert!(refusal(&hard).contains("has 2 links"), "{}", refusal(&hard));
        assert!(refusal(&real).contains("has 2 links"));
        let missing_dir = dir.path().join("no/such/audit.jsonl");
        assert!(refusal(&missing_dir).contains("directory cannot be read"));
    }

    #[test]
    fn another_users_directory_or_file_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to own files as nobody");
            return;
        }
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(nobody.uid), Some(nobody.gid)).unwrap();
        let message = refusal(&theirs.join("audit.jsonl"));
        assert!(message.contains("belongs to another user"), "{message}");
        assert!(!theirs.join("audit.jsonl").exists());
        let file = dir.path().join("their-file");
        std::fs::write(&file, b"").unwrap();
        nix::unistd::chown(&file, Some(nobody.uid), Some(nobody.gid)).unwrap();
        let message = refusal(&file);
        assert!(message.contains("belongs to another user"), "{message}");
    }

    #[test]
    fn a_file_or_directory_others_can_write_to_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // A file others may write to: they could forge or truncate records.
        for mode in [0o620, 0o602, 0o666] {
            let file = dir.path().join(format!("writable-{mode:o}"));
            std::fs::write(&file, b"").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let message = refusal(&file);
            assert!(message.contains("others can write to it"), "{message}");
        }
        // Readable by others is the operator's choice.
        let readable = dir.path().join("readable");
        std::fs::write(&readable, b"").unwrap();
        std::fs::set_permissions(&readable, std::fs::Permissions::from_mode(0o644)).unwrap();
        AuditLog::open(&readable).unwrap();
        // A directory anyone may write to, without the sticky bit: anyone
        // could rename or delete the file, or put their own in its place.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let message = refusal(&open.join("audit.jsonl"));
        assert!(
            message.contains("anyone can write to its directory"),
            "{message}"
        );
        assert!(!open.join("audit.jsonl").exists());
        // With the sticky bit (as /tmp): only the file's owner may.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        AuditLog::open(open.join("audit.jsonl")).unwrap();
    }

    #[test]
    fn the_file_is_made_in_the_directory_that_was_checked() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to own a directory as nobody");
            return;
        }
        // A path through a symlink someone swaps between a directory of
        // ours and one of another user's (as in /tmp without
        // fs.protected_symlinks): the file must never be made in theirs
        // (they could delete it, records and all).
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine");
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&mine).unwrap();
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(nobody.uid), Some(nobody.gid)).unwrap();
        let link = dir.path().join("link");
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (dir, mine, theirs, link, stop) = (
                dir.path().to_owned(),
                mine.clone(),
                theirs.clone(),
                link.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let next = dir.join("next");
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let to = if n % 2 == 0 { &mine } else { &theirs };
                    let _ = std::fs::remove_file(&next);
                    std::os::unix::fs::symlink(to, &next).unwrap();
                    std::fs::rename(&next, &link).unwrap();
                }
            })
        };
        let started = std::time::Instant::now();
        let mut opened = 0;
        while started.elapsed() < Duration::from_secs(3) {
            let path = link.join(format!("audit-{opened}.jsonl"));
            if AuditLog::open(&path).is_ok() {
                opened += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        let made: Vec<_> = std::fs::read_dir(&theirs).unwrap().collect();
        assert!(opened > 0);
        assert!(
            made.is_empty(),
            "{} of {opened} files made in the other user's directory",
            made.len()
        );
    }

    #[test]
    fn a_rotated_file_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        log.record(&AuditRecord::new(AuditEvent::Status)).unwrap();
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        log.record(&AuditRecord::new(AuditEvent::Terminate))
            .unwrap();
        let old = std::fs::read_to_string(dir.path().join("audit.jsonl.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!((old.lines().count(), new.lines().count()), (1, 1));
        assert!(new.contains("terminate"));
        // Replaced by a symlink: refused, not followed.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("audit.jsonl.1"), &path).unwrap();
        let err = log
            .record(&AuditRecord::new(AuditEvent::Status))
            .unwrap_err();
        assert!(err.to_string().contains("is a symlink"), "{err}");
    }

    #[test]
    fn a_deleted_file_is_warned_about_not_taken_for_a_rotation() {
        assert!(heli_core::test_log::capture(log::LevelFilter::Info));
        let warned = || -> Vec<String> {
            let me = std::thread::current().id();
            heli_core::test_log::lines()
                .into_iter()
                .filter(|line| line.thread == me && line.level == log::Level::Warn)
                .map(|line| line.text)
                .collect()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path).unwrap();
        log.record(&AuditRecord::new(AuditEvent::Status)).unwrap();
        // Renamed (rotated): followed, nothing to warn about.
        std::fs::rename(&path, dir.path().join("audit.jsonl.1")).unwrap();
        log.record(&AuditRecord::new(AuditEvent::Status)).unwrap();
        assert_eq!(warned(), Vec::<String>::new());
        // Deleted (by someone who may write to the directory): the records
        // in it are gone, which is no rotation.
        std::fs::remove_file(&path).unwrap();
        log.record(&AuditRecord::new(AuditEvent::Terminate))
            .unwrap();
        let warned = warned();
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(warned[0].contains("was deleted"), "{warned:?}");
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(new.contains("terminate") && new.lines().count() == 1);
    }

    #[test]
    fn two_writers_appending_at_once_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let writers: Vec<_> = (0..2)
            .map(|writer| {
                let mut log = AuditLog::open(&path).unwrap();
                std::thread::spawn(move || {
                    for n in 0..1000 {
                        let mut record = AuditRecord::new(AuditEvent::StackDump);
                        record.connection = writer;
                        // Long lines, so a torn write would show.
                        record.reason = Some(format!("{n}:{}", "x".repeat(3000)));
                        log.record(&record).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut counts = [0; 2];
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            counts[value["connection"].as_u64().unwrap() as usize] += 1;
        }
        assert_eq!(counts, [1000, 1000]);
    }

    /// Waits until process `pid` has ended (state `Z` in its `stat`).
    fn wait_until_zombie(pid: u32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let state = stat.rsplit_once(") ").unwrap().1.chars().next();
            if state == Some('Z') {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{stat}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_process_is_described_by_its_identity_only() {
        let me = heli_proc::ProcFs;
        let id = heli_core::Processes::identity(&me, heli_core::Pid::this())
            .unwrap()
            .unwrap();
        let mut log = AuditLog::memory();
        let facts = log.describe(id).unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(facts.exe.as_deref(), Some(exe.to_str().unwrap()));
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert!(
            facts.cmdline.unwrap().contains(name),
            "the test binary's own"
        );
        assert!(facts.user.is_some());
        // The same pid with another start time: a process that reused it.
        let other = ProcessId {
            start_time: id.start_time + 1,
            ..id
        };
        let gone = ProcessFacts {
            note: Some(GONE.into()),
            ..ProcessFacts::default()
        };
        assert_eq!(log.describe(other), Some(gone.clone()));
        // A peer that ended before the audit thread came to it (a client
        // that read its reply and left): said so, not silently bare.
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let pid = heli_core::Pid::new(child.id()).unwrap();
        let id = heli_core::Processes::identity(&me, pid).unwrap().unwrap();
        child.kill().unwrap();
        // Ended, not reaped yet (a zombie), then reaped.
        wait_until_zombie(child.id());
        assert_eq!(log.describe(id), Some(gone.clone()));
        child.wait().unwrap();
        assert_eq!(log.describe(id), Some(gone));
        assert!(log.record(&AuditRecord::new(AuditEvent::Status)).is_ok());
    }
}
