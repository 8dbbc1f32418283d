//! The text of the source lines a stack shows, read by the client (the
//! controller never reads files for a client).
//!
//! A frame's file is the code object's `co_filename`: an absolute path, or
//! one relative to the process's working directory. Files are opened by
//! [`Proc::open_in_cwd`], which finds that directory through the process's
//! own `/proc` entry (so it follows the process, not this client), opens
//! regular files only, none of the kernel's (`/proc`, `/sys`, `/dev`: a
//! frame naming `/proc/self/environ` would show this client's own
//! environment), and never blocks or acts on a device, even when a symlink
//! is swapped meanwhile. NUL bytes are dropped from the lines (the
//! renderer escapes other control characters). Each file is read once, at most
//! [`FILE_LIMIT`] bytes of it, and at most [`TOTAL_LIMIT`] bytes in all;
//! a line past those gets no text. Anything unreadable gives no line, and
//! no error.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::core::stacks::ProcessStacks;
use crate::core::Pid;
use crate::proc::Proc;

/// The most read of one file.
pub(crate) const FILE_LIMIT: usize = 1024 * 1024;
/// The most read of all the files, for one stack output.
pub(crate) const TOTAL_LIMIT: usize = 4 * 1024 * 1024;

/// A source file as the processes name it: an absolute path (the same
/// file for every process), or a relative one of one process.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Named {
    /// The process whose working directory a relative path is in; `None`
    /// for an absolute path.
    process: Option<Pid>,
    path: PathBuf,
}

/// Source files read so far, each once.
#[derive(Debug)]
pub(crate) struct Sources {
    /// A file's lines, or `None` when it could not be read.
    files: HashMap<Named, Option<Vec<String>>>,
    /// Bytes read from all files.
    read: usize,
    file_limit: usize,
    total_limit: usize,
}

impl Sources {
    pub(crate) fn new() -> Sources {
        Sources::with_limits(FILE_LIMIT, TOTAL_LIMIT)
    }

    fn with_limits(file_limit: usize, total_limit: usize) -> Sources {
        Sources {
            files: HashMap::new(),
            read: 0,
            file_limit,
            total_limit,
        }
    }

    /// Fills in the `source` of every frame whose line can be read.
    pub(crate) fn fill(&mut self, stacks: &mut [ProcessStacks]) {
        for process in stacks {
            for thread in &mut process.threads {
                for frame in &mut thread.frames {
                    if frame.source.is_none() {
                        if let Some(line) = frame.line {
                            frame.source = self.line(process.pid, &frame.file, line);
                        }
                    }
                }
            }
        }
    }

    /// Line `line` (from 1) of `file` as process `pid` names it, trimmed;
    /// `None` when it cannot be read or is blank.
    pub(crate) fn line(&mut self, pid: Pid, file: &str, line: u32) -> Option<String> {
        let named = resolve(pid, file)?;
        if !self.files.contains_key(&named) {
            let budget = self
                .file_limit
                .min(self.total_limit.saturating_sub(self.read));
            if budget == 0 {
                return None;
            }
            let lines = open(pid, &named.path)
                .and_then(|file| read_lines(file, budget))
                .map(|(lines, read)| {
                    self.read += read;
                    lines
                });
            self.files.insert(named.clone(), lines.ok());
        }
        let lines = self.files.get(&named)?.as_ref()?;
        let text = lines
            .get(usize::try_from(line).ok()?.checked_sub(1)?)?
            .trim();
        (!text.is_empty()).then(|| text.to_owned())
    }
}

/// Which file `file` is, for process `pid`; `None` for names that are no
/// path (`<string>`, `<frozen importlib._bootstrap>`) and empty ones.
pub(crate) fn resolve(pid: Pid, file: &str) -> Option<Named> {
    if file.is_empty() || file.starts_with('<') || file.contains('\0') {
        return None;
    }
    let path = PathBuf::from(file);
    Some(Named {
        process: (!path.is_absolute()).then_some(pid),
        path,
    })
}

/// Opens `path` as process `pid` names it: a regular file, without
/// blocking.
fn open(pid: Pid, path: &Path) -> std::io::Result<File> {
    let process = Proc::open(pid)?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "gone"))?;
    process.open_in_cwd(path)
}

/// At most `limit` bytes of `file`, as lines (UTF-8, invalid bytes
/// replaced, NULs dropped; a line cut by the limit left out), and the
/// bytes read.
fn read_lines(file: File, limit: usize) -> std::io::Result<(Vec<String>, usize)> {
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    let read = bytes.len().min(limit);
    if bytes.len() > limit {
        // Cut: the last line may be partial.
        let end = bytes[..limit]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        bytes.truncate(end);
    }
    bytes.retain(|&b| b != 0);
    let text = String::from_utf8_lossy(&bytes);
    Ok((text.lines().map(str::to_owned).collect(), read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stacks::{Frame, ThreadStack};

    fn me() -> Pid {
        Pid::this()
    }

    fn file(dir: &Path, name: &str, text: &[u8]) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn lines_of_a_real_file_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(
            dir.path(),
            "app.py",
            b"import time\n\ndef work():\n    time.sleep(1)   \r\n",
        );
        let mut sources = Sources::new();
        assert_eq!(sources.line(me(), &path, 1).as_deref(), Some("import time"));
        assert_eq!(sources.line(me(), &path, 2), None, "blank");
        assert_eq!(
            sources.line(me(), &path, 4).as_deref(),
            Some("time.sleep(1)")
        );
        assert_eq!(sources.line(me(), &path, 5), None, "past the end");
        assert_eq!(sources.line(me(), &path, 0), None, "lines count from 1");
    }

    #[test]
    fn a_file_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "app.py", b"one\ntwo\n");
        let mut sources = Sources::new();
        assert_eq!(sources.line(me(), &path, 2).as_deref(), Some("two"));
        std::fs::write(&path, b"changed\nsince\n").unwrap();
        assert_eq!(sources.line(me(), &path, 1).as_deref(), Some("one"));
        assert_eq!(sources.read, 8);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "latin1.py", b"s = '\xe9t\xe9'\n");
        assert_eq!(
            Sources::new().line(me(), &path, 1).as_deref(),
            Some("s = '\u{fffd}t\u{fffd}'")
        );
    }

    #[test]
    fn nuls_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "nul.py", b"x = 1\0\0  # one\n\0\n");
        let mut sources = Sources::new();
        assert_eq!(
            sources.line(me(), &path, 1).as_deref(),
            Some("x = 1  # one")
        );
        assert_eq!(sources.line(me(), &path, 2), None, "blank once dropped");
    }

    #[test]
    fn the_kernel_s_files_give_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("environ.py");
        std::os::unix::fs::symlink("/proc/self/environ", &link).unwrap();
        let mut sources = Sources::new();
        for path in [
            "/proc/self/environ",
            link.to_str().unwrap(),
            "/proc/self/status",
        ] {
            assert_eq!(sources.line(me(), path, 1), None, "{path}");
        }
        assert_eq!(sources.read, 0);
    }

    #[test]
    fn missing_files_and_names_that_are_no_path_give_nothing() {
        let mut sources = Sources::new();
        assert_eq!(sources.line(me(), "/nonexistent/heli/app.py", 1), None);
        assert_eq!(sources.line(me(), "<string>", 1), None);
        assert_eq!(sources.line(me(), "<frozen importlib._bootstrap>", 1), None);
        assert_eq!(sources.line(me(), "", 1), None);
        assert_eq!(resolve(me(), "<stdin>"), None);
    }

    #[test]
    fn a_directory_or_a_device_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut sources = Sources::new();
        assert_eq!(sources.line(me(), dir.path().to_str().unwrap(), 1), None);
        assert_eq!(sources.line(me(), "/dev/zero", 1), None);
        assert_eq!(sources.read, 0);
    }

    #[test]
    fn a_fifo_is_skipped_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("app.py");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (done, finished) = std::sync::mpsc::channel();
        let path = fifo.to_str().unwrap().to_owned();
        std::thread::spawn(move || {
            let _ = done.send(Sources::new().line(Pid::this(), &path, 1));
        });
        let line = finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO named as a source file blocked");
        assert_eq!(line, None);
        // Opened (and refused) without waiting for a writer.
        let (done, opened) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(open(Pid::this(), &fifo).map(drop).map_err(|e| e.kind()));
        });
        let opened = opened
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a FIFO blocked");
        assert_eq!(opened, Err(std::io::ErrorKind::InvalidInput));
    }

    #[test]
    fn a_huge_file_is_read_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let line = format!("x = {}\n", "1".repeat(95));
        assert_eq!(line.len(), 100);
        let path = file(dir.path(), "huge.py", line.repeat(30_000).as_bytes());
        let mut sources = Sources::with_limits(1000, 1500);
        let full = line.trim();
        assert_eq!(sources.line(me(), &path, 1).as_deref(), Some(full));
        assert_eq!(sources.line(me(), &path, 10).as_deref(), Some(full));
        assert_eq!(sources.line(me(), &path, 11), None, "past the file limit");
        assert_eq!(sources.read, 1000);
        // What is left of the total goes to the next file, then nothing.
        let other = file(dir.path(), "other.py", line.repeat(10).as_bytes());
        assert_eq!(sources.line(me(), &other, 5).as_deref(), Some(full));
        assert_eq!(sources.line(me(), &other, 6), None);
        assert_eq!(sources.read, 1500);
        let third = file(dir.path(), "third.py", b"x = 1\n");
        assert_eq!(sources.line(me(), &third, 1), None, "no budget left");
        // The real limits: a file of 3 MB gives its first megabyte.
        let mut sources = Sources::new();
        assert_eq!(sources.line(me(), &path, 10_000).as_deref(), Some(full));
        assert_eq!(sources.line(me(), &path, 10_486), None);
        assert_eq!(sources.read, FILE_LIMIT);
    }

    #[test]
    fn relative_paths_are_the_process_s_working_directory_s() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pkg")).unwrap();
        file(dir.path(), "pkg/app.py", b"print('here')\n");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(dir.path())
            .spawn()
            .unwrap();
        let pid = Pid::new(child.id()).unwrap();
        let line = Sources::new().line(pid, "pkg/app.py", 1);
        let ours = Sources::new().line(me(), "pkg/app.py", 1);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(line.as_deref(), Some("print('here')"));
        assert_eq!(ours, None, "not ours");
        // A relative path is each process's own; an absolute one is shared.
        assert_eq!(
            resolve(pid, "pkg/app.py"),
            Some(Named {
                process: Some(pid),
                path: PathBuf::from("pkg/app.py")
            })
        );
        assert_ne!(resolve(pid, "pkg/app.py"), resolve(me(), "pkg/app.py"));
        assert_eq!(resolve(pid, "/srv/app.py"), resolve(me(), "/srv/app.py"));
    }

    #[test]
    fn stacks_are_filled_where_lines_are_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "app.py", b"def main():\n    serve()\n");
        let mut thread = ThreadStack::new(7);
        thread.frames = vec![
            Frame::new("main", path.clone(), Some(2)),
            Frame::new("serve", "/nonexistent/lib.py", Some(1)),
            Frame::new("<module>", path.clone(), None),
        ];
        let mut process = ProcessStacks::new(me());
        process.threads.push(thread);
        let mut stacks = [process];
        Sources::new().fill(&mut stacks);
        let sources: Vec<_> = stacks[0].threads[0]
            .frames
            .iter()
            .map(|frame| frame.source.as_deref())
            .collect();
        assert_eq!(sources, [Some("serve()"), None, None]);
    }
}
