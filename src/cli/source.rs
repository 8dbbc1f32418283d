//! The text of the source lines a stack shows, read by the client (the
//! controller never reads files for a client).
//!
//! A frame's file is the code object's `co_filename`: an absolute path, or
//! one relative to the process's working directory (read through
//! `/proc/PID/cwd`, which follows it even after a `chdir` of the client).
//! Only regular files are read: a FIFO, a device or a directory named as a
//! file name is skipped without being opened for reading (a FIFO would
//! block, a device could act on the open). Each file is read once, at most
//! [`FILE_LIMIT`] bytes of it, and at most [`TOTAL_LIMIT`] bytes in all;
//! a line past those gets no text. Anything unreadable gives no line, and
//! no error.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::core::stacks::ProcessStacks;
use crate::core::Pid;

/// The most read of one file.
pub(crate) const FILE_LIMIT: usize = 1024 * 1024;
/// The most read of all the files, for one stack output.
pub(crate) const TOTAL_LIMIT: usize = 4 * 1024 * 1024;

/// Source files read so far, each once.
#[derive(Debug)]
pub(crate) struct Sources {
    /// By the path opened: a file's lines, or `None` when it could not be
    /// read.
    files: HashMap<PathBuf, Option<Vec<String>>>,
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
        let path = resolve(pid, file)?;
        if !self.files.contains_key(&path) {
            let budget = self
                .file_limit
                .min(self.total_limit.saturating_sub(self.read));
            if budget == 0 {
                return None;
            }
            let lines = read_lines(&path, budget).map(|(lines, read)| {
                self.read += read;
                lines
            });
            self.files.insert(path.clone(), lines.ok());
        }
        let lines = self.files.get(&path)?.as_ref()?;
        let text = lines
            .get(usize::try_from(line).ok()?.checked_sub(1)?)?
            .trim();
        (!text.is_empty()).then(|| text.to_owned())
    }
}

/// Where `file` is, for process `pid`: an absolute path as it is, a
/// relative one under `/proc/PID/cwd`; `None` for names that are no path
/// (`<string>`, `<frozen importlib._bootstrap>`) and empty ones.
pub(crate) fn resolve(pid: Pid, file: &str) -> Option<PathBuf> {
    if file.is_empty() || file.starts_with('<') || file.contains('\0') {
        return None;
    }
    let path = Path::new(file);
    Some(if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new("/proc")
            .join(pid.to_string())
            .join("cwd")
            .join(path)
    })
}

/// At most `limit` bytes of the regular file at `path`, as lines (UTF-8,
/// invalid bytes replaced; a line cut by the limit left out), and the bytes
/// read.
fn read_lines(path: &Path, limit: usize) -> std::io::Result<(Vec<String>, usize)> {
    // Not opened at all unless a regular file: opening a device may act.
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    File::take(file, limit as u64 + 1).read_to_end(&mut bytes)?;
    let read = bytes.len().min(limit);
    if bytes.len() > limit {
        // Cut: the last line may be partial.
        let end = bytes[..limit]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        bytes.truncate(end);
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok((text.lines().map(str::to_owned).collect(), read))
}

/// Opens `path` for reading if it is a regular file. It may have been
/// replaced by a FIFO since it was looked at: the open does not wait for a
/// writer, and what was opened is checked.
fn open_regular(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(file)
}

fn not_regular() -> std::io::Error {
    std::io::Error::other("not a regular file")
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
        // Swapped in after the type check, it is opened without waiting
        // for a writer, and refused.
        let (done, opened) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(open_regular(&fifo).map(drop).map_err(|e| e.to_string()));
        });
        let opened = opened
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a FIFO blocked");
        assert_eq!(opened, Err("not a regular file".to_owned()));
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
        assert_eq!(
            resolve(pid, "pkg/app.py"),
            Some(PathBuf::from(format!("/proc/{pid}/cwd/pkg/app.py")))
        );
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
