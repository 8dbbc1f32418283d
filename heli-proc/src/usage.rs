//! What `ps` shows of a process: its use of the machine
//! (`/proc/PID/stat`), its command line, and which program file it runs.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;

use crate::error::{to_io, unless_gone};
use crate::process::Proc;

/// A process's use of the machine, from one read of `/proc/PID/stat`, as
/// `ps` shows it. Who the process is and what it is doing (its identity,
/// start time included, and its state) are its
/// [`ProcessInfo`](heli_core::ProcessInfo)'s ([`Proc::info`]; a tree's
/// [`Member`](crate::Member) has both, from the same read).
///
/// # Examples
///
/// ```
/// use heli_core::Pid;
/// use heli_proc::Proc;
///
/// let usage = Proc::open_existing(Pid::this())?.usage()?.unwrap();
/// assert!(usage.threads >= 1 && usage.rss_bytes > 0);
/// assert!(usage.cpu_percent >= 0.0);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Usage {
    /// Its name (`comm`: the program's base name, cut to 15 bytes).
    pub name: String,
    /// How many threads it has.
    pub threads: u32,
    /// CPU time used (user and system) over its lifetime, as a percentage
    /// of one CPU: `ps`'s `%CPU`.
    pub cpu_percent: f64,
    /// Resident memory, in bytes.
    pub rss_bytes: u64,
    /// The size of its address space, in bytes (`ps`'s `VSZ`): it changes
    /// when a file, such as a library, is mapped or unmapped.
    pub vm_bytes: u64,
    /// Seconds since it started.
    pub uptime_secs: u64,
}

/// A file, by the device and inode that hold it, its size and when it last
/// changed: what tells two program files apart even when they have the
/// same name.
///
/// A file replaced (a new file renamed over it, as package managers do) or
/// an inode reused is another `FileId`; so is a file rewritten in place,
/// unless it kept its size and was rewritten within the file system's
/// timestamp granularity (a few milliseconds). A running program's file
/// cannot be opened for writing at all (`ETXTBSY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// The device (`st_dev`).
    pub dev: u64,
    /// The inode (`st_ino`).
    pub inode: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Its last status change (`st_ctime`, seconds and nanoseconds).
    pub changed: (i64, i64),
}

impl FileId {
    /// The identity of the file `meta` describes.
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Usage {
    /// What `stat` (a `/proc/PID/stat`) says, now.
    pub(crate) fn from_stat(stat: procfs::process::Stat) -> Usage {
        let hz = procfs::ticks_per_second().max(1) as f64;
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        let now = now.tv_sec as f64 + now.tv_nsec as f64 / 1e9;
        let age = (now - stat.starttime as f64 / hz).max(0.0);
        let cpu = (stat.utime + stat.stime) as f64 / hz;
        let cpu_percent = match age > 0.0 {
            true => cpu / age * 100.0,
            false => 0.0,
        };
        Usage {
            name: stat.comm,
            threads: u32::try_from(stat.num_threads).unwrap_or(0),
            cpu_percent,
            rss_bytes: stat.rss.saturating_mul(procfs::page_size()),
            vm_bytes: stat.vsize,
            uptime_secs: age as u64,
        }
    }
}

impl Proc {
    /// Its use of the machine now (`/proc/PID/stat`); `None` once gone.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn usage(&self) -> io::Result<Option<Usage>> {
        let pid = self.pid();
        let stat = unless_gone(self.stat(), format_args!("/proc/{pid}/stat"))?;
        Ok(stat.map(Usage::from_stat))
    }

    /// Its command line (`/proc/PID/cmdline`), arguments joined by spaces,
    /// bytes that are not UTF-8 replaced; empty when it has none (a kernel
    /// thread, a zombie) or it is gone.
    ///
    /// At most [`MAX_COMMAND_LINE`] bytes of it are read (a process may
    /// have megabytes of arguments, and a listing of a whole tree must fit
    /// in one reply): a longer one is cut there, at a character's
    /// boundary, and ends with `…`.
    ///
    /// # Race conditions
    ///
    /// The kernel reads the command line from the process's memory, under
    /// its memory map's lock: a process stopped in a rare state holding
    /// that lock (a frozen `mmap`) makes this wait. Call it where waiting
    /// is allowed, or with a deadline.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn command_line(&self) -> io::Result<String> {
        let pid = self.pid();
        let what = format_args!("/proc/{pid}/cmdline");
        // One byte more than shown tells whether there is more.
        let mut bytes = vec![0; MAX_COMMAND_LINE + 1];
        let read = match self.dir().open_relative("cmdline") {
            Ok(file) => fill(file, &mut bytes).map_err(|err| procfs::ProcError::Io(err, None)),
            Err(err) => Err(err),
        };
        let Some(len) = unless_gone(read, what)? else {
            return Ok(String::new());
        };
        bytes.truncate(len);
        let cut = len > MAX_COMMAND_LINE;
        if cut {
            bytes.truncate(MAX_COMMAND_LINE);
            // Not half a character: drop an incomplete one at the end.
            let last = bytes.iter().rposition(|&b| b == 0).map_or(0, |at| at + 1);
            if let Err(err) = std::str::from_utf8(&bytes[last..]) {
                if err.error_len().is_none() {
                    bytes.truncate(last + err.valid_up_to());
                }
            }
        }
        let mut line = bytes
            .split(|&b| b == 0)
            .filter(|arg| !arg.is_empty())
            .map(String::from_utf8_lossy)
            .collect::<Vec<_>>()
            .join(" ");
        if cut {
            line.push('…');
        }
        Ok(line)
    }

    /// The identity of the program file it runs (`/proc/PID/exe`, followed):
    /// a process that calls `execve` runs another file, or the same file
    /// anew; `None` once gone, or for a process without one (a kernel
    /// thread, a zombie).
    ///
    /// # Errors
    ///
    /// When it cannot be read: another user's process needs the right to
    /// ptrace it ([`PermissionDenied`](io::ErrorKind::PermissionDenied)).
    pub fn exe_id(&self) -> io::Result<Option<FileId>> {
        let pid = self.pid();
        let what = format_args!("/proc/{pid}/exe");
        let file = match self.dir().open_relative("exe") {
            Ok(file) => file,
            Err(err) if crate::error::is_gone(&err) => return Ok(None),
            Err(err) => return Err(to_io(err, what)),
        };
        let meta = file.metadata()?;
        Ok(Some(FileId::of(&meta)))
    }
}

/// The most of a command line [`Proc::command_line`] reads, in bytes; a
/// longer one is cut, and marked so (`…`).
pub const MAX_COMMAND_LINE: usize = 4096;

/// Reads `file` into `buf` until it is full or the file ends; how much was
/// read. Nothing beyond `buf`'s length is asked of the kernel.
fn fill(mut file: impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use heli_core::Pid;
    use std::process::Command;
    use std::time::{Duration, Instant};

    #[test]
    fn a_sleeping_child_uses_nothing_and_has_its_command_line() {
        use std::os::unix::ffi::OsStrExt;
        // A shell waiting for its sleep, with arguments holding a space
        // and a byte that is not UTF-8.
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 30; :", "a b"])
            .arg(std::ffi::OsStr::from_bytes(b"\xff"))
            .spawn()
            .unwrap();
        let proc = Proc::open_existing(Pid::new(child.id()).unwrap()).unwrap();
        let sh = std::fs::metadata("/bin/sh").unwrap();
        // Until its execve is done, it is a copy of this test; then it
        // waits.
        let deadline = Instant::now() + Duration::from_secs(10);
        while proc.usage().unwrap().unwrap().name != "sh"
            || proc.info().unwrap().unwrap().state != heli_core::ProcessState::Sleeping
            || proc.children().unwrap().is_some_and(|kids| kids.is_empty())
        {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        let usage = proc.usage().unwrap().unwrap();
        assert_eq!(usage.threads, 1);
        assert!(usage.rss_bytes > 0 && usage.uptime_secs < 60, "{usage:?}");
        assert!(usage.vm_bytes > usage.rss_bytes, "{usage:?}");
        assert!(usage.cpu_percent < 50.0, "{usage:?}");
        assert_eq!(
            proc.command_line().unwrap(),
            "/bin/sh -c sleep 30; : a b \u{fffd}"
        );
        let exe = proc.exe_id().unwrap().unwrap();
        assert_eq!(exe, FileId::of(&sh));
        let mine = Proc::open_existing(Pid::this())
            .unwrap()
            .exe_id()
            .unwrap()
            .unwrap();
        assert_ne!(exe, mine);
        for sleep in proc.children().unwrap().unwrap_or_default() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(sleep.get() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        // Gone: nothing, and no error.
        assert_eq!(proc.usage().unwrap(), None);
        assert_eq!(proc.command_line().unwrap(), "");
        assert_eq!(proc.exe_id().unwrap(), None);
    }

    #[test]
    fn a_long_command_line_is_cut_and_marked() {
        // 3 x 2000 bytes of arguments, one of two-byte characters, whose
        // cut falls in the middle of one.
        let long = "a".repeat(2000);
        let wide = "é".repeat(1000);
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 30", &long, &long])
            .arg(&wide)
            .spawn()
            .unwrap();
        let proc = Proc::open_existing(Pid::new(child.id()).unwrap()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let line = loop {
            let line = proc.command_line().unwrap();
            if line.starts_with("/bin/sh -c") || Instant::now() > deadline {
                break line;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = child.kill();
        let _ = child.wait();
        // "/bin/sh\0-c\0sleep 30\0" is 20 bytes, the two long ones 4002:
        // 74 bytes of the wide one fit, 37 characters.
        let shown = format!("/bin/sh -c sleep 30 {long} {long} {}…", "é".repeat(37));
        assert_eq!(line, shown);
        assert!(!line.contains('\u{fffd}'));
        // Exactly the limit: whole, unmarked.
        let exact = "b".repeat(MAX_COMMAND_LINE - "/bin/sh\0-c\0sleep 30\0".len() - 1);
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 30", &exact])
            .spawn()
            .unwrap();
        let proc = Proc::open_existing(Pid::new(child.id()).unwrap()).unwrap();
        let line = loop {
            let line = proc.command_line().unwrap();
            if line.starts_with("/bin/sh -c") || Instant::now() > deadline {
                break line;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(line, format!("/bin/sh -c sleep 30 {exact}"));
    }

    #[test]
    fn a_busy_process_uses_a_cpu() {
        let mut child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let proc = Proc::open_existing(Pid::new(child.id()).unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let usage = proc.usage().unwrap().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        // On a shared machine it may get less than a whole CPU, never none.
        assert!(usage.cpu_percent > 5.0, "{usage:?}");
        assert!(usage.cpu_percent < 150.0, "{usage:?}");
    }
}
