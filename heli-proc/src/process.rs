//! One process of `/proc`, opened once, and the [`Processes`] table.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use heli_core::{Pid, ProcessId, ProcessInfo, ProcessState, Processes};
use procfs::process::Process;
use rustix::fs::{FileType, FsWord, Mode, OFlags};

use crate::error::{no_such_process, to_io, unless_gone};
use crate::maps::Mapping;

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags: a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

/// One process (or thread) of `/proc`, opened once: every fact is read
/// relative to its directory, so a later process that reuses the pid can
/// never be mixed in (reads then fail as if the process were gone).
///
/// Every reader returns `Ok(None)` when the process is gone (exited and
/// reaped, or never was), and an error only when `/proc` could not be read
/// (no permission, an unexpected format).
///
/// # Examples
///
/// ```
/// use heli_core::{Pid, ProcessState};
/// use heli_proc::Proc;
///
/// let me = Proc::open(Pid::this())?.expect("this process runs");
/// let info = me.info()?.unwrap();
/// assert_eq!(info.process, Pid::this());
/// assert!(!info.state.is_gone());
/// assert!(me.threads()?.contains(&Pid::this()));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct Proc {
    pid: Pid,
    dir: Process,
}

/// What a thread's `/proc/PID/task/TID/status` says, as far as ptrace is
/// concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadStatus {
    /// What it is doing.
    pub state: ProcessState,
    /// The process it belongs to (`Tgid`).
    pub process: Pid,
    /// How many threads that process has.
    pub threads: u64,
    /// Who traces it, if anyone (`TracerPid`).
    pub tracer: Option<Pid>,
    /// Its seccomp mode: 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    /// The signals pending for this thread alone (`SigPnd`), as a bit set:
    /// bit `n - 1` for signal `n`.
    pub pending: u64,
}

/// Where a thread is, by `/proc/PID/task/TID/syscall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syscall {
    /// On a CPU, or ready to run.
    Running,
    /// Not in a system call (in user mode, but not running).
    User,
    /// Blocked in system call number `nr`.
    In(i64),
}

impl Proc {
    /// Opens process (or thread) `pid`; `None` when there is none.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn open(pid: Pid) -> io::Result<Option<Proc>> {
        let opened = Process::new(pid.get() as i32);
        Ok(unless_gone(opened, format_args!("/proc/{pid}"))?.map(|dir| Proc { pid, dir }))
    }

    /// Opens process `id` and no other: `None` when its pid is free, or
    /// names a process with another start time (`id` has exited, and its
    /// pid went to a later process), or a zombie.
    ///
    /// The identity is read through the directory opened, which stays
    /// bound to the process it was opened for (a later process that reuses
    /// the pid has another `/proc` entry): every fact read through the
    /// [`Proc`] returned is `id`'s, or missing once `id` has exited.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn open_id(id: ProcessId) -> io::Result<Option<Proc>> {
        let Some(proc) = Proc::open(id.pid)? else {
            return Ok(None);
        };
        Ok((proc.identity()? == Some(id)).then_some(proc))
    }

    /// Opens `pid`; a process that is gone is an error
    /// ([`NotFound`](io::ErrorKind::NotFound): "no process with PID ...").
    ///
    /// # Errors
    ///
    /// As [`open`](Proc::open), and when there is no such process.
    pub fn open_existing(pid: Pid) -> io::Result<Proc> {
        Proc::open(pid)?.ok_or_else(|| no_such_process(pid))
    }

    /// The pid it was opened with.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Facts about it now (`/proc/PID/stat` and `/proc/PID/status`).
    ///
    /// A process whose main thread has exited while other threads run on
    /// (a "zombie leader") is alive: its state is that of a live thread.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn info(&self) -> io::Result<Option<ProcessInfo>> {
        let pid = self.pid;
        let Some(stat) = unless_gone(self.stat(), format_args!("/proc/{pid}/stat"))? else {
            return Ok(None);
        };
        self.info_from(&stat)
    }

    /// [`info`](Proc::info), its `/proc/PID/stat` read already.
    pub(crate) fn info_from(
        &self,
        stat: &procfs::process::Stat,
    ) -> io::Result<Option<ProcessInfo>> {
        let pid = self.pid;
        let what = format_args!("/proc/{pid}/status");
        let Some(ids) = unless_gone(self.dir.read::<_, StatusIds>("status"), what)? else {
            return Ok(None);
        };
        let state = match self.state(stat)? {
            Some(state) => state,
            None => ProcessState::from_code(stat.state),
        };
        Ok(Some(ProcessInfo {
            id: ProcessId {
                pid,
                start_time: stat.starttime,
            },
            parent: u32::try_from(stat.ppid).ok().and_then(Pid::new),
            process: tgid(ids.tgid, pid),
            state,
            uid: ids.ruid,
            euid: ids.euid,
            kernel_thread: stat.flags & PF_KTHREAD != 0,
        }))
    }

    /// Who it is now: pid and start time, `None` once it has exited (a
    /// zombie counts as gone; a process whose main thread exited while
    /// others run on does not).
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn identity(&self) -> io::Result<Option<ProcessId>> {
        let pid = self.pid;
        let Some(stat) = unless_gone(self.stat(), format_args!("/proc/{pid}/stat"))? else {
            return Ok(None);
        };
        Ok(self.state(&stat)?.map(|_| ProcessId {
            pid,
            start_time: stat.starttime,
        }))
    }

    /// The state of the process whose main thread's stat is `stat`: that
    /// thread's, or, when it is a zombie leader, a live thread's; `None`
    /// once it has exited.
    ///
    /// A main thread that called `pthread_exit` stays a zombie until the
    /// last thread exits (measured on Linux 6.18): its `/proc/PID/stat` and
    /// `status` show state `Z` and a thread count that still includes it
    /// (`Threads: 3` for it and two live threads), its `cmdline` is empty,
    /// `exe` cannot be read, its `syscall` reads `-1 0x0 0x0`, and
    /// `/proc/PID/task` lists it with the live threads, whose states are
    /// their own. Only the main thread lingers so: other threads are
    /// released as they exit.
    fn state(&self, stat: &procfs::process::Stat) -> io::Result<Option<ProcessState>> {
        let state = ProcessState::from_code(stat.state);
        if !state.is_gone() {
            return Ok(Some(state));
        }
        if stat.num_threads <= 1 {
            return Ok(None);
        }
        Ok(self.live_thread()?.map(|(_, state)| state))
    }

    /// A thread other than the main one that has not exited, and its state.
    fn live_thread(&self) -> io::Result<Option<(Pid, ProcessState)>> {
        let what = format_args!("/proc/{}/task", self.pid);
        let Some(tasks) = unless_gone(self.dir.tasks(), what)? else {
            return Ok(None);
        };
        for task in tasks.filter_map(|task| task.ok()) {
            if task.tid == task.pid {
                continue;
            }
            let Ok(stat) = task.stat() else { continue };
            let state = ProcessState::from_code(stat.state);
            if !state.is_gone() {
                let tid = u32::try_from(task.tid).ok().and_then(Pid::new);
                return Ok(tid.map(|tid| (tid, state)));
            }
        }
        Ok(None)
    }

    /// The CPU time it has used, user and system, in clock ticks
    /// (`/proc/PID/stat` fields 14 and 15; for a thread's pid, that
    /// thread's).
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn cpu_ticks(&self) -> io::Result<Option<u64>> {
        let pid = self.pid;
        let stat = unless_gone(self.stat(), format_args!("/proc/{pid}/stat"))?;
        Ok(stat.map(|stat| stat.utime + stat.stime))
    }

    /// Its status as ptrace cares about it (`/proc/PID/status`: for a
    /// process, its main thread's).
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn status(&self) -> io::Result<Option<ThreadStatus>> {
        let pid = self.pid;
        let status = unless_gone(self.dir.status(), format_args!("/proc/{pid}/status"))?;
        Ok(status.map(|status| thread_status(&status, pid)))
    }

    /// Thread `tid`'s status (`/proc/PID/task/TID/status`).
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn thread_status(&self, tid: Pid) -> io::Result<Option<ThreadStatus>> {
        let what = format_args!("/proc/{}/task/{tid}/status", self.pid);
        let Some(task) = unless_gone(self.dir.task_from_tid(tid.get() as i32), what)? else {
            return Ok(None);
        };
        Ok(unless_gone(task.status(), what)?.map(|status| thread_status(&status, self.pid)))
    }

    /// Its `/proc/PID/stat`, read by plain reads ([`read_text`]).
    pub(crate) fn stat(&self) -> procfs::ProcResult<procfs::process::Stat> {
        self.dir
            .read::<_, StatFile>("stat")
            .map(|StatFile(stat)| stat)
    }

    /// Its `/proc/PID` directory, opened once (for the other modules of
    /// this crate).
    pub(crate) fn dir(&self) -> &Process {
        &self.dir
    }

    /// Where thread `tid` is (`/proc/PID/task/TID/syscall`; reading it needs
    /// the right to ptrace the process).
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn thread_syscall(&self, tid: Pid) -> io::Result<Option<Syscall>> {
        let what = format_args!("/proc/{}/task/{tid}/syscall", self.pid);
        let Some(task) = unless_gone(self.dir.task_from_tid(tid.get() as i32), what)? else {
            return Ok(None);
        };
        Ok(
            unless_gone(task.syscall(), what)?.map(|syscall| match syscall {
                procfs::process::Syscall::Blocked { syscall_number, .. } if syscall_number < 0 => {
                    Syscall::User
                }
                procfs::process::Syscall::Blocked { syscall_number, .. } => {
                    Syscall::In(syscall_number)
                }
                _ => Syscall::Running,
            }),
        )
    }

    /// The ids of its threads (`/proc/PID/task`), the main thread's
    /// included, in the order `/proc` lists them.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read; a process that is gone has none.
    pub fn threads(&self) -> io::Result<Vec<Pid>> {
        let what = format_args!("/proc/{}/task", self.pid);
        let Some(tasks) = unless_gone(self.dir.tasks(), what)? else {
            return Ok(Vec::new());
        };
        Ok(tasks
            .filter_map(|task| task.ok())
            .filter_map(|task| u32::try_from(task.tid).ok().and_then(Pid::new))
            .collect())
    }

    /// The children of every thread of it (`/proc/PID/task/TID/children`),
    /// in no particular order; `Ok(None)` when the kernel has no such files
    /// (built without `CONFIG_PROC_CHILDREN`). A process that is gone has
    /// none.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn children(&self) -> io::Result<Option<Vec<Pid>>> {
        let what = format_args!("/proc/{}/task", self.pid);
        let Some(tasks) = unless_gone(self.dir.tasks(), what)? else {
            return Ok(Some(Vec::new()));
        };
        let mut children = Vec::new();
        let mut read_one = false;
        for task in tasks.filter_map(|task| task.ok()) {
            match task.children() {
                Ok(pids) => {
                    read_one = true;
                    children.extend(pids.into_iter().filter_map(Pid::new));
                }
                // A thread that exited meanwhile, or no such file at all.
                Err(err) if crate::error::is_gone(&err) => {}
                Err(err) => return Err(crate::error::to_io(err, what)),
            }
        }
        // Not one thread's file could be read, yet the process is there:
        // the kernel has none.
        if !read_one && self.identity()?.is_some() {
            return Ok(None);
        }
        Ok(Some(children))
    }

    /// Thread `tid`'s state (`/proc/PID/task/TID/stat`): whether it is on a
    /// CPU ([`Running`](ProcessState::Running)), asleep, stopped...; `None`
    /// once it has exited.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn thread_state(&self, tid: Pid) -> io::Result<Option<ProcessState>> {
        let what = format_args!("/proc/{}/task/{tid}/stat", self.pid);
        let Some(task) = unless_gone(self.dir.task_from_tid(tid.get() as i32), what)? else {
            return Ok(None);
        };
        Ok(unless_gone(task.stat(), what)?.map(|stat| ProcessState::from_code(stat.state)))
    }

    /// [`children`](Proc::children) of a process that has `threads`
    /// threads: one file read for a process of one thread.
    pub(crate) fn children_of(&self, threads: u32) -> io::Result<Option<Vec<Pid>>> {
        if threads == 1 {
            let pid = self.pid;
            if let Ok(PidList(pids)) = self.dir.read(format!("task/{pid}/children")) {
                return Ok(Some(pids));
            }
        }
        // Threads, or the file is missing: each thread's, or none.
        self.children()
    }

    /// Thread `tid`'s name (`/proc/PID/task/TID/comm`), if it can be read.
    pub fn thread_name(&self, tid: u64) -> Option<String> {
        let task = self.dir.task_from_tid(i32::try_from(tid).ok()?).ok()?;
        let mut name: String = task.read::<_, Comm>("comm").ok()?.0;
        if name.ends_with('\n') {
            name.pop();
        }
        Some(name)
    }

    /// Its memory map (`/proc/PID/maps`), in address order.
    ///
    /// # Errors
    ///
    /// When it cannot be read: [`NotFound`](io::ErrorKind::NotFound) for a
    /// process that is gone, [`PermissionDenied`](io::ErrorKind::PermissionDenied)
    /// without the right to ptrace it.
    pub fn maps(&self) -> io::Result<Vec<Mapping>> {
        let pid = self.pid;
        let via = self.memory_thread()?;
        let maps = if via == pid {
            unless_gone(self.dir.maps(), format_args!("/proc/{pid}/maps"))?
        } else {
            // A zombie leader's own map is empty: a live thread's is the
            // process's.
            let what = format_args!("/proc/{pid}/task/{via}/maps");
            let task =
                procfs::process::Process::new_with_root(format!("/proc/{pid}/task/{via}").into());
            match unless_gone(task, what)? {
                Some(task) => unless_gone(task.maps(), what)?,
                None => None,
            }
        }
        .ok_or_else(|| no_such_process(pid))?;
        Ok(maps.into_iter().map(Mapping::from).collect())
    }

    /// The thread through which its memory and memory map are read: the
    /// main thread, or, when that has exited while others run on (a
    /// zombie leader, whose own map is empty and whose memory cannot be
    /// read by its pid), a live thread.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn memory_thread(&self) -> io::Result<Pid> {
        let pid = self.pid;
        let Some(stat) = unless_gone(self.stat(), format_args!("/proc/{pid}/stat"))? else {
            return Ok(pid);
        };
        if !ProcessState::from_code(stat.state).is_gone() || stat.num_threads <= 1 {
            return Ok(pid);
        }
        Ok(self.live_thread()?.map_or(pid, |(tid, _)| tid))
    }

    /// The value of `key` in its auxiliary vector (`/proc/PID/auxv`), for
    /// instance `AT_SYSINFO_EHDR` (33), the vDSO's address.
    ///
    /// # Errors
    ///
    /// When it cannot be read.
    pub fn auxv(&self, key: u64) -> io::Result<Option<u64>> {
        let pid = self.pid;
        let auxv = unless_gone(self.dir.auxv(), format_args!("/proc/{pid}/auxv"))?;
        Ok(auxv.and_then(|auxv| auxv.get(&key).copied()))
    }

    /// The program it runs (`/proc/PID/exe`).
    ///
    /// # Errors
    ///
    /// When the link cannot be read (a kernel thread has none; another
    /// user's process needs the right to ptrace it).
    pub fn exe(&self) -> io::Result<PathBuf> {
        let pid = self.pid;
        unless_gone(self.dir.exe(), format_args!("/proc/{pid}/exe"))?
            .ok_or_else(|| no_such_process(pid))
    }

    /// Opens for reading the regular file at `path` as this process names
    /// it: a relative path under its working directory, reached through its
    /// `/proc/PID/cwd` (which follows the process's `chdir`s, not ours); an
    /// absolute path as it is. What a frame's `co_filename` names is the
    /// process's to choose, so nothing but a plain file is read:
    ///
    /// - The path is opened first with `O_PATH`, which does nothing to the
    ///   file (a FIFO does not wait for a writer, a device does not act),
    ///   and that file is checked: a regular file, not on a kernel file
    ///   system (`/proc`, `/sys` and the like, by the file system's magic
    ///   number, wherever mounted) nor under `/proc`, `/sys` or `/dev` once
    ///   every link is resolved (`devtmpfs` has `tmpfs`'s magic).
    /// - Only then is that same file opened for reading, through
    ///   `/proc/self/fd/N` (`O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC`),
    ///   and checked to be the same (device and inode): a symlink swapped
    ///   between the check and the open cannot lead elsewhere.
    ///
    /// The working directory is taken once, relative to the `/proc`
    /// directory opened, so a process that reused the pid cannot lend its
    /// own.
    ///
    /// # Errors
    ///
    /// When the process is gone ([`NotFound`](io::ErrorKind::NotFound)),
    /// its working directory cannot be read (another user's process), the
    /// file cannot be opened, or it is refused
    /// ([`InvalidInput`](io::ErrorKind::InvalidInput): not a regular file,
    /// or a kernel's).
    pub fn open_in_cwd(&self, path: &Path) -> io::Result<File> {
        let pid = self.pid;
        let cwd = self
            .dir
            .open_relative_flags("cwd", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC)
            .map_err(|err| to_io(err, format_args!("/proc/{pid}/cwd")))?;
        let refused = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {why}", path.display()),
            )
        };
        let found = rustix::fs::openat(&cwd, path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
        let stat = rustix::fs::fstat(&found)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(refused("not a regular file"));
        }
        let magic = rustix::fs::fstatfs(&found)?.f_type;
        let link = format!("/proc/self/fd/{}", found.as_raw_fd());
        let resolved = std::fs::read_link(&link)?;
        if is_kernel_file_system(magic) || is_kernel_path(&resolved) {
            return Err(refused(
                "a kernel's file (/proc, /sys, /dev), not a source file",
            ));
        }
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let file = File::from(rustix::fs::open(&link, flags, Mode::empty())?);
        let opened = rustix::fs::fstat(&file)?;
        let same = (opened.st_dev, opened.st_ino) == (stat.st_dev, stat.st_ino);
        if !same || FileType::from_raw_mode(opened.st_mode) != FileType::RegularFile {
            return Err(refused("changed while it was opened"));
        }
        Ok(file)
    }

    /// Its file-system user id (the fourth `Uid:` field of
    /// `/proc/PID/status`): whose files it opens as; `None` once gone.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn fs_uid(&self) -> io::Result<Option<u32>> {
        let pid = self.pid;
        let status = unless_gone(self.dir.status(), format_args!("/proc/{pid}/status"))?;
        Ok(status.map(|status| status.fuid))
    }

    /// Its environment (`/proc/PID/environ`) as `NAME=value` entries, and its
    /// command line (`/proc/PID/cmdline`), as raw bytes; empty for what
    /// cannot be read (a kernel thread, a zombie, another user's process).
    pub fn environ_and_cmdline(&self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let read = |name: &str| {
            let bytes = std::fs::read(format!("/proc/{}/{name}", self.pid)).unwrap_or_default();
            bytes
                .split(|&b| b == 0)
                .filter(|entry| !entry.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        };
        (read("environ"), read("cmdline"))
    }

    /// Its effective capabilities (`CapEff` in `/proc/PID/status`), as a
    /// bit set: bit 19 is `CAP_SYS_PTRACE`.
    ///
    /// # Errors
    ///
    /// When `/proc` cannot be read.
    pub fn capabilities(&self) -> io::Result<Option<u64>> {
        let pid = self.pid;
        let status = unless_gone(self.dir.status(), format_args!("/proc/{pid}/status"))?;
        Ok(status.map(|status| status.capeff))
    }
}

/// The magic numbers (`statfs`'s `f_type`, from Linux's `magic.h`) of the
/// file systems whose files are the kernel's, not anyone's source: reading
/// one may tell the reader's secrets (`/proc/self/environ`) or act.
const KERNEL_FILE_SYSTEMS: [u32; 19] = [
    libc::PROC_SUPER_MAGIC as u32,
    libc::SYSFS_MAGIC as u32,
    libc::DEBUGFS_MAGIC as u32,
    libc::TRACEFS_MAGIC as u32,
    libc::SECURITYFS_MAGIC as u32,
    libc::CGROUP_SUPER_MAGIC as u32,
    libc::CGROUP2_SUPER_MAGIC as u32,
    libc::BPF_FS_MAGIC as u32,
    libc::SELINUX_MAGIC as u32,
    libc::SMACK_MAGIC as u32,
    libc::DEVPTS_SUPER_MAGIC as u32,
    libc::RDTGROUP_SUPER_MAGIC as u32,
    libc::NSFS_MAGIC as u32,
    libc::USBDEVICE_SUPER_MAGIC as u32,
    libc::OPENPROM_SUPER_MAGIC as u32,
    libc::XENFS_SUPER_MAGIC as u32,
    0x6265_6570, // CONFIGFS_MAGIC
    0xde5e_81e4, // EFIVARFS_MAGIC
    0x6165_676c, // PSTOREFS_MAGIC
];

/// Whether `file` lies on one of the kernel's file systems (`/proc`,
/// `/sys`, cgroups, debugfs and the like, by the file system's magic
/// number, wherever mounted): what it holds is the kernel's, not a file's.
///
/// # Errors
///
/// When the file system cannot be asked (`fstatfs`).
pub fn on_kernel_file_system(file: &impl std::os::fd::AsFd) -> io::Result<bool> {
    Ok(is_kernel_file_system(rustix::fs::fstatfs(file)?.f_type))
}

/// Whether a file system of type `magic` is one of the kernel's
/// ([`KERNEL_FILE_SYSTEMS`]).
fn is_kernel_file_system(magic: FsWord) -> bool {
    // Magic numbers are 32 bits; `f_type`'s width depends on the platform.
    KERNEL_FILE_SYSTEMS.contains(&(magic as u32))
}

/// Whether `path` (every link resolved) is under `/proc`, `/sys` or `/dev`.
fn is_kernel_path(path: &Path) -> bool {
    ["/proc", "/sys", "/dev"]
        .iter()
        .any(|top| path.starts_with(top))
}

/// The process a `Tgid` names; `fallback` if it is not a pid.
fn tgid(tgid: i32, fallback: Pid) -> Pid {
    u32::try_from(tgid)
        .ok()
        .and_then(Pid::new)
        .unwrap_or(fallback)
}

fn thread_status(status: &procfs::process::Status, pid: Pid) -> ThreadStatus {
    ThreadStatus {
        state: ProcessState::from_code(status.state.chars().next().unwrap_or('?')),
        process: tgid(status.tgid, pid),
        threads: status.threads,
        tracer: u32::try_from(status.tracerpid).ok().and_then(Pid::new),
        seccomp: status.seccomp.unwrap_or(0),
        pending: status.sigpnd,
    }
}

/// The ids of `/proc/PID/status` that [`ProcessInfo`] holds: `Tgid`, and
/// the first two of `Uid` (real, effective). Only these lines are looked
/// at: the full parse of the file's fifty-odd lines costs several times
/// the kernel's writing them, and `PS` reads one per process.
struct StatusIds {
    tgid: i32,
    ruid: u32,
    euid: u32,
}

impl procfs::FromRead for StatusIds {
    fn from_read<R: io::Read>(read: R) -> procfs::ProcResult<Self> {
        let text = read_text(read)?;
        let mut tgid = None;
        for line in text.lines() {
            if let Some(value) = line.strip_prefix("Tgid:") {
                tgid = value.trim().parse().ok();
            } else if let Some(value) = line.strip_prefix("Uid:") {
                // Uid comes after Tgid.
                let mut uids = value.split_whitespace().map(str::parse);
                if let (Some(tgid), Some(Ok(ruid)), Some(Ok(euid))) =
                    (tgid, uids.next(), uids.next())
                {
                    return Ok(StatusIds { tgid, ruid, euid });
                }
                break;
            }
        }
        Err(procfs::ProcError::Incomplete(None))
    }
}

/// All of `read`, a `/proc` file, as text, by plain reads: a `File`'s
/// `read_to_string` first asks the file's size (`statx`, `lseek`), which a
/// `/proc` file does not know, then reads 32 bytes to probe: two reads
/// here (the text, then its end) for a file under 4 KiB.
fn read_text(mut read: impl io::Read) -> io::Result<String> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match read.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    String::from_utf8(bytes).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

/// A `stat` file, read by [`read_text`].
struct StatFile(procfs::process::Stat);

impl procfs::FromRead for StatFile {
    fn from_read<R: io::Read>(read: R) -> procfs::ProcResult<Self> {
        let text = read_text(read)?;
        <procfs::process::Stat as procfs::FromRead>::from_read(text.as_bytes()).map(StatFile)
    }
}

/// A `children` file: pids separated by spaces.
struct PidList(Vec<Pid>);

impl procfs::FromRead for PidList {
    fn from_read<R: io::Read>(read: R) -> procfs::ProcResult<Self> {
        let text = read_text(read)?;
        text.split_whitespace()
            .map(|pid| pid.parse().ok().and_then(Pid::new))
            .collect::<Option<Vec<Pid>>>()
            .map(PidList)
            .ok_or(procfs::ProcError::Incomplete(None))
    }
}

/// The whole of a `comm` file.
struct Comm(String);

impl procfs::FromRead for Comm {
    fn from_read<R: io::Read>(read: R) -> procfs::ProcResult<Self> {
        let text = read_text(read)?;
        Ok(Comm(text))
    }
}

/// Linux's process table, read from `/proc`: the [`Processes`] the
/// controller asks about clients and targets.
///
/// # Examples
///
/// ```
/// use heli_core::{Pid, Processes};
/// use heli_proc::ProcFs;
///
/// let me = ProcFs.identity(Pid::this())?.unwrap();
/// assert!(ProcFs.is_running(me));
/// assert!(ProcFs.is_self_or_descendant(Pid::this(), me)?);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcFs;

impl Processes for ProcFs {
    fn process(&self, pid: Pid) -> io::Result<Option<ProcessInfo>> {
        match Proc::open(pid)? {
            Some(proc) => proc.info(),
            None => Ok(None),
        }
    }

    /// One read of `/proc/PID/stat`.
    fn identity(&self, pid: Pid) -> io::Result<Option<ProcessId>> {
        match Proc::open(pid)? {
            Some(proc) => proc.identity(),
            None => Ok(None),
        }
    }

    fn is_frozen(&self, pid: Pid) -> io::Result<bool> {
        crate::is_frozen(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_environment_command_line_and_file_system_user() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("HELI_PROC_TEST", "a value")
            .spawn()
            .unwrap();
        let proc = Proc::open_existing(Pid::new(child.id()).unwrap()).unwrap();
        // Until the child's execve is done, it shows its parent's.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (environ, cmdline) = loop {
            let (environ, cmdline) = proc.environ_and_cmdline();
            // The new environment is set last in execve.
            if environ.iter().any(|var| var == b"HELI_PROC_TEST=a value")
                || std::time::Instant::now() > deadline
            {
                break (environ, cmdline);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(environ.iter().any(|var| var == b"HELI_PROC_TEST=a value"));
        assert_eq!(cmdline, [b"sleep".to_vec(), b"30".to_vec()]);
        let me = nix::unistd::geteuid().as_raw();
        assert_eq!(proc.fs_uid().unwrap(), Some(me));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(proc.fs_uid().unwrap(), None);
        assert_eq!(proc.environ_and_cmdline(), (vec![], vec![]));
    }

    #[test]
    fn a_zombie_is_gone_but_still_has_facts() {
        // `cat` runs until its input closes.
        let mut child = std::process::Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = Pid::new(child.id()).unwrap();
        let id = ProcFs.identity(pid).unwrap().unwrap();
        assert!(ProcFs.is_running(id));
        assert_eq!(Proc::open_id(id).unwrap().unwrap().pid(), pid);
        let later = ProcessId {
            start_time: id.start_time + 1,
            ..id
        };
        assert!(Proc::open_id(later).unwrap().is_none());
        drop(child.stdin.take());
        // Exited, not yet reaped: a zombie, waitable still.
        let raw = nix::unistd::Pid::from_raw(child.id() as i32);
        let flags = nix::sys::wait::WaitPidFlag::WEXITED | nix::sys::wait::WaitPidFlag::WNOWAIT;
        nix::sys::wait::waitid(nix::sys::wait::Id::Pid(raw), flags).unwrap();
        assert!(!ProcFs.is_running(id));
        assert_eq!(ProcFs.identity(pid).unwrap(), None);
        assert!(Proc::open_id(id).unwrap().is_none());
        let info = ProcFs.process(pid).unwrap().unwrap();
        assert_eq!(info.state, ProcessState::Zombie);
        assert_eq!((info.id, info.parent), (id, Some(Pid::this())));
        child.wait().unwrap();
        assert_eq!(ProcFs.process(pid).unwrap(), None);
        assert!(Proc::open(pid).unwrap().is_none());
        assert_eq!(
            Proc::open_existing(pid).unwrap_err().to_string(),
            format!("no process with PID {pid}")
        );
    }

    #[test]
    fn knows_this_process_and_its_threads() {
        let me = Proc::open_existing(Pid::this()).unwrap();
        let info = me.info().unwrap().unwrap();
        assert_eq!(info.id, me.identity().unwrap().unwrap());
        assert_eq!(info.parent, Pid::new(std::os::unix::process::parent_id()));
        assert_eq!(info.uid, nix::unistd::getuid().as_raw());
        assert_eq!(info.euid, nix::unistd::geteuid().as_raw());
        assert!(!info.kernel_thread);
        let status = me.status().unwrap().unwrap();
        assert_eq!((status.process, status.tracer), (Pid::this(), None));
        assert_eq!(status.threads as usize, me.threads().unwrap().len());
        // A thread of ours: its own pid, its process ours.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw() as u32).unwrap();
            done.recv().ok();
        });
        let tid = Pid::new(rx.recv().unwrap()).unwrap();
        let thread_info = ProcFs.process(tid).unwrap().unwrap();
        assert_eq!(thread_info.process, Pid::this());
        assert_ne!(thread_info.id.pid, Pid::this());
        assert!(me.threads().unwrap().contains(&tid));
        assert_eq!(me.thread_status(tid).unwrap().unwrap().process, Pid::this());
        assert!(matches!(
            me.thread_state(tid).unwrap(),
            Some(ProcessState::Sleeping | ProcessState::Running)
        ));
        // This thread reads its own state while it runs.
        let this_thread = Pid::new(nix::unistd::gettid().as_raw() as u32).unwrap();
        assert_eq!(
            me.thread_state(this_thread).unwrap(),
            Some(ProcessState::Running)
        );
        assert!(matches!(
            me.thread_syscall(tid).unwrap(),
            Some(Syscall::In(_) | Syscall::Running)
        ));
        drop(done_tx);
        thread.join().unwrap();
        // Kernel threads are told apart (kthreadd is PID 2 outside containers).
        if let Some(kthreadd) = ProcFs.process(Pid::new(2).unwrap()).unwrap() {
            if kthreadd.parent.is_none() {
                assert!(kthreadd.kernel_thread);
            }
        }
        assert!(me.capabilities().unwrap().is_some());
    }

    #[test]
    fn a_file_is_opened_in_the_process_s_working_directory() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pkg")).unwrap();
        std::fs::write(dir.path().join("pkg/app.py"), "print('here')\n").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let proc = Proc::open_existing(Pid::new(child.id()).unwrap()).unwrap();
        let mut text = String::new();
        let relative = proc.open_in_cwd(Path::new("pkg/app.py"));
        relative.unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "print('here')\n");
        // Not in ours.
        let me = Proc::open_existing(Pid::this()).unwrap();
        let err = me.open_in_cwd(Path::new("pkg/app.py")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        // An absolute path is itself.
        let absolute = dir.path().join("pkg/app.py");
        assert!(me.open_in_cwd(&absolute).is_ok());
        // A directory or a device is refused, unopened.
        for path in [Path::new("pkg"), Path::new("/dev/zero")] {
            let err = proc.open_in_cwd(path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().ends_with(": not a regular file"), "{err}");
        }
        // A symlink is followed to a regular file.
        std::os::unix::fs::symlink(dir.path().join("pkg/app.py"), dir.path().join("link.py"))
            .unwrap();
        assert!(proc.open_in_cwd(Path::new("link.py")).is_ok());
        // Gone: nothing to open through.
        child.kill().unwrap();
        child.wait().unwrap();
        let err = proc.open_in_cwd(Path::new("pkg/app.py")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    /// `open_in_cwd(path)` in this process, on a thread: panics if it
    /// blocks.
    fn open_here(path: &Path) -> io::Result<File> {
        let (done, opened) = std::sync::mpsc::channel();
        let path = path.to_owned();
        std::thread::spawn(move || {
            let me = Proc::open_existing(Pid::this()).unwrap();
            let _ = done.send(me.open_in_cwd(&path));
        });
        opened
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a source file blocked")
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("app.py");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let link = dir.path().join("link.py");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        for path in [&fifo, &link] {
            let err = open_here(path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        }
    }

    /// Opens of `fifo` (`IN_OPEN` events) from now on, if the kernel
    /// reports none for an `O_PATH` open (Linux 6.x; older ones report it
    /// as an open like any other, so cannot tell what this test asks).
    fn fifo_opens(fifo: &Path) -> Option<impl FnMut() -> usize> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).unwrap();
        inotify.add_watch(fifo, AddWatchFlags::IN_OPEN).unwrap();
        let opens = move || match inotify.read_events() {
            Ok(events) => events.len(),
            Err(nix::errno::Errno::EAGAIN) => 0,
            Err(err) => panic!("inotify: {err}"),
        };
        drop(rustix::fs::open(fifo, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).unwrap());
        if opens() != 0 {
            eprintln!("this kernel reports O_PATH opens: the FIFO's opens are not counted");
            return None;
        }
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
        drop(rustix::fs::open(fifo, flags, Mode::empty()).unwrap());
        assert_eq!(opens(), 1, "inotify did not see the FIFO opened");
        Some(opens)
    }

    #[test]
    fn a_symlink_swapped_to_a_fifo_never_opens_it() {
        // A thread swaps `app.py` between a symlink to a regular file and
        // one to a FIFO; every open gives the regular file or a refusal,
        // never blocks, and never opens the FIFO (inotify would say so).
        let dir = tempfile::tempdir().unwrap();
        let regular = dir.path().join("regular.py");
        std::fs::write(&regular, "x = 1\n").unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut opens = fifo_opens(&fifo);
        let path = dir.path().join("app.py");
        std::os::unix::fs::symlink(&regular, &path).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, path, fifo) = (stop.clone(), path.clone(), fifo.clone());
            let next = path.with_extension("next");
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for to in [&fifo, &regular] {
                        std::os::unix::fs::symlink(to, &next).unwrap();
                        std::fs::rename(&next, &path).unwrap();
                    }
                }
            })
        };
        // On one thread, bounded: an open that blocked would hang it.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let me = Proc::open_existing(Pid::this()).unwrap();
            let (mut opened, mut refused, mut fifo_opened) = (0, 0, 0);
            for _ in 0..2000 {
                match me.open_in_cwd(&path) {
                    Ok(mut file) => {
                        let mut text = String::new();
                        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
                        assert_eq!(text, "x = 1\n");
                        opened += 1;
                    }
                    Err(err) => {
                        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
                        refused += 1;
                    }
                }
                fifo_opened += opens.as_mut().map_or(0, |opens| opens());
            }
            let _ = done.send((opened, refused, fifo_opened));
        });
        let (opened, refused, fifo_opened) = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("opening a swapped symlink blocked");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(fifo_opened, 0, "the FIFO was opened {fifo_opened} times");
        assert!(
            opened > 0 && refused > 0,
            "{opened} opened, {refused} refused"
        );
    }

    #[test]
    fn the_kernel_s_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // Regular files all, of /proc and /sys; through a symlink too
        // (named as a source file); `/proc/self/environ` would be the
        // reader's own environment.
        let environ = dir.path().join("environ.py");
        std::os::unix::fs::symlink("/proc/self/environ", &environ).unwrap();
        let proc_root = dir.path().join("proc");
        std::os::unix::fs::symlink("/proc", &proc_root).unwrap();
        for path in [
            Path::new("/proc/self/environ"),
            Path::new("/proc/self/cmdline"),
            &environ,
            &proc_root.join("self/status"),
            Path::new("/sys/kernel/mm/transparent_hugepage/enabled"),
            Path::new("/sys/power/state"),
        ] {
            if !path.exists() {
                continue;
            }
            let err = open_here(path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().contains("a kernel's file"), "{err}");
        }
        assert!(is_kernel_file_system(libc::PROC_SUPER_MAGIC as FsWord));
        assert!(is_kernel_file_system(libc::SYSFS_MAGIC as FsWord));
        assert!(!is_kernel_file_system(libc::EXT4_SUPER_MAGIC as FsWord));
        assert!(!is_kernel_file_system(libc::TMPFS_MAGIC as FsWord));
        assert!(!is_kernel_file_system(
            libc::OVERLAYFS_SUPER_MAGIC as FsWord
        ));
        for path in ["/dev/shm/app.py", "/proc", "/sys/x", "/dev"] {
            assert!(is_kernel_path(Path::new(path)), "{path}");
        }
        for path in [
            "/srv/app.py",
            "/device/app.py",
            "/process.py",
            "/tmp/dev/x.py",
        ] {
            assert!(!is_kernel_path(Path::new(path)), "{path}");
        }
    }
}
