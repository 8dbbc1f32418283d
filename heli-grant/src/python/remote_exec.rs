//! `sys.remote_exec(pid, path)` natively: the write sequence of PEP 768,
//! and a grant built on it (`prctl` run by the target, its result reported
//! back over a Unix socket whose peer is checked).
//!
//! A debugging helper must never corrupt, kill or hang the process it helps
//! with, so:
//! - the request bit is set by writing the one byte of the eval breaker
//!   that holds it (the other bytes hold the instrumentation version, and
//!   writing back an old one makes the target re-instrument forever);
//! - the request goes only into a thread state that cannot be freed under
//!   the writes (the one inside `_PyRuntime`), or into the process's main
//!   thread's, found again in the interpreter's list before every write;
//! - a request lasts as long as its [`RemoteExec`]: every way out withdraws
//!   it if the script has not begun, so no request outlives its script;
//! - a grant's script acts only when heli, still waiting, tells it to, so a
//!   script the target begins after heli gave up does nothing;
//! - scripts live in a directory no other user can write to
//!   (`script_dir.rs`).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use heli_core::{Deadline, Pid};
use heli_proc::Proc;
use log::{debug, warn};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::error::{Pep768Error, Pep768ErrorKind};
use super::memory::{at, RemoteMemory};
use super::process::PyProcess;
use super::script_dir::ScriptDir;

/// `_PY_EVAL_PLEASE_STOP_BIT`, the bit of the eval breaker (a
/// little-endian `uintptr_t`) that makes the thread handle pending events,
/// remote execution among them, at its next check.
const PLEASE_STOP_BIT: u32 = 5;
/// At most this many threads are walked to find one to run a script.
const MAX_THREADS: usize = 1 << 16;
/// How long a grant waits for the report once it told the script to make
/// the call, even past its deadline (the call is a system call: the report
/// follows at once).
const REPORT_GRACE: Duration = Duration::from_secs(1);
/// How long a grant that gave up listens for the script the target began
/// meanwhile, to turn it away, before removing its files.
const LATE_GRACE: Duration = Duration::from_millis(200);

/// A script a target was asked to run, by [`PyProcess::remote_exec`] or
/// [`remote_exec`]: it runs when the chosen thread next handles pending
/// events in the eval loop (within a millisecond for a thread running
/// Python code; not while it is blocked in C code, a long `time.sleep` for
/// instance).
///
/// The request lasts as long as this value: dropping it withdraws the
/// request unless the script began ([`cancel`](Self::cancel));
/// [`detach`](Self::detach) leaves it pending instead.
///
/// CPython reads the script when it runs it and never deletes it: keep the
/// file until [`wait_started`](Self::wait_started) returned, or until the
/// script reported back.
#[derive(Debug)]
#[must_use = "dropping a RemoteExec withdraws its request: wait for it, or detach it"]
pub struct RemoteExec {
    memory: RemoteMemory,
    thread: ScriptThread,
    /// Where the thread's `debugger_pending_call` and
    /// `debugger_script_path` are.
    pending: u64,
    path_at: u64,
    script: PathBuf,
    /// Withdrawn, detached, or never fully made: dropping it does nothing.
    settled: bool,
}

/// What withdrawing a request found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Withdrawal {
    /// Withdrawn: the script will not run for this request.
    Withdrawn,
    /// The thread had taken the request already: the script began.
    Started,
    /// The thread took the request while it was being withdrawn: the
    /// script may run.
    MayRun,
    /// Another request (a debugger's) replaced it: left alone.
    Replaced,
}

/// The thread state a request is written into.
#[derive(Clone, Copy, Debug)]
struct ScriptThread {
    tstate: u64,
    tid: u64,
    /// `None` for the thread state inside `_PyRuntime` (the main
    /// interpreter's first one, which CPython never frees); for one on the
    /// heap, the list to find it in again before each write.
    list: Option<ThreadList>,
}

/// An interpreter's list of thread states.
#[derive(Clone, Copy, Debug)]
struct ThreadList {
    /// The address of the interpreter's `threads_head`.
    head_at: u64,
    /// `next` and `native_thread_id` in a thread state.
    next: u64,
    native_thread_id: u64,
}

impl ThreadList {
    /// Whether `tstate` is in the list, as thread `tid`'s.
    fn holds(&self, memory: &RemoteMemory, tstate: u64, tid: u64) -> Result<bool, Pep768Error> {
        let mut listed = memory.read_u64(self.head_at)?;
        for _ in 0..MAX_THREADS {
            if listed == 0 {
                return Ok(false);
            }
            if listed == tstate {
                return Ok(memory.read_u64(at(listed, self.native_thread_id))? == tid);
            }
            listed = memory.read_u64(at(listed, self.next))?;
        }
        Ok(false)
    }
}

impl ScriptThread {
    /// Checks that a thread state on the heap is still in its list, still
    /// the same thread's (else it may be freed memory).
    fn check(&self, memory: &RemoteMemory) -> Result<(), Pep768Error> {
        match self.list {
            Some(list) if !list.holds(memory, self.tstate, self.tid)? => Err(Pep768Error::new(
                Pep768ErrorKind::NoThread,
                format!(
                    "thread {} of PID {} ended (its thread state left the interpreter): \
                     nothing more is written into it",
                    self.tid,
                    memory.pid()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Writes `data` at `addr` in the thread state, once [checked](Self::check).
    fn write(&self, memory: &RemoteMemory, addr: u64, data: &[u8]) -> Result<(), Pep768Error> {
        self.check(memory)?;
        memory.write(addr, data)
    }
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
    /// pending flag into a thread's `_PyRemoteDebuggerSupport`, and sets
    /// bit 5 of its eval breaker. Returns at once; the script runs later
    /// (see [`RemoteExec`], which withdraws the request when dropped).
    ///
    /// The thread is the one whose state CPython keeps inside `_PyRuntime`
    /// and never frees: the interpreter's main thread in a `python`
    /// process, the thread that initialised Python in an embedding host.
    /// When no thread has it, it is the main thread, else the process's
    /// first thread (whose id is the process id), whose state is on the
    /// heap: it is found again in the interpreter's list before every
    /// write. Any other thread state may be freed at any moment, by a
    /// thread that ends, and writing into freed memory would corrupt the
    /// target: those are refused.
    ///
    /// A relative `script` is made absolute from this process's working
    /// directory (the target's may differ). The target opens it as its own
    /// user: it must be able to read it. A request still pending, from
    /// heli or a debugger, is replaced, as CPython does.
    ///
    /// # Race condition
    ///
    /// No atomic operation spans two processes: the byte of the eval
    /// breaker that holds the request bit is read, ORed and written back
    /// (only that byte: the others hold the instrumentation version). Other
    /// event bits the target sets in that byte in those microseconds may
    /// be lost: a GIL drop request is made again at the next switch
    /// interval, a GC request at the next allocation, and a signal's
    /// Python handler then waits for the next signal or blocking call.
    /// CPython's `sys.remote_exec` does the same with the whole word. The
    /// write is skipped when the bit is already set.
    ///
    /// A thread state outside `_PyRuntime` (an embedding host whose first
    /// thread state was deleted) could still be freed in the microseconds
    /// between a check and the write that follows it, if the process's
    /// first thread deleted it then.
    ///
    /// # Errors
    ///
    /// - [`BadPath`](Pep768ErrorKind::BadPath): the path has a NUL byte, is
    ///   longer than the target accepts (511 bytes on 3.14), or does not
    ///   exist as the target sees the file system;
    /// - [`RemoteDebugDisabled`](Pep768ErrorKind::RemoteDebugDisabled): the
    ///   message says which switch did it, when it can tell;
    /// - [`NoThread`](Pep768ErrorKind::NoThread): the interpreter has no
    ///   thread whose state is sure to outlive the request, or the chosen
    ///   one ended during the writes;
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
        let mut path = script.as_os_str().as_bytes().to_vec();
        if path.contains(&0) {
            return Err(Pep768Error::new(
                Pep768ErrorKind::BadPath,
                format!("the script's path {} holds a NUL byte", script.display()),
            ));
        }
        if path.len() as u64 >= d.script_path_size {
            return Err(Pep768Error::new(
                Pep768ErrorKind::BadPath,
                format!(
                    "the script's path is {} bytes long; CPython {} accepts at most {}",
                    path.len(),
                    self.version(),
                    d.script_path_size - 1
                ),
            ));
        }
        path.push(0);
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
        let enabled = self.memory().read_i32(at(interp, d.enabled))?;
        if enabled != 1 {
            return Err(disabled(pid.get(), enabled));
        }
        let thread = self.script_thread(interp)?;
        let memory = self.memory();
        let support = at(thread.tstate, d.support);
        let mut request = RemoteExec {
            memory: memory.clone(),
            thread,
            pending: at(support, d.pending_call),
            path_at: at(support, d.script_path),
            script,
            settled: true,
        };
        if memory.read_i32(request.pending)? != 0 {
            warn!("PID {pid} still had a script to run (from a debugger?): replacing it");
        }
        thread.write(memory, request.path_at, &path)?;
        // From the flag on, every way out withdraws the request.
        request.settled = false;
        thread.write(memory, request.pending, &1i32.to_le_bytes())?;
        thread.check(memory)?;
        request_stop(memory, at(thread.tstate, d.eval_breaker))?;
        if let Err(err) = thread.check(memory) {
            // Writing anything more could land in freed memory.
            request.settled = true;
            return Err(err);
        }
        debug!(
            "asked thread {} of PID {pid} to run {}",
            thread.tid,
            request.script.display()
        );
        Ok(request)
    }

    /// The thread state to run a script (see
    /// [`remote_exec`](Self::remote_exec)).
    fn script_thread(&self, interp: u64) -> Result<ScriptThread, Pep768Error> {
        let (i, t) = (self.offsets().interp, self.offsets().tstate);
        let memory = self.memory();
        let runtime = self.runtime_address();
        let runtime_end = runtime.saturating_add(self.offsets().runtime_size);
        // Inside `_PyRuntime`: the main interpreter's preallocated thread
        // state, reset for reuse but never freed.
        let kept = |tstate: u64| tstate >= runtime && tstate.saturating_add(t.size) <= runtime_end;
        let list = ThreadList {
            head_at: at(interp, i.threads_head),
            next: t.next,
            native_thread_id: t.native_thread_id,
        };
        let thread = |tstate: u64| -> Result<ScriptThread, Pep768Error> {
            Ok(ScriptThread {
                tstate,
                tid: memory.read_u64(at(tstate, t.native_thread_id))?,
                list: (!kept(tstate)).then_some(list),
            })
        };
        let main = memory.read_u64(at(interp, i.threads_main))?;
        if main != 0 && kept(main) {
            return thread(main);
        }
        // An embedding host (no thread runs __main__), or a main thread
        // with a state on the heap: prefer the state that is never freed.
        let mut first = None;
        let mut tstate = memory.read_u64(list.head_at)?;
        for _ in 0..MAX_THREADS {
            if tstate == 0 {
                break;
            }
            if kept(tstate) {
                return thread(tstate);
            }
            if first.is_none()
                && memory.read_u64(at(tstate, t.native_thread_id))? == u64::from(self.pid())
            {
                first = Some(tstate);
            }
            tstate = memory.read_u64(at(tstate, t.next))?;
        }
        if main != 0 {
            return thread(main);
        }
        if let Some(first) = first {
            debug!(
                "PID {}: no main thread, and the first thread state was deleted: using the \
                 process's first thread's, found again before every write",
                self.pid()
            );
            return thread(first);
        }
        Err(Pep768Error::new(
            Pep768ErrorKind::NoThread,
            format!(
                "PID {}: no thread of its interpreter is sure to outlive a request (no main \
                 thread, and neither the first thread state nor the process's first thread \
                 runs Python): the threads that do may end, and free their state, at any \
                 moment, and writing into freed memory would corrupt the process",
                self.pid()
            ),
        ))
    }
}

/// Sets `_PY_EVAL_PLEASE_STOP_BIT` in the eval breaker at `breaker_at` by
/// writing the one byte that holds it (see [`please_stop_byte`]); leaves
/// the byte alone when the bit is set already.
fn request_stop(memory: &RemoteMemory, breaker_at: u64) -> Result<(), Pep768Error> {
    let (at, mask) = please_stop_byte(breaker_at);
    let mut byte = [0u8];
    memory.read(at, &mut byte)?;
    if byte[0] & mask == 0 {
        memory.write(at, &[byte[0] | mask])?;
    }
    Ok(())
}

/// The address of the byte of the (little-endian) eval breaker at
/// `breaker_at` that holds `_PY_EVAL_PLEASE_STOP_BIT`, and the bit's mask
/// in it.
fn please_stop_byte(breaker_at: u64) -> (u64, u8) {
    (
        at(breaker_at, u64::from(PLEASE_STOP_BIT / 8)),
        1 << (PLEASE_STOP_BIT % 8),
    )
}

/// The error for `remote_debugging_enabled` being `value`, saying which
/// switch turned it off when the target's environment or command line
/// tells.
fn disabled(pid: u32, value: i32) -> Pep768Error {
    let (environ, cmdline) = Pid::new(pid)
        .and_then(|pid| Proc::open(pid).ok().flatten())
        .map(|proc| proc.environ_and_cmdline())
        .unwrap_or_default();
    let by_env = environ
        .iter()
        .any(|var| var.starts_with(b"PYTHON_DISABLE_REMOTE_DEBUG="));
    let by_option = cmdline
        .iter()
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
        self.thread.tid
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
    /// When the target's memory cannot be read (it exited, for instance),
    /// or [`NoThread`](Pep768ErrorKind::NoThread) when the thread ended.
    pub fn is_pending(&self) -> Result<bool, Pep768Error> {
        self.thread.check(&self.memory)?;
        Ok(self.memory.read_i32(self.pending)? != 0)
    }

    /// Waits until the target began the script (it clears the pending flag
    /// as it starts it), polling, for at most `timeout`; returns how long
    /// that took. See [`wait_started_until`](Self::wait_started_until).
    ///
    /// # Errors
    ///
    /// As [`wait_started_until`](Self::wait_started_until).
    pub fn wait_started(&self, timeout: Duration) -> Result<Duration, Pep768Error> {
        self.wait_started_until(&Deadline::after(timeout))
    }

    /// Waits until the target began the script, polling, until `deadline`
    /// passes or is called off; returns how long that took.
    ///
    /// # Errors
    ///
    /// [`Timeout`](Pep768ErrorKind::Timeout) when it has not begun by
    /// `deadline`, [`Cancelled`](Pep768ErrorKind::Cancelled) when the
    /// deadline was called off (the request stays pending either way: drop
    /// or [`cancel`](Self::cancel) it);
    /// [`NoSuchProcess`](Pep768ErrorKind::NoSuchProcess) when the target
    /// exited; [`NoThread`](Pep768ErrorKind::NoThread) when the thread
    /// ended.
    pub fn wait_started_until(&self, deadline: &Deadline) -> Result<Duration, Pep768Error> {
        let start = Instant::now();
        let mut nap = Duration::from_micros(20);
        while self.is_pending()? {
            if deadline.expired() {
                return Err(expired(self.pid().get(), deadline, start));
            }
            thread::sleep(nap.min(deadline.remaining()));
            nap = (nap * 2).min(Duration::from_millis(5));
        }
        Ok(start.elapsed())
    }

    /// Withdraws the request if the script has not begun and no other
    /// request replaced it; returns whether it is sure the script will not
    /// run for it.
    ///
    /// It empties the path first, then clears the flag: a thread that takes
    /// the request after the path was emptied runs nothing (CPython runs no
    /// empty path). `false` means the script began, may begin (the thread
    /// took the request in the microseconds between the check and the
    /// emptying), or another request replaced this one.
    ///
    /// # Race condition
    ///
    /// A request another debugger writes in the microseconds between the
    /// check and the writes is withdrawn too (two debuggers writing at the
    /// same time already replace each other's requests).
    ///
    /// # Errors
    ///
    /// When the target's memory cannot be read or written, or the thread
    /// ended.
    pub fn cancel(&mut self) -> Result<bool, Pep768Error> {
        Ok(self.withdraw()? == Withdrawal::Withdrawn)
    }

    /// Leaves the request pending: the script runs whenever the thread
    /// next handles pending events, however long that takes. The file must
    /// stay until then.
    pub fn detach(mut self) {
        self.settled = true;
    }

    fn withdraw(&mut self) -> Result<Withdrawal, Pep768Error> {
        self.settled = true;
        if !self.is_pending()? {
            return Ok(Withdrawal::Started);
        }
        let mut ours = self.script.as_os_str().as_bytes().to_vec();
        ours.push(0);
        if self.memory.read_vec(self.path_at, ours.len())? != ours {
            return Ok(Withdrawal::Replaced);
        }
        self.thread.write(&self.memory, self.path_at, &[0])?;
        if !self.is_pending()? {
            return Ok(Withdrawal::MayRun);
        }
        self.thread
            .write(&self.memory, self.pending, &0i32.to_le_bytes())?;
        debug!("withdrew {} from PID {}", self.script.display(), self.pid());
        Ok(Withdrawal::Withdrawn)
    }
}

impl Drop for RemoteExec {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        match self.withdraw() {
            Ok(outcome) => debug!(
                "dropped the request to run {} in PID {}: {outcome:?}",
                self.script.display(),
                self.memory.pid()
            ),
            Err(err) => debug!(
                "dropped the request to run {}, and cannot withdraw it: {err}",
                self.script.display()
            ),
        }
    }
}

/// The error of a wait begun at `start` that reached `deadline`.
fn expired(pid: u32, deadline: &Deadline, start: Instant) -> Pep768Error {
    if deadline.is_cancelled() {
        return Pep768Error::new(
            Pep768ErrorKind::Cancelled,
            format!(
                "called off after {:.1} s, before PID {pid} ran the script",
                start.elapsed().as_secs_f64()
            ),
        );
    }
    let timeout = deadline.instant().saturating_duration_since(start);
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
/// reported that the call returned 0. See [`PyProcess::remote_prctl`].
///
/// # Errors
///
/// As [`remote_prctl`]; [`CallFailed`](Pep768ErrorKind::CallFailed) with
/// `EINVAL` on a kernel without Yama.
pub fn remote_exec_prctl(pid: Pid, client: Pid, timeout: Duration) -> Result<(), Pep768Error> {
    remote_prctl(pid, PR_SET_PTRACER, u64::from(client.get()), timeout).map(drop)
}

/// Has process `pid` call `prctl(option, arg, 0, 0, 0)` from Python, within
/// `timeout`: [`PyProcess::open`] then [`PyProcess::remote_prctl`] (which
/// takes a [`Deadline`] its owner may call off).
///
/// # Errors
///
/// As those two.
pub fn remote_prctl(
    pid: Pid,
    option: i32,
    arg: u64,
    timeout: Duration,
) -> Result<u64, Pep768Error> {
    let deadline = Deadline::after(timeout);
    PyProcess::open(pid)?.remote_prctl(option, arg, &deadline)
}

impl PyProcess {
    /// Has the target call `prctl(option, arg, 0, 0, 0)` from Python (with
    /// `ctypes`) by `deadline`, and returns what the call returned.
    ///
    /// The script is written to a directory of its own (mode 0700, or 0711
    /// with a world-readable script when the target runs as another user),
    /// with `O_EXCL`, inside a per-user directory no one else can write to;
    /// it is removed once the request is withdrawn or done. The script
    /// connects back to a Unix socket there and makes the call only when
    /// told to, over a connection whose peer credentials (`SO_PEERCRED`)
    /// name the target, before `deadline`; it reports the result on it. A
    /// script the target begins later (after the deadline passed or was
    /// called off) finds the socket gone or is turned away, and does
    /// nothing.
    ///
    /// The call is made by the thread that runs the script (the main
    /// thread, [`RemoteExec::thread`]): a per-thread `option` affects that
    /// thread.
    ///
    /// # Errors
    ///
    /// - [`Timeout`](Pep768ErrorKind::Timeout): the target did not begin the
    ///   script by `deadline` (the request is then withdrawn);
    /// - [`Cancelled`](Pep768ErrorKind::Cancelled): `deadline` was called
    ///   off before the script was told to make the call (the call is not
    ///   made);
    /// - [`ScriptFailed`](Pep768ErrorKind::ScriptFailed): it began the
    ///   script but did not connect in time (an audit hook vetoed it, or it
    ///   failed: the target's stderr tells; the call is not made), or
    ///   reported a Python exception, or nothing once told to make the
    ///   call;
    /// - [`CallFailed`](Pep768ErrorKind::CallFailed): `prctl` returned -1;
    ///   [`Pep768Error::raw_os_error`] is its errno;
    /// - those of [`remote_exec`](Self::remote_exec), and of creating the
    ///   files and the socket.
    pub fn remote_prctl(
        &self,
        option: i32,
        arg: u64,
        deadline: &Deadline,
    ) -> Result<u64, Pep768Error> {
        let start = Instant::now();
        let pid = self.pid().get();
        if deadline.expired() {
            return Err(expired(pid, deadline, start));
        }
        let other_user = target_uid(pid).is_some_and(|uid| uid != nix::unistd::geteuid().as_raw());
        let dir = ScriptDir::create(other_user)?;
        let socket_path = dir.path().join("report");
        let listener = UnixListener::bind(&socket_path)
            .and_then(|listener| {
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .map_err(|err| {
                Pep768Error::io(format!("cannot listen on {}", socket_path.display()), err)
            })?;
        if other_user {
            // Connecting needs write permission on the socket.
            fs::set_permissions(&socket_path, fs::Permissions::from_mode(0o666))
                .map_err(|err| Pep768Error::io("cannot open the report socket".to_owned(), err))?;
        }
        let source = prctl_script(option, arg, &socket_path);
        let script = dir.write("prctl.py", source.as_bytes())?;
        let mut grant = PrctlGrant {
            pid,
            request: None,
            listener,
            dir,
            heard: false,
        };
        grant.request = Some(self.remote_exec(&script)?);
        let what = match option {
            PR_SET_PTRACER => format!("prctl(PR_SET_PTRACER, {arg}) in PID {pid}"),
            _ => format!("prctl({option}, {arg}) in PID {pid}"),
        };
        let report = grant.wait(deadline, start)?;
        debug!("{what} in {:?}: {report}", start.elapsed());
        parse_report(&what, option, &report)
    }
}

/// One grant by [`PyProcess::remote_prctl`] under way. Dropping it
/// withdraws the request (if the script has not begun), turns the script
/// away if it began but did not connect yet, and then removes the files:
/// on every way out, error or panic.
#[derive(Debug)]
struct PrctlGrant {
    pid: u32,
    /// `None` once settled. Fields drop in order: the request is settled
    /// (in `drop`) before the socket closes and the directory goes.
    request: Option<RemoteExec>,
    listener: UnixListener,
    dir: ScriptDir,
    /// The target's script connected.
    heard: bool,
}

impl PrctlGrant {
    /// Waits for the script to connect, tells it to make the call, and
    /// returns its report.
    fn wait(&mut self, deadline: &Deadline, start: Instant) -> Result<String, Pep768Error> {
        let mut started = false;
        while !deadline.expired() {
            let wait = deadline.remaining().min(Duration::from_millis(10));
            self.poll(wait);
            if let Some(stream) = self.accept()? {
                if deadline.expired() {
                    // Dropping the connection tells the script no.
                    break;
                }
                return self.go(stream, deadline);
            }
            if !started {
                let request = self.request.as_ref().expect("made");
                started = !request.is_pending()?;
            }
        }
        let pid = self.pid;
        let outcome = self.settle();
        let cancelled = deadline.is_cancelled();
        match outcome {
            Some(Ok(Withdrawal::Withdrawn)) => Err(expired(pid, deadline, start)),
            Some(Err(err)) => Err(err),
            Some(Ok(outcome)) => {
                let began = match (outcome, started || self.heard) {
                    (Withdrawal::Replaced, _) => "had its request replaced by another's",
                    (_, true) => "began the script",
                    (_, false) => "took the request",
                };
                let (kind, why) = if cancelled {
                    (Pep768ErrorKind::Cancelled, "the grant was called off")
                } else {
                    (
                        Pep768ErrorKind::ScriptFailed,
                        "an audit hook may have vetoed it, or it failed (the target's stderr \
                         says why)",
                    )
                };
                Err(Pep768Error::new(
                    kind,
                    format!(
                        "PID {pid} {began} but was not told to make the call within {:.1} s, and \
                         will not make it: {why}",
                        start.elapsed().as_secs_f64()
                    ),
                ))
            }
            None => unreachable!("settled only here and in drop"),
        }
    }

    /// Waits up to `wait` for a connection.
    fn poll(&self, wait: Duration) {
        let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        let millis = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX).max(1);
        let _ = poll(&mut fds, PollTimeout::from(millis));
    }

    /// A connection from the target, if one is waiting (others are
    /// ignored).
    fn accept(&mut self) -> Result<Option<UnixStream>, Pep768Error> {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            Err(err) => return Err(Pep768Error::io("cannot accept the report".to_owned(), err)),
        };
        match getsockopt(&stream, PeerCredentials) {
            Ok(cred) if cred.pid() == self.pid as i32 => {
                self.heard = true;
                Ok(Some(stream))
            }
            Ok(cred) => {
                warn!(
                    "a connection came from PID {}, not from PID {}: ignored",
                    cred.pid(),
                    self.pid
                );
                Ok(None)
            }
            Err(err) => {
                warn!("cannot read the peer of a connection: {err}");
                Ok(None)
            }
        }
    }

    /// Tells the script to make the call, and reads its report.
    fn go(&mut self, stream: UnixStream, deadline: &Deadline) -> Result<String, Pep768Error> {
        let told = format!("PID {} was told to make the call", self.pid);
        let failed = |why: String| Pep768Error::new(Pep768ErrorKind::ScriptFailed, why);
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(deadline.remaining().max(REPORT_GRACE))))
            .and_then(|()| (&stream).write_all(b"go\n"))
            .map_err(|err| failed(format!("cannot tell PID {} to go on: {err}", self.pid)))?;
        let mut line = String::new();
        match BufReader::new(stream).read_line(&mut line) {
            Ok(n) if n > 0 => Ok(line.trim_end().to_owned()),
            Ok(_) => Err(failed(format!(
                "{told} but hung up without reporting (the target's stderr may say why)"
            ))),
            Err(err) => Err(failed(format!(
                "{told} but did not report ({err}): it may have made it"
            ))),
        }
    }

    /// Withdraws the request; if the target took it and its script did
    /// not connect yet, listens a little to turn the script away before
    /// the files go (a script finding no socket does nothing either, but
    /// a target finding no script complains on its stderr). Keeps the files
    /// when it cannot tell whether the request is still there.
    fn settle(&mut self) -> Option<Result<Withdrawal, Pep768Error>> {
        let mut request = self.request.take()?;
        let outcome = request.withdraw();
        match &outcome {
            Ok(Withdrawal::Started | Withdrawal::MayRun) if !self.heard => {
                let until = Instant::now() + LATE_GRACE;
                while Instant::now() < until {
                    self.poll(until.saturating_duration_since(Instant::now()));
                    match self.accept() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) => {}
                    }
                }
            }
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    Pep768ErrorKind::NoSuchProcess | Pep768ErrorKind::NoThread
                ) => {}
            Err(err) => {
                warn!(
                    "cannot withdraw the request to run {} in PID {}: {err}",
                    request.script().display(),
                    self.pid
                );
                self.dir.keep();
            }
        }
        Some(outcome)
    }
}

impl Drop for PrctlGrant {
    fn drop(&mut self) {
        if let Some(Ok(outcome)) = self.settle() {
            debug!("PID {}: the grant's request: {outcome:?}", self.pid);
        }
    }
}

/// The script of [`PyProcess::remote_prctl`]; it runs in a fresh namespace
/// of the target, and makes the call only when heli says `go` on the
/// socket.
fn prctl_script(option: i32, arg: u64, socket: &Path) -> String {
    let hex: String = socket
        .as_os_str()
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    PRCTL_SCRIPT
        .replace("{option}", &option.to_string())
        .replace("{arg}", &arg.to_string())
        .replace("{socket}", &hex)
}

const PRCTL_SCRIPT: &str = r#"def _heli_prctl():
    import os, socket
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl.restype = ctypes.c_int
        prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        failure = None
    except Exception as exc:
        failure = "exception=" + repr(exc).replace("\n", " ")
    # Nothing is done unless heli, still waiting, says go: run late, this
    # finds no socket, or hears no go, and returns.
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(bytes.fromhex("{socket}"))
        if sock.makefile("rb").readline() != b"go\n":
            sock.close()
            return
    except OSError:
        return
    with sock:
        if failure is None:
            ret = prctl({option}, {arg}, 0, 0, 0)
            report = "ret=%d errno=%d" % (ret, ctypes.get_errno() if ret == -1 else 0)
        else:
            report = failure
        try:
            sock.sendall(("heli-prctl pid=%d %s\n" % (os.getpid(), report)).encode())
        except OSError:
            pass
_heli_prctl()
"#;

/// Reads `heli-prctl pid=N ret=R errno=E` or `heli-prctl pid=N
/// exception=...`, the report of `what`.
fn parse_report(what: &str, option: i32, report: &str) -> Result<u64, Pep768Error> {
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
    Proc::open(Pid::new(pid)?).ok()??.fs_uid().ok()?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports() {
        let what = "prctl(3, 0) in PID 1";
        assert_eq!(
            parse_report(what, 3, "heli-prctl pid=1 ret=1 errno=0").unwrap(),
            1
        );
        let err =
            parse_report(what, PR_SET_PTRACER, "heli-prctl pid=1 ret=-1 errno=22").unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::CallFailed);
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert!(err.to_string().contains("Yama"), "{err}");
        let err =
            parse_report(what, 3, "heli-prctl pid=1 exception=ImportError('ctypes')").unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::ScriptFailed);
        assert!(err.to_string().contains("ImportError"), "{err}");
        let err = parse_report(what, 3, "nonsense").unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::ScriptFailed);
    }

    #[test]
    fn knows_own_uid() {
        assert_eq!(
            target_uid(std::process::id()),
            Some(nix::unistd::geteuid().as_raw())
        );
    }

    #[test]
    fn the_stop_bit_is_in_the_first_byte() {
        assert_eq!(please_stop_byte(0x1000), (0x1000, 0x20));
        let word = u64::from_le_bytes([0x20, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(word, 1 << PLEASE_STOP_BIT);
    }

    /// Two pages, the second inaccessible, in this process.
    struct Guarded {
        base: *mut u8,
        page: usize,
    }

    impl Guarded {
        fn new() -> Guarded {
            // SAFETY: sysconf takes an integer and touches no memory.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
            // SAFETY: a fresh anonymous private mapping, at an address the
            // kernel chooses; checked against MAP_FAILED.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    2 * page,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(base, libc::MAP_FAILED);
            let base = base.cast::<u8>();
            // SAFETY: the second page of the mapping made above.
            let res = unsafe { libc::mprotect(base.add(page).cast(), page, libc::PROT_NONE) };
            assert_eq!(res, 0);
            Guarded { base, page }
        }

        fn first_page(&mut self) -> &mut [u8] {
            // SAFETY: the first page is readable and writable, and owned
            // by this value.
            unsafe { std::slice::from_raw_parts_mut(self.base, self.page) }
        }
    }

    impl Drop for Guarded {
        fn drop(&mut self) {
            // SAFETY: unmaps the mapping made in `new`, which nothing else
            // refers to.
            unsafe { libc::munmap(self.base.cast(), 2 * self.page) };
        }
    }

    /// The request bit is set by writing one byte, at the eval breaker's
    /// address: with an eval breaker whose first byte is the last
    /// accessible one, the eight-byte read-modify-write of old failed,
    /// and nothing else in the page changes.
    #[test]
    fn request_stop_writes_one_byte_at_the_breaker() {
        let mut guarded = Guarded::new();
        let page = guarded.page;
        guarded.first_page().fill(0x81);
        let breaker_at = guarded.base as u64 + page as u64 - 1;
        let memory = RemoteMemory::new(std::process::id());
        request_stop(&memory, breaker_at).unwrap();
        let bytes = guarded.first_page();
        assert_eq!(bytes[page - 1], 0x81 | 0x20);
        assert!(bytes[..page - 1].iter().all(|&b| b == 0x81));
        // Set already: left alone. The page is made inaccessible: the
        // kernel still reads it for a debugger (`/proc/PID/mem`), but
        // refuses a write.
        bytes[page - 1] = 0x20;
        // SAFETY: the first page of the mapping, nothing refers to it now.
        let res = unsafe { libc::mprotect(guarded.base.cast(), page, libc::PROT_NONE) };
        assert_eq!(res, 0);
        request_stop(&memory, breaker_at).unwrap();
        let err = memory.write(breaker_at, &[0x20]).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::Corrupt, "{err}");

        // On a whole word, only the low byte changes.
        let mut word = 0x1234_5678_9abc_de01u64;
        let at = std::ptr::addr_of_mut!(word);
        request_stop(&memory, at as u64).unwrap();
        // SAFETY: a live local, written by the kernel on our behalf.
        assert_eq!(unsafe { at.read_volatile() }, 0x1234_5678_9abc_de21);
    }

    /// A crafted thread list in this process's memory: a thread state is
    /// found only while linked with its thread id.
    #[test]
    fn heap_thread_states_are_found_again_before_writes() {
        // Three "thread states" of 4 words: [next, tid, pending, path].
        let mut states = vec![[0u64; 4]; 3];
        let addr = |states: &Vec<[u64; 4]>, i: usize| states[i].as_ptr() as u64;
        let (a, b, c) = (addr(&states, 0), addr(&states, 1), addr(&states, 2));
        states[0] = [b, 100, 0, 0];
        states[1] = [c, 101, 0, 0];
        states[2] = [0, 102, 0, 0];
        let pending = |states: &mut Vec<[u64; 4]>| {
            let at = std::ptr::addr_of_mut!(states[1][2]);
            // SAFETY: an element of a live vector, written by the kernel
            // on our behalf.
            unsafe { at.read_volatile() }
        };
        let head = [a];
        let list = ThreadList {
            head_at: head.as_ptr() as u64,
            next: 0,
            native_thread_id: 8,
        };
        let memory = RemoteMemory::new(std::process::id());
        let thread = ScriptThread {
            tstate: b,
            tid: 101,
            list: Some(list),
        };
        assert!(list.holds(&memory, b, 101).unwrap());
        thread.write(&memory, b + 16, &7u64.to_le_bytes()).unwrap();
        assert_eq!(pending(&mut states), 7);
        // Another thread now has that state: refused.
        states[1][1] = 999;
        let err = thread
            .write(&memory, b + 16, &8u64.to_le_bytes())
            .unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::NoThread, "{err}");
        // Unlinked: refused, nothing written.
        states[1][1] = 101;
        states[0][0] = c;
        let err = thread
            .write(&memory, b + 16, &8u64.to_le_bytes())
            .unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::NoThread, "{err}");
        assert_eq!(pending(&mut states), 7);
        // A state inside _PyRuntime is never looked for.
        let kept = ScriptThread {
            list: None,
            ..thread
        };
        kept.write(&memory, b + 16, &9u64.to_le_bytes()).unwrap();
        assert_eq!(pending(&mut states), 9);
    }
}
