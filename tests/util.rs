//! What the end-to-end tests share: finding binaries and Python, running a
//! controller in a private directory, bounded waits.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use heli::core::{Pid, ProcessState, Processes};
use heli::proc::{Proc, ProcFs};
use rexpect::session::PtySession;

/// Generous bound for anything that should take well under a second.
pub const SOON: Duration = Duration::from_secs(20);

/// Serializes tests that start controllers: they fork, forward signals and
/// print to files; two at once on 2 cores slow each other to timeouts.
static PROCESSES: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    PROCESSES.lock().unwrap_or_else(|e| e.into_inner())
}

/// `target/<profile>/examples/<name>`, built by `cargo test`.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: build the examples first (`cargo build --examples`), or run scripts/test.sh",
        path.display()
    );
    path
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) use crate::deps::deps_dir;

/// Python 3.14, found as the programs find it ([`heli::cli::python::find`]).
pub fn python314() -> PathBuf {
    heli::cli::python::find()
        .expect("Python 3.14 not found: run scripts/test.sh (it installs it) or set HELI_PYTHON")
}

/// Waits for `condition` until `limit`; panics with `what` on timeout.
pub fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` to exit, killing it and panicking after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} still running after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `command` (stdin empty) to its end, bounded by [`SOON`], and returns
/// (status, stdout, stderr).
pub fn run(command: Command) -> (ExitStatus, String, String) {
    run_with_input(command, b"")
}

/// Runs `command` with `input` on its stdin to its end, bounded by
/// [`SOON`], and returns (status, stdout, stderr).
pub fn run_with_input(mut command: Command, input: &[u8]) -> (ExitStatus, String, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Small enough for the pipe: written at once, then closed.
    // (It may have ended, or not read it: that is for the caller to judge.)
    let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), input);
    // Read while it runs: a full pipe would block it.
    fn drain(mut pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    }
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let status = wait_exit(&mut child, SOON);
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

/// Process `pid`, opened in `/proc` by heli-proc, if it is there.
pub fn proc(pid: u32) -> Option<Proc> {
    Proc::open(Pid::new(pid)?).unwrap()
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn alive(pid: u32) -> bool {
    Pid::new(pid).is_some_and(|pid| ProcFs.identity(pid).unwrap().is_some())
}

/// What process `pid` is doing, if it is there.
pub fn state(pid: u32) -> Option<ProcessState> {
    Some(ProcFs.process(Pid::new(pid)?).unwrap()?.state)
}

/// The children of `pid` (zombies included), from every thread's
/// `children` file.
pub fn children_of(pid: u32) -> Vec<u32> {
    let children = proc(pid).map(|proc| proc.children().unwrap().expect("children files"));
    children.into_iter().flatten().map(u32::from).collect()
}

/// How the examples talk in a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Named pipes in a private directory.
    Fifo,
    /// A Unix socket, session `test`, in a private runtime directory.
    Socket,
}

/// Runs `$body(kind)` as one test per transport, in modules `fifo` and
/// `socket`.
#[macro_export]
macro_rules! per_transport {
    ($($name:ident),* $(,)?) => {
        mod fifo {
            $(#[test] fn $name() { super::$name($crate::util::Kind::Fifo) })*
        }
        mod socket {
            $(#[test] fn $name() { super::$name($crate::util::Kind::Socket) })*
        }
    };
}

/// A controller example running in private directories (the pipes, or the
/// runtime directory of the socket), killed (with its target) when dropped.
pub struct Controller {
    pub child: Child,
    pub kind: Kind,
    pub dir: tempfile::TempDir,
    /// The pipes (fifo), or `$XDG_RUNTIME_DIR/heli` (socket).
    pub fifo_dir: PathBuf,
    pub log: PathBuf,
}

impl Controller {
    /// Starts `controller ARGS` on named pipes and waits until it listens.
    pub fn start(args: &[&str]) -> Controller {
        Self::start_on(Kind::Fifo, args)
    }

    /// Starts the controller on the demo target, `examples/target.py`, on
    /// `kind`, and waits until it listens.
    pub fn demo(kind: Kind) -> Controller {
        Self::start_on(kind, &["examples/target.py"])
    }

    /// Starts `controller ARGS` on `kind` and waits until it listens.
    pub fn start_on(kind: Kind, args: &[&str]) -> Controller {
        Self::launch(kind, None, args, &[], false)
    }

    /// As [`start_on`](Self::start_on), with more environment variables
    /// (the target inherits them).
    pub fn start_with_env(kind: Kind, args: &[&str], env: &[(&str, &str)]) -> Controller {
        Self::launch(kind, None, args, env, false)
    }

    /// As [`start`](Self::start), with the pipes in `fifo_dir`.
    pub fn start_at(fifo_dir: &Path, args: &[&str]) -> Controller {
        Self::launch(Kind::Fifo, Some(fifo_dir), args, &[], false)
    }

    /// As [`start_on`](Self::start_on), in a process group of its own, as a
    /// shell starts a job: with this test as its parent in the same session,
    /// the group is not orphaned, and the kernel lets SIGTSTP stop it.
    pub fn start_job(kind: Kind, args: &[&str]) -> Controller {
        Self::launch(kind, None, args, &[], true)
    }

    fn launch(
        kind: Kind,
        fifo_dir: Option<&Path>,
        args: &[&str],
        env: &[(&str, &str)],
        job: bool,
    ) -> Controller {
        let dir = tempfile::tempdir().unwrap();
        let (fifo_dir, ready) = match kind {
            Kind::Fifo => {
                let fifo_dir = fifo_dir.map_or_else(|| dir.path().join("pipes"), Path::to_path_buf);
                let ready = fifo_dir.join("response");
                (fifo_dir, ready)
            }
            Kind::Socket => {
                let runtime = dir.path().join("heli");
                let ready = runtime.join("test.sock");
                (runtime, ready)
            }
        };
        let log = dir.path().join("controller.log");
        let mut command = Command::new(example("controller"));
        match kind {
            Kind::Fifo => command
                .args(["--transport", "fifo", "--fifo-dir"])
                .arg(&fifo_dir),
            Kind::Socket => command
                .args(["--transport", "socket", "--name", "test"])
                .env("XDG_RUNTIME_DIR", dir.path()),
        };
        command
            .args(args)
            .envs(env.iter().copied())
            .current_dir(repo())
            .env("HELI_PYTHON", python314())
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("target.out")).unwrap())
            .stderr(fs::File::create(&log).unwrap());
        if job {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let child = command.spawn().unwrap();
        let mut controller = Controller {
            child,
            kind,
            dir,
            fifo_dir,
            log,
        };
        // Listening once the pid file names it (stale pipes may be there
        // before), or once the socket is there.
        let pid_file = controller.fifo_dir.join("controller.pid");
        let me = controller.child.id().to_string();
        let listening = |c: &Controller| match c.kind {
            Kind::Fifo => {
                fs::read_to_string(&pid_file).ok().as_deref() == Some(me.as_str()) && ready.exists()
            }
            Kind::Socket => ready.exists(),
        };
        let deadline = Instant::now() + SOON;
        while !listening(&controller) {
            if let Some(status) = controller.child.try_wait().unwrap() {
                panic!(
                    "controller exited with {status} before listening:\n{}",
                    controller.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "controller not listening:\n{}",
                controller.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        controller
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many iterations the demo target (`examples/target.py`, one a
    /// second, logged to the controller's log) has logged.
    pub fn iterations(&self) -> usize {
        self.log_text().matches("target: Iteration ").count()
    }

    /// Waits until the demo target runs its work loop: `pdb -p` fails
    /// ("Can't find the main thread in the remote process") while it still
    /// starts, before CPython runs its `__main__`.
    pub fn wait_for_work_loop(&self) {
        wait_for("the target's work loop", SOON, || {
            let (_, out, _) = self.run_client(&["stack"]);
            out.contains("in work_loop")
        });
    }

    pub fn target_output(&self) -> String {
        fs::read_to_string(self.dir.path().join("target.out")).unwrap_or_default()
    }

    /// A client command talking to this controller.
    pub fn client(&self) -> Command {
        let mut command = Command::new(example("client"));
        match self.kind {
            Kind::Fifo => command
                .args(["--transport", "fifo", "--fifo-dir"])
                .arg(&self.fifo_dir),
            // The only session in its runtime directory: picked without --session.
            Kind::Socket => command.env("XDG_RUNTIME_DIR", self.dir.path()),
        };
        // The REPL's history goes to the test's directory, not the user's.
        command
            .env("HELI_PYTHON", python314())
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env_remove("RUST_LOG");
        command
    }

    /// A plain connection to the session socket (on [`Kind::Socket`]), its
    /// reads bounded by [`SOON`].
    pub fn socket(&self) -> UnixStream {
        let stream = UnixStream::connect(self.fifo_dir.join("test.sock")).unwrap();
        stream.set_read_timeout(Some(SOON)).unwrap();
        stream
    }

    /// A connection to the session socket for requests line by line.
    pub fn session(&self) -> Session {
        Session(BufReader::new(self.socket()))
    }

    /// Runs `client ARGS` and returns (status, stdout, stderr).
    pub fn run_client(&self, args: &[&str]) -> (ExitStatus, String, String) {
        let mut client = self.client();
        client.args(args);
        run(client)
    }

    /// The target's pid, asked through the client.
    pub fn target_pid(&self) -> u32 {
        let (status, out, err) = self.run_client(&["pid"]);
        assert!(
            status.success(),
            "client pid failed: {out}{err}\n{}",
            self.log_text()
        );
        out.trim().parse().unwrap()
    }

    pub fn signal(&self, signal: i32) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::try_from(signal).unwrap(),
        )
        .unwrap();
    }

    /// Waits for the controller to exit and returns its status.
    pub fn wait(&mut self) -> ExitStatus {
        wait_exit(&mut self.child, SOON)
    }

    /// Entries left in the FIFO directory (none or no directory: empty).
    pub fn fifo_dir_entries(&self) -> Vec<String> {
        match fs::read_dir(&self.fifo_dir) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Writes a small Python program into `dir` and returns its path.
pub fn script(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

/// A small program `name` in a temporary directory of its own (removed
/// with the directory), and its path.
pub fn temp_script(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = script(dir.path(), name, text);
    (dir, path)
}

/// The controller's options to grant by PEP 768 remote execution (a Yama
/// granter), then `target`.
pub fn by_remote_exec(target: &str) -> [&str; 5] {
    ["--granter", "yama", "--grant-method", "remote-exec", target]
}

/// Waits for each of `texts` in turn in `session`'s output.
pub fn expect_all(session: &mut PtySession, texts: &[&str]) {
    for text in texts {
        if let Err(err) = session.exp_string(text) {
            panic!("waiting for {text:?}: {err}");
        }
    }
}

/// At the client's `>>> ` prompt in `session`: runs `line`, waits for each
/// of `shown` in turn, then for the next prompt.
pub fn command(session: &mut PtySession, line: &str, shown: &[&str]) {
    session.send_line(line).unwrap();
    expect_all(session, shown);
    expect_all(session, &[">>> "]);
}

/// The client says goodbye and ends.
pub fn goodbye(session: &mut PtySession) {
    expect_all(session, &["Goodbye!"]);
    session.exp_eof().unwrap();
}

/// A plain connection to a controller's session socket.
pub struct Session(BufReader<UnixStream>);

impl Session {
    /// Sends `request` (a line) and returns the reply line.
    pub fn ask(&mut self, request: &str) -> String {
        self.0.get_mut().write_all(request.as_bytes()).unwrap();
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        line
    }
}

/// Kills `child` and reaps it.
pub fn end(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Python 3.14 running `code`, with its first line of output (trimmed).
pub fn python_saying(code: &str) -> (Child, String) {
    let mut python = Command::new(python314());
    python.args(["-c", code]);
    saying(python)
}

/// `command` started with its stdout ours, and its first line of output
/// (trimmed).
pub fn saying(mut command: Command) -> (Child, String) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_owned())
}
