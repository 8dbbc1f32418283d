//! `sys.remote_exec(pid, path)` natively: the write sequence of PEP 768,
//! and a grant built on it (`prctl` run by the target, its result reported
//! back over a Unix socket whose peer is checked).

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use heli_core::Pid;
use log::{debug, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::error::{Pep768Error, Pep768ErrorKind};
use super::memory::RemoteMemory;
use super::process::PyProcess;

/// `_PY_EVAL_PLEASE_STOP_BIT`: makes the thread handle pending events,
/// remote execution among them, at its next check.
const PLEASE_STOP_BIT: u64 = 1 << 5;
/// At most this many threads are walked to find one to run a script.
const MAX_THREADS: usize = 1 << 16;

/// A script a target was asked to run, by [`PyProcess::remote_exec`] or
/// [`remote_exec`]: it runs when the chosen thread next handles pending
/// events in the eval loop (within a millisecond for a thread running
/// Python code; not while it is blocked in C code, a long `time.sleep` for
/// instance).
///
/// CPython reads the script when it runs it and never deletes it: keep the
/// file until [`wait_started`](Self::wait_started) returned, or until the
/// script reported back.
#[derive(Debug)]
pub struct RemoteExec {
    memory: RemoteMemory,
    thread: u64,
    /// Where the thread's `debugger_pending_call` and
    /// `debugger_script_path` are.
    pending: u64,
    path_at: u64,
    script: PathBuf,
}

/// Asks process `pid` to run the Python script `script`:
/// [`PyProcess::open`] then [`PyProcess::remote_exec`].
///
/// # Errors
///
/// As those two.
pub fn remote_exec(pid: Pid, script: &Path) -> Result<RemoteExec, Pep768Error> {
    PyProcess::open(pid)?.remote_exec(script)
}

impl PyProcess {
    /// Asks the target to run the Python script at `script`, as
    /// `sys.remote_exec` does: writes the script's absolute path and the
    /// pending flag into the main thread's `_PyRemoteDebuggerSupport`, and
    /// sets bit 5 of its eval breaker. Returns at once; the script runs
    /// later (see [`RemoteExec`]).
    ///
    /// The thread is the interpreter's main thread; where there is none
    /// (an embedding host), the thread whose id is the process id, else
    /// the oldest one.
    ///
    /// A relative `script` is made absolute from this process's working
    /// directory (the target's may differ). The target opens it as its own
    /// user: it must be able to read it. A request still pending, from
    /// heli or a debugger, is replaced, as CPython does.
    ///
    /// # Race condition
    ///
    /// The eval breaker is read, ORed and written back, not atomically (no
    /// atomic operation spans two processes; CPython does the same): a bit
    /// the target itself sets in those microseconds may be lost, and a
    /// lost bit is set again by whatever needs it at its next occasion
    /// (a signal, the GC).
    ///
    /// # Errors
    ///
    /// - [`BadPath`](Pep768ErrorKind::BadPath): the path has a NUL byte, is
    ///   longer than the target accepts (511 bytes on 3.14), or does not
    ///   exist as the target sees the file system;
    /// - [`RemoteDebugDisabled`](Pep768ErrorKind::RemoteDebugDisabled): the
    ///   message says which switch did it, when it can tell;
    /// - [`NoThread`](Pep768ErrorKind::NoThread): the interpreter has no
    ///   thread;
    /// - those of reading and writing its memory.
    pub fn remote_exec(&self, script: &Path) -> Result<RemoteExec, Pep768Error> {
        let pid = self.pid();
        let d = self.offsets().debugger;
        let script = std::path::absolute(script).map_err(|err| {
            Pep768Error::new(
                Pep768ErrorKind::BadPath,
                format!("cannot make {} absolute: {err}", script.display()),
            )
        })?;
        let bytes = script.as_os_str().as_bytes();
        if bytes.contains(&0) {
            return Err(Pep768Error::new(
                Pep768ErrorKind::BadPath,
                format!("the script's path {} holds a NUL byte", script.display()),
            ));
        }
        if bytes.len() as u64 >= d.script_path_size {
            return Err(Pep768Error::new(
                Pep768ErrorKind::BadPath,
                format!(
                    "the script's path is {} bytes long; CPython {} accepts at most {}",
                    bytes.len(),
                    self.version(),
                    d.script_path_size - 1
                ),
            ));
        }
        let mut rooted = PathBuf::from(format!("/proc/{pid}/root"));
        if rooted.exists() {
            rooted.push(script.strip_prefix("/").unwrap_or(&script));
            if !rooted.exists() {
                return Err(Pep768Error::new(
                    Pep768ErrorKind::BadPath,
                    format!(
                        "PID {pid} sees no file {} (in its mount namespace)",
                        script.display()
                    ),
                ));
            }
        }
        let interp = self.main_interpreter()?;
        let enabled = self.memory().read_i32(interp + d.enabled)?;
        if enabled != 1 {
            return Err(disabled(pid.get(), enabled));
        }
        let (tstate, thread) = self.script_thread(interp)?;
        let memory = self.memory();
        let support = tstate + d.support;
        let (pending, path_at) = (support + d.pending_call, support + d.script_path);
        if memory.read_i32(pending)? != 0 {
            warn!("PID {pid} still had a script to run (from a debugger?): replacing it");
        }
        let mut path = bytes.to_vec();
        path.push(0);
        memory.write(path_at, &path)?;
        memory.write(pending, &1i32.to_le_bytes())?;
        let breaker_at = tstate + d.eval_breaker;
        let breaker = memory.read_u64(breaker_at)?;
        memory.write(breaker_at, &(breaker | PLEASE_STOP_BIT).to_le_bytes())?;
        debug!(
            "asked thread {thread} of PID {pid} to run {}",
            script.display()
        );
        Ok(RemoteExec {
            memory: memory.clone(),
            thread,
            pending,
            path_at,
            script,
        })
    }

    /// The thread state to run a script, and its native thread id.
    fn script_thread(&self, interp: u64) -> Result<(u64, u64), Pep768Error> {
        let (i, t) = (self.offsets().interp, self.offsets().tstate);
        let memory = self.memory();
        let main = memory.read_u64(interp + i.threads_main)?;
        if main != 0 {
            return Ok((main, memory.read_u64(main + t.native_thread_id)?));
        }
        // An embedding host: no thread runs __main__.
        let mut tstate = memory.read_u64(interp + i.threads_head)?;
        let mut oldest = None;
        for _ in 0..MAX_THREADS {
            if tstate == 0 {
                break;
            }
            let tid = memory.read_u64(tstate + t.native_thread_id)?;
            if tid == u64::from(self.pid()) {
                return Ok((tstate, tid));
            }
            oldest = Some((tstate, tid));
            tstate = memory.read_u64(tstate + t.next)?;
        }
        match oldest {
            Some((tstate, tid)) => {
                debug!(
                    "PID {}: no main thread, and the process's first thread runs no Python: \
                     using thread {tid}",
                    self.pid()
                );
                Ok((tstate, tid))
            }
            None => Err(Pep768Error::new(
                Pep768ErrorKind::NoThread,
                format!(
                    "PID {}: its interpreter has no thread to run a script",
                    self.pid()
                ),
            )),
        }
    }
}

/// The error for `remote_debugging_enabled` being `value`, saying which
/// switch turned it off when the target's environment or command line
/// tells.
fn disabled(pid: u32, value: i32) -> Pep768Error {
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let by_env = environ
        .split(|&b| b == 0)
        .any(|var| var.starts_with(b"PYTHON_DISABLE_REMOTE_DEBUG="));
    let by_option = cmdline
        .split(|&b| b == 0)
        .any(|arg| arg.ends_with(b"disable-remote-debug"));
    let why = match (by_env, by_option) {
        (true, _) => "its environment sets PYTHON_DISABLE_REMOTE_DEBUG".to_owned(),
        (_, true) => "it was started with -X disable-remote-debug".to_owned(),
        _ => "by PYTHON_DISABLE_REMOTE_DEBUG in its environment (any value, even empty; ignored \
              under -E and -I), -X disable-remote-debug, or a CPython built \
              --without-remote-debug"
            .to_owned(),
    };
    Pep768Error::new(
        Pep768ErrorKind::RemoteDebugDisabled,
        format!(
            "PID {pid} has remote debugging disabled (remote_debugging_enabled = {value}): \
             {why}. Start it without that switch to let it run scripts; stack dumps work \
             regardless"
        ),
    )
}

impl RemoteExec {
    /// The target's process id.
    pub fn pid(&self) -> Pid {
        Pid::new(self.memory.pid()).expect("opened by pid")
    }

    /// The native id of the thread that will run the script.
    pub fn thread(&self) -> u64 {
        self.thread
    }

    /// The script's absolute path, as written into the target.
    pub fn script(&self) -> &Path {
        &self.script
    }

    /// Whether the script has yet to start (the thread's
    /// `debugger_pending_call` is still set).
    ///
    /// # Errors
    ///
    /// When the target's memory cannot be read (it exited, for instance).
    pub fn is_pending(&self) -> Result<bool, Pep768Error> {
        Ok(self.memory.read_i32(self.pending)? != 0)
    }

    /// Waits until the target began the script (it clears the pending flag
    /// as it starts it), polling; returns how long that took.
    ///
    /// # Errors
    ///
    /// [`Timeout`](Pep768ErrorKind::Timeout) when it has not begun within
    /// `timeout` (the request stays pending: [`cancel`](Self::cancel) it);
    /// [`NoSuchProcess`](Pep768ErrorKind::NoSuchProcess) when the target
    /// exited.
    pub fn wait_started(&self, timeout: Duration) -> Result<Duration, Pep768Error> {
        let start = Instant::now();
        let mut nap = Duration::from_micros(20);
        while self.is_pending()? {
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(not_run(self.pid().get(), timeout));
            }
            thread::sleep(nap.min(timeout - waited));
            nap = (nap * 2).min(Duration::from_millis(5));
        }
        Ok(start.elapsed())
    }

    /// Withdraws the request if the script has not begun and no other
    /// request replaced it; returns whether it did.
    ///
    /// # Race condition
    ///
    /// The target may begin the script between the check and the write:
    /// then it runs although this returned `true`.
    ///
    /// # Errors
    ///
    /// When the target's memory cannot be read or written.
    pub fn cancel(&self) -> Result<bool, Pep768Error> {
        if !self.is_pending()? {
            return Ok(false);
        }
        let mut ours = self.script.as_os_str().as_bytes().to_vec();
        ours.push(0);
        if self.memory.read_vec(self.path_at, ours.len())? != ours {
            return Ok(false);
        }
        self.memory.write(self.pending, &0i32.to_le_bytes())?;
        debug!("withdrew {} from PID {}", self.script.display(), self.pid());
        Ok(true)
    }
}

fn not_run(pid: u32, timeout: Duration) -> Pep768Error {
    Pep768Error::new(
        Pep768ErrorKind::Timeout,
        format!(
            "PID {pid} did not run the script within {:.1} s: a thread runs scripts only \
             between bytecodes, and it may be blocked in C code (a sleep, a lock, I/O); \
             ptrace injection would not need that",
            timeout.as_secs_f64()
        ),
    )
}

/// `PR_SET_PTRACER`, Yama's prctl.
const PR_SET_PTRACER: i32 = libc::PR_SET_PTRACER;

/// Has process `pid` call `prctl(PR_SET_PTRACER, client)` through a
/// remote-executed script, so that `client` (and its descendants) may
/// ptrace it under Yama `ptrace_scope=1`; succeeds only once the target
/// reported that the call returned 0. See [`remote_prctl`].
///
/// # Errors
///
/// As [`remote_prctl`]; [`CallFailed`](Pep768ErrorKind::CallFailed) with
/// `EINVAL` on a kernel without Yama.
pub fn remote_exec_prctl(pid: Pid, client: Pid, timeout: Duration) -> Result<(), Pep768Error> {
    remote_prctl(pid, PR_SET_PTRACER, u64::from(client.get()), timeout).map(drop)
}

/// Has process `pid` call `prctl(option, arg, 0, 0, 0)` from Python (with
/// `ctypes`), and returns what the call returned.
///
/// The script is written to a private directory this process creates
/// (`mkdtemp`, mode 0700, or 0711 with a world-readable script when the
/// target runs as another user), with `O_EXCL`, and deleted afterwards
/// with the directory. It reports the result over a Unix socket in that
/// directory; a report counts only from a connection whose peer
/// credentials (`SO_PEERCRED`) name the target.
///
/// The call is made by the thread that runs the script (the main thread,
/// [`RemoteExec::thread`]): a per-thread `option` affects that thread.
///
/// # Errors
///
/// - [`Timeout`](Pep768ErrorKind::Timeout): the target did not begin the
///   script within `timeout` (the request is then withdrawn);
/// - [`ScriptFailed`](Pep768ErrorKind::ScriptFailed): it began it but
///   reported nothing in time (an audit hook vetoed it, or it failed:
///   the target's stderr tells), or reported a Python exception;
/// - [`CallFailed`](Pep768ErrorKind::CallFailed): `prctl` returned -1;
///   [`Pep768Error::raw_os_error`] is its errno;
/// - those of [`PyProcess::open`] and [`PyProcess::remote_exec`].
pub fn remote_prctl(
    pid: Pid,
    option: i32,
    arg: u64,
    timeout: Duration,
) -> Result<u64, Pep768Error> {
    let start = Instant::now();
    let python = PyProcess::open(pid)?;
    let pid = pid.get();
    let other_user = target_uid(pid).is_some_and(|uid| uid != nix::unistd::geteuid().as_raw());
    let dir = PrivateDir::create(other_user)?;
    let socket_path = dir.path.join("report");
    let listener = UnixListener::bind(&socket_path)
        .and_then(|listener| {
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .map_err(|err| {
            Pep768Error::io(format!("cannot listen on {}", socket_path.display()), err)
        })?;
    let script = dir.path.join("prctl.py");
    let hex: String = socket_path
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let source = PRCTL_SCRIPT
        .replace("{option}", &option.to_string())
        .replace("{arg}", &arg.to_string())
        .replace("{socket}", &hex);
    dir.write(&script, source.as_bytes(), other_user)?;
    if other_user {
        // Connecting needs write permission on the socket.
        fs::set_permissions(&socket_path, fs::Permissions::from_mode(0o666))
            .map_err(|err| Pep768Error::io("cannot open the report socket".to_owned(), err))?;
    }
    let request = python.remote_exec(&script)?;
    let deadline = start + timeout;
    let mut started = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = (deadline - now).min(Duration::from_millis(10));
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        let millis = wait.as_millis().max(1) as u16;
        let _ = poll(&mut fds, PollTimeout::from(millis));
        match listener.accept() {
            Ok((stream, _)) => {
                if let Some(report) = read_report(pid, stream, deadline) {
                    debug!(
                        "PID {pid} ran prctl({option}, {arg}) in {:?}: {report}",
                        start.elapsed()
                    );
                    return parse_report(pid, option, arg, &report);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(Pep768Error::io("cannot accept the report".to_owned(), err)),
        }
        if !started {
            started = !request.is_pending()?;
        }
    }
    if request.cancel()? {
        return Err(not_run(pid, timeout));
    }
    let began = if started {
        "began the script"
    } else {
        "took the request (or another replaced it)"
    };
    Err(Pep768Error::new(
        Pep768ErrorKind::ScriptFailed,
        format!(
            "PID {pid} {began} but reported nothing within {:.1} s: an audit hook may have \
             vetoed it, or it failed (the target's stderr says why)",
            timeout.as_secs_f64()
        ),
    ))
}

/// The script of [`remote_prctl`]; it runs in a fresh namespace.
const PRCTL_SCRIPT: &str = r#"def _heli_prctl():
    import os, socket
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.restype = ctypes.c_int
        prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        ret = prctl({option}, {arg}, 0, 0, 0)
        report = "ret=%d errno=%d" % (ret, ctypes.get_errno() if ret == -1 else 0)
    except Exception as exc:
        report = "exception=" + repr(exc).replace("\n", " ")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(bytes.fromhex("{socket}"))
        sock.sendall(("heli-prctl pid=%d %s\n" % (os.getpid(), report)).encode())
_heli_prctl()
"#;

/// The report line on `stream`, if its peer is process `pid`.
fn read_report(pid: u32, stream: UnixStream, deadline: Instant) -> Option<String> {
    match getsockopt(&stream, PeerCredentials) {
        Ok(cred) if cred.pid() == pid as i32 => {}
        Ok(cred) => {
            warn!(
                "a report came from PID {}, not from PID {pid}: ignored",
                cred.pid()
            );
            return None;
        }
        Err(err) => {
            warn!("cannot read the peer of a report: {err}");
            return None;
        }
    }
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(wait)).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    Some(line.trim_end().to_owned())
}

/// `heli-prctl pid=N ret=R errno=E` or `heli-prctl pid=N exception=...`.
fn parse_report(pid: u32, option: i32, arg: u64, report: &str) -> Result<u64, Pep768Error> {
    let what = match option {
        PR_SET_PTRACER => format!("prctl(PR_SET_PTRACER, {arg}) in PID {pid}"),
        _ => format!("prctl({option}, {arg}) in PID {pid}"),
    };
    let body = report.strip_prefix("heli-prctl ").unwrap_or(report);
    if let Some((_, exception)) = body.split_once("exception=") {
        return Err(Pep768Error::new(
            Pep768ErrorKind::ScriptFailed,
            format!("{what}: the script raised {exception}"),
        ));
    }
    let field = |name: &str| {
        body.split_whitespace()
            .find_map(|word| word.strip_prefix(name))
            .and_then(|value| value.parse::<i64>().ok())
    };
    match (field("ret="), field("errno=")) {
        (Some(ret), _) if ret >= 0 => Ok(ret as u64),
        (Some(_), Some(errno)) => {
            let errno = errno as i32;
            let err = nix::errno::Errno::from_raw(errno);
            let meaning = match (option, err) {
                (PR_SET_PTRACER, nix::errno::Errno::EINVAL) => {
                    ": the kernel has no Yama, or no such process"
                }
                _ => "",
            };
            Err(Pep768Error::new(
                Pep768ErrorKind::CallFailed,
                format!("{what} failed with errno {errno} ({err}){meaning}"),
            )
            .with_errno(errno))
        }
        _ => Err(Pep768Error::new(
            Pep768ErrorKind::ScriptFailed,
            format!("{what}: unexpected report {report:?}"),
        )),
    }
}

/// The file-system user id of process `pid`.
fn target_uid(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(3)?.parse().ok()
}

/// A directory only this process's user may use (0700), or that others
/// may only traverse (0711); removed with what it holds when dropped.
#[derive(Debug)]
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create(other_user: bool) -> Result<PrivateDir, Pep768Error> {
        let mut base = std::env::temp_dir();
        // Room for "/heli-pep768-XXXXXX/report" in a socket address.
        if base.as_os_str().len() > 70 {
            base = PathBuf::from("/tmp");
        }
        let path = nix::unistd::mkdtemp(&base.join("heli-pep768-XXXXXX")).map_err(|err| {
            Pep768Error::io(
                format!("cannot create a private directory in {}", base.display()),
                err.into(),
            )
        })?;
        let dir = PrivateDir { path };
        if other_user {
            fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o711)).map_err(|err| {
                Pep768Error::io(format!("cannot open {}", dir.path.display()), err)
            })?;
        }
        Ok(dir)
    }

    /// Creates `path` (never an existing file) with `contents`.
    fn write(&self, path: &Path, contents: &[u8], other_user: bool) -> Result<(), Pep768Error> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if other_user { 0o644 } else { 0o600 })
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .and_then(|mut file| file.write_all(contents))
            .map_err(|err| Pep768Error::io(format!("cannot write {}", path.display()), err))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(err) = fs::remove_dir_all(&self.path) {
            warn!("cannot remove {}: {err}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports() {
        assert_eq!(
            parse_report(1, 3, 0, "heli-prctl pid=1 ret=1 errno=0").unwrap(),
            1
        );
        let err =
            parse_report(1, PR_SET_PTRACER, 5, "heli-prctl pid=1 ret=-1 errno=22").unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::CallFailed);
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert!(err.to_string().contains("Yama"), "{err}");
        let err =
            parse_report(1, 3, 0, "heli-prctl pid=1 exception=ImportError('ctypes')").unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::ScriptFailed);
        assert!(err.to_string().contains("ImportError"), "{err}");
        let err = parse_report(1, 3, 0, "nonsense").unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::ScriptFailed);
    }

    #[test]
    fn private_dir_goes_away() {
        let dir = PrivateDir::create(false).unwrap();
        let path = dir.path.clone();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        dir.write(&path.join("a"), b"x", false).unwrap();
        assert!(dir.write(&path.join("a"), b"y", false).is_err());
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn knows_own_uid() {
        assert_eq!(
            target_uid(std::process::id()),
            Some(nix::unistd::geteuid().as_raw())
        );
    }
}
