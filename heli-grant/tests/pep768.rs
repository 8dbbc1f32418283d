//! PEP 768 natively, on real processes: the ELF and `_Py_DebugOffsets`
//! parsing on the real CPython binaries (and corrupt copies), locating
//! `_PyRuntime` in a static `python3.14`, a `libpython3.14.so` embedding
//! host and a deleted executable, the error for each kind of target, remote
//! execution, grants by `prctl`, and stack dumps checked against what the
//! target knows of itself.
//!
//! The targets are Debian's CPython 3.14 (`$HELI_PYTHON` or
//! `py314/usr/bin/python3.14` in scripts/lib/deps.sh's directory) and pyenv's 3.13
//! (`$HELI_PYTHON313`); a test whose Python is missing fails saying how to
//! get it (never a skip).
//! Each test holds a global lock (timing tests must not overlap) and a
//! watchdog that aborts the run after a minute.

mod common;

use common::{
    as_nobody, build_c, deps_dir, existing, heli_dirs, python314, serial, tempdir, wait_for,
    Target, SOON,
};

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use heli_core::stacks::ThreadStack;
use heli_core::Pid;
use heli_grant::{
    remote_exec, remote_exec_prctl, remote_prctl, stack_dump, DebugOffsets, Pep768ErrorKind,
    PtraceScope, PyProcess, PyRuntimeSection,
};
use heli_proc::{Mapping, Proc};

// ---------------------------------------------------------------- harness

/// pyenv's CPython 3.13, if it is installed.
fn python313() -> Option<PathBuf> {
    existing(
        "HELI_PYTHON313",
        "/root/.pyenv/versions/3.13.0/bin/python3.13",
    )
}

/// A file `name` holding `text`, in a test directory of its own.
fn written(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempdir();
    let path = dir.path().join(name);
    fs::write(&path, text).unwrap();
    (dir, path)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Python that counts in a loop forever, printing `ready` first.
const BUSY_PY: &str = "
import os
print('ready', os.getpid(), flush=True)
def spin():
    i = 0
    while True:
        i += 1
spin()
";

const SLEEP_PY: &str = "import time\nprint('ready', flush=True)\ntime.sleep(600)";

// ---------------------------------------------------------------- ELF files

/// The note's byte positions and the values measured on Debian's 3.14.10
/// (the unit tests of `DebugOffsets` share them).
const NOTE_TABLE: &[(&str, &str, usize, u64)] = include!("data/debug_offsets_3_14_10.rs");

fn libpython314() -> Option<PathBuf> {
    let python = python314();
    let lib = python
        .parent()?
        .parent()?
        .join("lib/x86_64-linux-gnu/libpython3.14.so.1.0");
    lib.exists().then_some(lib)
}

/// `readelf`'s view of `.PyRuntime`: address, file offset.
fn readelf_section(path: &Path) -> Option<(u64, u64)> {
    let output = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(path)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text.lines().find(|line| line.contains(".PyRuntime"))?;
    let fields: Vec<&str> = line.split(']').nth(1)?.split_whitespace().collect();
    Some((
        u64::from_str_radix(fields[2], 16).ok()?,
        u64::from_str_radix(fields[3], 16).ok()?,
    ))
}

#[test]
fn elf_and_offsets_of_the_real_binaries() {
    let _serial = serial("elf_and_offsets_of_the_real_binaries");
    let python = python314();
    let mut files = vec![python.clone()];
    files.extend(libpython314());
    for file in &files {
        let section = PyRuntimeSection::find(file).unwrap().expect(".PyRuntime");
        if let Some((addr, offset)) = readelf_section(file) {
            assert_eq!(
                (section.sh_addr, section.sh_offset),
                (addr, offset),
                "{file:?}"
            );
        }
        let raw = section
            .read_initial_bytes(file, DebugOffsets::SIZE)
            .unwrap();
        let offsets = DebugOffsets::parse(&raw).unwrap();
        assert_eq!((offsets.version().major, offsets.version().minor), (3, 14));
        assert_eq!(offsets.fields().count(), 95);
        for &(group, field, position, value) in NOTE_TABLE {
            assert_eq!(DebugOffsets::position(group, field), Some(position));
            assert_eq!(
                u64::from_le_bytes(raw[position..position + 8].try_into().unwrap()),
                offsets.get(group, field).unwrap()
            );
            // The values are the note's for the release it measured.
            if offsets.version().to_string() == "3.14.10" && group != "header" {
                assert_eq!(offsets.get(group, field), Some(value), "{group}.{field}");
            }
        }
        eprintln!(
            "{}: CPython {}, .PyRuntime at {:#x} (load base {:#x})",
            file.display(),
            offsets.version(),
            section.sh_addr,
            section.load_base
        );
    }
    // The 3.13 library has the cookie, and is refused for its version.
    if let Some(python313) = python313() {
        let lib = python313
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("lib/libpython3.13.so.1.0");
        let file = if lib.exists() { lib } else { python313 };
        let section = PyRuntimeSection::find(&file).unwrap().expect(".PyRuntime");
        let raw = section.read_initial_bytes(&file, 16).unwrap();
        let err = DebugOffsets::parse(&raw).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::TooOld, "{err}");
        assert!(err.to_string().contains("3.13.0"), "{err}");
    }
    // Not an ELF file; an ELF file without the section.
    assert_eq!(
        PyRuntimeSection::find(Path::new("/etc/passwd"))
            .unwrap_err()
            .kind(),
        Pep768ErrorKind::Corrupt
    );
    assert_eq!(
        PyRuntimeSection::find(Path::new("/bin/sleep")).unwrap(),
        None
    );
    assert_eq!(
        PyRuntimeSection::find(Path::new("/nonexistent"))
            .unwrap_err()
            .kind(),
        Pep768ErrorKind::Io
    );
}

#[test]
fn corrupt_copies_of_the_real_binary() {
    let _serial = serial("corrupt_copies_of_the_real_binary");
    let python = python314();
    let elf = fs::read(&python).unwrap();
    let good = PyRuntimeSection::parse(&elf).unwrap().unwrap();
    let le64 = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let shoff = le64(40) as usize;
    // Truncated anywhere before the end of the section headers: an error.
    for len in [
        0,
        3,
        16,
        63,
        64,
        200,
        4096,
        shoff - 1,
        shoff + 100,
        elf.len() - 1,
    ] {
        let err = PyRuntimeSection::parse(&elf[..len]).unwrap_err();
        assert!(
            matches!(err.kind(), Pep768ErrorKind::Corrupt | Pep768ErrorKind::Io),
            "{len} bytes: {err}"
        );
    }
    let patched = |at: usize, bytes: &[u8]| {
        let mut bad = elf.clone();
        bad[at..at + bytes.len()].copy_from_slice(bytes);
        PyRuntimeSection::parse(&bad)
    };
    // Wrong magic, 32-bit class, section table far away, absurd counts,
    // names in a section that does not exist, no program headers.
    assert!(patched(0, b"\x7fELG").is_err());
    assert_eq!(
        patched(4, &[1]).unwrap_err().kind(),
        Pep768ErrorKind::Unsupported
    );
    assert!(patched(40, &u64::MAX.to_le_bytes()).is_err());
    assert!(patched(40, &(elf.len() as u64 - 10).to_le_bytes()).is_err());
    assert!(patched(60, &0xfffeu16.to_le_bytes()).is_err());
    assert!(patched(62, &0xfff0u16.to_le_bytes()).is_err());
    assert!(patched(56, &0u16.to_le_bytes()).is_err());
    assert!(patched(58, &8u16.to_le_bytes()).is_err());
    // Every section's name offset pointing past the name table: no section
    // found, or an error; never a panic. Likewise for random garbage in
    // the section headers.
    let shentsize = u16::from_le_bytes([elf[58], elf[59]]) as usize;
    let shnum = u16::from_le_bytes([elf[60], elf[61]]) as usize;
    let mut bad = elf.clone();
    for i in 0..shnum {
        let at = shoff + i * shentsize;
        bad[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    assert_eq!(PyRuntimeSection::parse(&bad).unwrap(), None);
    let mut seed = 0x9e37_79b9u32;
    for _ in 0..2000 {
        let mut bad = elf[..].to_vec();
        for _ in 0..4 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let at = shoff + (seed as usize >> 4) % (shnum * shentsize);
            bad[at] = (seed >> 24) as u8;
        }
        match PyRuntimeSection::parse(&bad) {
            Ok(Some(section)) if section == good => {}
            _ => {}
        }
    }
    // A bad cookie in the section's data.
    let mut raw = good
        .read_initial_bytes(&python, DebugOffsets::SIZE)
        .unwrap();
    raw[3] ^= 0x20;
    assert_eq!(
        DebugOffsets::parse(&raw).unwrap_err().kind(),
        Pep768ErrorKind::NotPython
    );
}

// ---------------------------------------------------------------- locating

#[test]
fn finds_the_runtime_of_a_static_python() {
    let _serial = serial("finds_the_runtime_of_a_static_python");
    let python = python314();
    let target = Target::python(SLEEP_PY);
    let start = Instant::now();
    let process = PyProcess::open(target.pid).unwrap();
    eprintln!("opened PID {} in {:?}", target.pid, start.elapsed());
    assert_eq!(process.pid(), target.pid);
    assert!(
        process.library().ends_with("python3.14"),
        "{:?}",
        process.library()
    );
    assert_eq!((process.version().major, process.version().minor), (3, 14));
    // What the running interpreter holds is what it was built with.
    let section = PyRuntimeSection::find(&python).unwrap().unwrap();
    let built = section
        .read_initial_bytes(&python, DebugOffsets::SIZE)
        .unwrap();
    assert_eq!(
        process.debug_offsets(),
        &DebugOffsets::parse(&built).unwrap()
    );
    // A non-PIE executable: the section's link-time address.
    if section.load_base != 0 {
        assert_eq!(process.runtime_address(), section.sh_addr);
    }
    assert!(process.remote_debugging_enabled().unwrap());
}

const EMBED_HOST_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
    if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    void (*init)(void) = (void (*)(void))dlsym(lib, "Py_Initialize");
    int (*run)(const char *) = (int (*)(const char *))dlsym(lib, "PyRun_SimpleString");
    if (!init || !run) { fprintf(stderr, "dlsym: %s\n", dlerror()); return 1; }
    init();
    return run(argv[2]) ? 1 : 0;
}
"#;

/// A C program that loads libpython3.14.so and runs code with it, as an
/// application embedding Python does (no thread is the "main" one there).
fn embedding_host() -> PathBuf {
    build_c("heli-embed-host", EMBED_HOST_C, &["-ldl"])
}

/// Runs `code` in the embedding host with the project's libpython3.14.so
/// (and the C library it was built for).
fn embedded(code: &str) -> Option<Target> {
    let lib = libpython314()?;
    let libdir = lib.parent()?;
    let loader = libdir.join("ld-linux-x86-64.so.2");
    let home = libdir.parent()?.parent()?;
    let mut command = Command::new(loader);
    command
        .arg("--library-path")
        .arg(libdir)
        .arg(embedding_host())
        .arg(&lib)
        .arg(code)
        .env("PYTHONHOME", home);
    Some(Target::spawn(&mut command))
}

#[test]
fn finds_the_runtime_in_libpython_of_an_embedding_host() {
    let _serial = serial("finds_the_runtime_in_libpython_of_an_embedding_host");
    let Some(target) = embedded(
        "import time\ndef host_loop():\n    print('ready', flush=True)\n    \
         while True:\n        time.sleep(0.01)\nhost_loop()",
    ) else {
        panic!("no libpython3.14.so: run scripts/install-python314.sh (libpython3.14 package)");
    };
    let process = PyProcess::open(target.pid).unwrap();
    assert!(
        process.library().ends_with("libpython3.14.so.1.0"),
        "{:?}",
        process.library()
    );
    let section = PyRuntimeSection::find(process.library()).unwrap().unwrap();
    assert_eq!(section.load_base, 0);
    // No main thread in an embedding host: the dump still finds the one
    // thread, and remote execution uses it.
    let stacks = process.stack_dump().unwrap();
    assert_eq!(stacks.len(), 1, "{stacks:?}");
    assert!(!stacks[0].main);
    assert_eq!(stacks[0].native_thread_id, u64::from(target.pid));
    let names: Vec<&str> = stacks[0]
        .frames
        .iter()
        .map(|f| f.function.as_str())
        .collect();
    assert_eq!(names, ["<module>", "host_loop"]);
    let (_dir, script) = written("hello.py", "print('embedded ran', flush=True)\n");
    let request = process.remote_exec(&script).unwrap();
    assert_eq!(request.thread(), u64::from(target.pid));
    request.wait_started(SOON).unwrap();
    assert_eq!(target.lines.skip_to("embedded"), "embedded ran");
}

#[test]
fn finds_the_runtime_of_a_deleted_executable() {
    let _serial = serial("finds_the_runtime_of_a_deleted_executable");
    let python = python314();
    let home = python.parent().unwrap().parent().unwrap();
    let dir = tempdir();
    let copy = dir.path().join("python3.14-copy");
    fs::copy(&python, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    let target = Target::spawn(
        Command::new(&copy)
            .args(["-c", SLEEP_PY])
            .env("PYTHONHOME", home),
    );
    fs::remove_file(&copy).unwrap();
    let maps = Proc::open_existing(target.pid).unwrap().maps().unwrap();
    let deleted = |m: &Mapping| {
        m.file()
            .is_some_and(|f| f.ends_with("python3.14-copy (deleted)"))
    };
    assert!(maps.iter().any(deleted), "{maps:#?}");
    let process = PyProcess::open(target.pid).unwrap();
    assert_eq!(
        process.library(),
        Path::new(&format!("/proc/{}/exe", target.pid))
    );
    assert!(!process.stack_dump().unwrap()[0].frames.is_empty());
}

// ---------------------------------------------------------------- errors

#[test]
fn refuses_python_3_13() {
    let _serial = serial("refuses_python_3_13");
    let python = python313().expect("Python 3.13 not found: set HELI_PYTHON313");
    let target = Target::spawn(Command::new(python).args(["-c", SLEEP_PY]));
    let err = PyProcess::open(target.pid).unwrap_err();
    assert_eq!(err.kind(), Pep768ErrorKind::TooOld, "{err}");
    assert!(err.to_string().contains("CPython 3.13.0"), "{err}");
    assert!(err.to_string().contains("3.14"), "{err}");
    assert_eq!(
        err.python_version().map(|v| (v.major, v.minor)),
        Some((3, 13))
    );
    let err = stack_dump(target.pid).unwrap_err();
    assert_eq!(err.kind(), Pep768ErrorKind::TooOld);
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::Unsupported);
    eprintln!("3.13: {io}");
}

#[test]
fn refuses_a_process_that_is_not_python() {
    let _serial = serial("refuses_a_process_that_is_not_python");
    let mut child = Command::new("sleep").arg("600").spawn().unwrap();
    let err = PyProcess::open(Pid::new(child.id()).unwrap()).unwrap_err();
    assert_eq!(err.kind(), Pep768ErrorKind::NotPython, "{err}");
    assert!(err.to_string().contains("not a Python process"), "{err}");
    eprintln!("sleep: {err}");
    let err = remote_exec(Pid::new(child.id()).unwrap(), Path::new("/dev/null")).unwrap_err();
    assert_eq!(err.kind(), Pep768ErrorKind::NotPython);
    child.kill().unwrap();
    child.wait().unwrap();
    let err = stack_dump(Pid::new(child.id()).unwrap()).unwrap_err();
    assert_eq!(err.kind(), Pep768ErrorKind::NoSuchProcess, "{err}");
}

#[test]
fn reports_remote_debugging_disabled() {
    let _serial = serial("reports_remote_debugging_disabled");
    let python = python314();
    let (_dir, script) = written("never.py", "print('must not run', flush=True)\n");
    let by_env = Target::spawn(
        Command::new(&python)
            .args(["-c", BUSY_PY])
            .env("PYTHON_DISABLE_REMOTE_DEBUG", "1"),
    );
    let by_option =
        Target::spawn(Command::new(&python).args(["-X", "disable-remote-debug", "-c", BUSY_PY]));
    for (target, switch) in [
        (&by_env, "PYTHON_DISABLE_REMOTE_DEBUG"),
        (&by_option, "-X disable-remote-debug"),
    ] {
        let process = PyProcess::open(target.pid).unwrap();
        assert!(!process.remote_debugging_enabled().unwrap());
        let err = process.remote_exec(&script).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::RemoteDebugDisabled, "{err}");
        assert!(err.to_string().contains(switch), "{err}");
        eprintln!("{err}");
        let err = remote_exec_prctl(target.pid, Pid::this(), SOON).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::RemoteDebugDisabled, "{err}");
        // Reading stacks needs no consent.
        let stacks = process.stack_dump().unwrap();
        assert!(stacks[0].frames.iter().any(|f| f.function == "spin"));
    }
    by_env.lines.none_within(Duration::from_millis(200));
}

#[test]
fn permission_denied_explains_ptrace_rights() {
    let _serial = serial("permission_denied_explains_ptrace_rights");
    let target = Target::python(SLEEP_PY);
    let pid = target.pid;
    let err = as_nobody(move || PyProcess::open(pid).unwrap_err());
    assert_eq!(err.kind(), Pep768ErrorKind::PermissionDenied, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("ptrace") && text.contains("PR_SET_PTRACER"),
        "{text}"
    );
    eprintln!("as nobody: {text}");
}

// ---------------------------------------------------------------- remote exec

#[test]
fn remote_exec_runs_a_script_in_a_busy_target() {
    let _serial = serial("remote_exec_runs_a_script_in_a_busy_target");
    let target = Target::python(BUSY_PY);
    let dir = tempdir();
    let script = dir.path().join("hello.py");
    let marker = dir.path().join("marker");
    fs::write(
        &script,
        format!(
            "import os, sys\nopen({marker:?}, 'w').write(str(os.getpid()))\n\
             print('ran in', sys._getframe(1).f_code.co_name, __name__, flush=True)\n",
        ),
    )
    .unwrap();
    let request = remote_exec(target.pid, &script).unwrap();
    assert_eq!(request.thread(), u64::from(target.pid));
    assert_eq!(request.script(), script);
    let waited = request.wait_started(SOON).unwrap();
    assert!(!request.is_pending().unwrap());
    assert_eq!(target.lines.skip_to("ran in"), "ran in spin builtins");
    assert_eq!(fs::read_to_string(&marker).unwrap(), target.pid.to_string());
    eprintln!("the busy target began the script after {waited:?}");
    // Again, and again: each request runs once.
    for _ in 0..5 {
        remote_exec(target.pid, &script)
            .unwrap()
            .wait_started(SOON)
            .unwrap();
        target.lines.skip_to("ran in");
    }
    // A relative path is made absolute from our working directory.
    let cwd = std::env::current_dir().unwrap();
    let relative = pathdiff(&script, &cwd);
    let request = remote_exec(target.pid, &relative).unwrap();
    assert_eq!(request.script(), cwd.join(&relative));
    request.wait_started(SOON).unwrap();
    target.lines.skip_to("ran in");
}

/// `path` relative to `base` (both absolute).
fn pathdiff(path: &Path, base: &Path) -> PathBuf {
    let ups = base.components().count() - 1;
    let mut relative = PathBuf::new();
    for _ in 0..ups {
        relative.push("..");
    }
    relative.join(path.strip_prefix("/").unwrap())
}

#[test]
fn remote_exec_refuses_bad_paths() {
    let _serial = serial("remote_exec_refuses_bad_paths");
    let target = Target::python(SLEEP_PY);
    let process = PyProcess::open(target.pid).unwrap();
    let size = process
        .debug_offsets()
        .get("debugger_support", "debugger_script_path_size")
        .unwrap() as usize;
    // 511 bytes pass the length check (then fail for not existing), 512 do
    // not.
    let dir = tempdir();
    let base = dir.path().to_str().unwrap().len() + 1;
    for (len, fits) in [(size - 1, true), (size, false)] {
        let path = dir.path().join("x".repeat(len - base));
        assert_eq!(path.as_os_str().len(), len);
        let err = process.remote_exec(&path).unwrap_err();
        assert_eq!(err.kind(), Pep768ErrorKind::BadPath, "{err}");
        assert_eq!(err.to_string().contains("at most 511"), !fits, "{err}");
    }
    let err = process
        .remote_exec(Path::new("/no/such/script.py"))
        .unwrap_err();
    assert_eq!(err.kind(), Pep768ErrorKind::BadPath);
}

#[test]
fn remote_exec_chooses_the_main_interpreter() {
    let _serial = serial("remote_exec_chooses_the_main_interpreter");
    // A subinterpreter, newer than the main one, heads the list.
    let target = Target::python(
        "import threading
from concurrent import interpreters
sub = interpreters.create()
threading.Thread(target=sub.exec, args=('import time; time.sleep(600)',), daemon=True).start()
import time; time.sleep(0.2)
print('ready', flush=True)
def spin():
    while True:
        pass
spin()",
    );
    let (_dir, script) = written(
        "which.py",
        "from concurrent import interpreters\nprint('interp', interpreters.get_current().id, \
         flush=True)\n",
    );
    remote_exec(target.pid, &script)
        .unwrap()
        .wait_started(SOON)
        .unwrap();
    assert_eq!(target.lines.skip_to("interp"), "interp 0");
    let stacks = stack_dump(target.pid).unwrap();
    let interpreters: Vec<u64> = stacks.iter().map(|s| s.interpreter_id).collect();
    assert!(
        interpreters.contains(&0) && interpreters.iter().any(|&id| id != 0),
        "{stacks:?}"
    );
    assert_eq!(stacks[0].interpreter_id, 0);
}

#[test]
fn remote_prctl_reports_the_call() {
    let _serial = serial("remote_prctl_reports_the_call");
    let target = Target::python(BUSY_PY);
    let pid = target.pid;
    let before = heli_dirs();
    // A per-thread setting anyone can read back: the timer slack of the
    // thread that ran the script (the main one).
    let slack = || {
        fs::read_to_string(format!("/proc/{pid}/timerslack_ns"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_ne!(slack(), "123457");
    let start = Instant::now();
    assert_eq!(
        remote_prctl(pid, libc::PR_SET_TIMERSLACK, 123_457, SOON).unwrap(),
        0
    );
    eprintln!(
        "first remote-exec prctl (the target imports ctypes): {:?}",
        start.elapsed()
    );
    assert_eq!(slack(), "123457");
    // A return value comes back as it is.
    assert_eq!(
        remote_prctl(pid, libc::PR_GET_DUMPABLE, 0, SOON).unwrap(),
        1
    );
    // An errno comes back as an error.
    let err = remote_prctl(pid, 0x7fff_0000, 0, SOON).unwrap_err();
    assert_eq!(err.kind(), Pep768ErrorKind::CallFailed, "{err}");
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    // The grant itself: refused without Yama, and the error says why.
    let me = Pid::this();
    match PtraceScope::current().unwrap() {
        PtraceScope::NoYama => {
            let err = remote_exec_prctl(pid, me, SOON).unwrap_err();
            assert_eq!(err.kind(), Pep768ErrorKind::CallFailed, "{err}");
            assert!(err.to_string().contains("Yama"), "{err}");
            eprintln!("without Yama: {err}");
        }
        _ => remote_exec_prctl(pid, me, SOON).unwrap(),
    }
    // Latency of a grant to a busy target.
    let mut samples = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        remote_prctl(pid, libc::PR_SET_TIMERSLACK, 50_000, SOON).unwrap();
        samples.push(start.elapsed());
    }
    let max = *samples.iter().max().unwrap();
    eprintln!(
        "remote-exec prctl round trip to a busy target: median {:?}, max {max:?}",
        median(samples)
    );
    // Nothing left behind, and the target carries on.
    assert_eq!(heli_dirs(), before);
    let mut target = target;
    assert!(target.alive());
}

#[test]
fn remote_prctl_times_out_on_a_target_blocked_in_c() {
    let _serial = serial("remote_prctl_times_out_on_a_target_blocked_in_c");
    let mut target = Target::python(&format!("{SLEEP_PY}\nprint('woke', flush=True)"));
    let before = heli_dirs();
    let timeout = Duration::from_millis(700);
    let start = Instant::now();
    let err = remote_prctl(target.pid, libc::PR_GET_DUMPABLE, 0, timeout).unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.kind(), Pep768ErrorKind::Timeout, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("within 0.7 s") && text.contains("blocked in C code"),
        "{text}"
    );
    assert!(took < timeout + Duration::from_millis(300), "took {took:?}");
    eprintln!("{text}");
    // The request was withdrawn and the files removed; the target sleeps on.
    let process = PyProcess::open(target.pid).unwrap();
    assert!(process.remote_debugging_enabled().unwrap());
    assert_eq!(heli_dirs(), before);
    target.lines.none_within(Duration::from_millis(100));
    assert!(target.alive());
}

#[test]
fn remote_prctl_waits_for_a_target_between_sleeps() {
    let _serial = serial("remote_prctl_waits_for_a_target_between_sleeps");
    let target = Target::python(
        "import time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.05)",
    );
    let mut samples = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(
            remote_prctl(target.pid, libc::PR_GET_DUMPABLE, 0, SOON).unwrap(),
            1
        );
        samples.push(start.elapsed());
    }
    eprintln!(
        "remote-exec prctl to a target sleeping 50 ms at a time: median {:?}",
        median(samples)
    );
}

// ---------------------------------------------------------------- stacks

/// A target whose threads' stacks the test knows: each line that matters
/// carries a `# @name` marker, found in the source to learn its number.
const THREADS_PY: &str = r#"import hashlib, os, threading, time

def sleeper_inner():
    time.sleep(600)  # @sleeper_sleep

def sleeper_outer():
    sleeper_inner()  # @sleeper_call

def busy_loop():
    x = 0
    while True:  # @busy_first
        x += 1
        if x % 1000 == 0:
            x -= 1000  # @busy_last

def busy_outer():
    busy_loop()  # @busy_call

def hash_forever(data):
    while True:
        hashlib.sha256(data).digest()  # @hash_call

def hash_outer():
    hash_forever(b"x" * (64 << 20))  # @hash_outer

def recurse(n):
    if n == 0:
        time.sleep(600)  # @recurse_sleep
    recurse(n - 1)  # @recurse_call

class Worker:
    def run_deep(self):
        recurse(17)  # @deep_call

ids = {}

def report(name):
    ids[name] = (threading.get_native_id(), threading.get_ident())

def start(name, target):
    def body():
        report(name)
        target()
    threading.Thread(target=body, name=name, daemon=True).start()

start("sleeper", sleeper_outer)
start("busy", busy_outer)
start("hasher", hash_outer)
start("deep", Worker().run_deep)
report("MainThread")
while len(ids) < 5:
    time.sleep(0.01)
print("ready", flush=True)
for name, (native, ident) in ids.items():
    print("tid", name, native, ident, flush=True)

def main_wait():
    time.sleep(600)  # @main_sleep

main_wait()  # @main_call
"#;

fn marker_lines(source: &str) -> HashMap<String, u32> {
    source
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let (_, marker) = line.split_once("# @")?;
            Some((marker.trim().to_owned(), i as u32 + 1))
        })
        .collect()
}

/// The threads' native and Python ids, by name, as the target printed them.
fn thread_ids(target: &Target, count: usize) -> HashMap<String, (u64, u64)> {
    let mut ids = HashMap::new();
    while ids.len() < count {
        let line = target.lines.skip_to("tid ");
        let fields: Vec<&str> = line.split_whitespace().collect();
        ids.insert(
            fields[1].to_owned(),
            (fields[2].parse().unwrap(), fields[3].parse().unwrap()),
        );
    }
    ids
}

fn frame_names(stack: &ThreadStack) -> Vec<&str> {
    stack.frames.iter().map(|f| f.function.as_str()).collect()
}

#[test]
fn stack_dump_of_a_multi_threaded_target() {
    let _serial = serial("stack_dump_of_a_multi_threaded_target");
    let (_dir, file) = written("threads.py", THREADS_PY);
    let filename = file.to_str().unwrap();
    let target = Target::spawn(Command::new(python314()).arg(&file));
    let ids = thread_ids(&target, 5);
    let lines = marker_lines(THREADS_PY);
    let line = |marker: &str| Some(lines[marker]);
    // Let the busy thread and the hasher run a little.
    thread::sleep(Duration::from_millis(100));
    for round in 0..20 {
        let stacks = stack_dump(target.pid).unwrap();
        assert_eq!(stacks.len(), 5, "{stacks:#?}");
        let by_tid: HashMap<u64, &ThreadStack> =
            stacks.iter().map(|s| (s.native_thread_id, s)).collect();
        let mut by_name: HashMap<&str, &ThreadStack> = HashMap::new();
        for (name, &(native, ident)) in &ids {
            let stack = by_tid[&native];
            by_name.insert(name, stack);
            assert_eq!(stack.thread_id, ident);
            // Python names its threads for the OS (the main one keeps the
            // program's name).
            if name != "MainThread" {
                assert_eq!(stack.name.as_deref(), Some(name.as_str()));
            }
            assert_eq!(stack.main, name == "MainThread");
            assert_eq!(stack.interpreter_id, 0);
            assert_eq!(stack.incomplete, None, "{stack}");
            assert!(stack
                .frames
                .iter()
                .all(|f| f.file == filename || f.file.contains("threading")));
        }
        // The main thread comes first, and sleeps in main_wait.
        assert!(stacks[0].main);
        let main = by_name["MainThread"];
        assert_eq!(frame_names(main), ["<module>", "main_wait"]);
        assert_eq!(main.frames[0].line, line("main_call"));
        assert_eq!(main.frames[1].line, line("main_sleep"));
        // The others run body() under threading's bootstrap.
        let ours = |stack: &ThreadStack| -> Vec<String> {
            let at = stack
                .frames
                .iter()
                .position(|f| f.function == "start.<locals>.body")
                .unwrap_or_else(|| panic!("no body() in {stack}"));
            assert!(stack.frames[..at]
                .iter()
                .all(|f| f.file.ends_with("threading.py")));
            stack.frames[at + 1..]
                .iter()
                .map(|f| f.function.clone())
                .collect()
        };
        let sleeper = by_name["sleeper"];
        assert_eq!(ours(sleeper), ["sleeper_outer", "sleeper_inner"]);
        let n = sleeper.frames.len();
        assert_eq!(sleeper.frames[n - 2].line, line("sleeper_call"));
        assert_eq!(sleeper.frames[n - 1].line, line("sleeper_sleep"));
        let busy = by_name["busy"];
        assert_eq!(ours(busy), ["busy_outer", "busy_loop"]);
        let busy_line = busy.frames.last().unwrap().line.unwrap();
        assert!(
            (lines["busy_first"]..=lines["busy_last"]).contains(&busy_line),
            "busy at line {busy_line}"
        );
        let hasher = by_name["hasher"];
        assert_eq!(ours(hasher), ["hash_outer", "hash_forever"]);
        let n = hasher.frames.len();
        assert_eq!(hasher.frames[n - 2].line, line("hash_outer"));
        let hash_line = hasher.frames[n - 1].line.unwrap();
        assert!(
            hash_line == lines["hash_call"] || hash_line == lines["hash_call"] - 1,
            "hasher at line {hash_line}"
        );
        let deep = by_name["deep"];
        let mut expected = vec!["Worker.run_deep".to_owned()];
        expected.extend(std::iter::repeat_n("recurse".to_owned(), 18));
        assert_eq!(ours(deep), expected);
        let n = deep.frames.len();
        assert_eq!(deep.frames[n - 19].line, line("deep_call"));
        assert!(deep.frames[n - 18..n - 1]
            .iter()
            .all(|f| f.line == line("recurse_call")));
        assert_eq!(deep.frames[n - 1].line, line("recurse_sleep"));
        if round == 0 {
            for stack in &stacks {
                eprint!("{stack}");
            }
        }
    }
}

/// py-spy's view of the same target, where py-spy can read CPython 3.14.
#[test]
fn stack_dump_agrees_with_py_spy() {
    let _serial = serial("stack_dump_agrees_with_py_spy");
    let Some(py_spy) = existing("HELI_PY_SPY", deps_dir().join("tools/bin/py-spy")) else {
        panic!("no py-spy: run scripts/test.sh (it installs py-spy) or set HELI_PY_SPY");
    };
    let (_dir, file) = written("threads.py", THREADS_PY);
    let target = Target::spawn(Command::new(python314()).arg(&file));
    thread_ids(&target, 5);
    let output = Command::new(&py_spy)
        .args(["dump", "--pid", &target.pid.to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} cannot read this CPython: {}",
        py_spy.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    // py-spy prints "    function (file:line)", innermost first, per thread.
    let text = String::from_utf8_lossy(&output.stdout);
    let ours = stack_dump(target.pid).unwrap();
    for stack in ours.iter().filter(|s| s.name.as_deref() != Some("busy")) {
        let section = text
            .split("Thread ")
            .find(|part| {
                part.contains(&format!("{:#x}", stack.thread_id))
                    || part.starts_with(&stack.native_thread_id.to_string())
            })
            .unwrap_or_else(|| {
                panic!("py-spy shows no thread {}:\n{text}", stack.native_thread_id)
            });
        for frame in stack.frames.iter().rev().take(3) {
            let base = Path::new(&frame.file).file_name().unwrap();
            let needle = format!(
                "{} ({}:{})",
                // py-spy shows co_name, the last part of co_qualname.
                frame.function.rsplit('.').next().unwrap(),
                base.to_str().unwrap(),
                frame.line.unwrap()
            );
            assert!(
                section.contains(&needle),
                "py-spy lacks {needle}:\n{section}"
            );
        }
    }
}

#[test]
fn stack_dump_timing() {
    let _serial = serial("stack_dump_timing");
    for threads in [1usize, 10, 100] {
        // `threads` threads in all, each 20 frames deep, sleeping.
        let code = format!(
            "import threading, time
def deep(n):
    if n == 0:
        time.sleep(600)
    deep(n - 1)
for _ in range({}):
    threading.Thread(target=deep, args=(20,), daemon=True).start()
time.sleep(0.2)
print('ready', flush=True)
deep(19)",
            threads - 1
        );
        let target = Target::python(&code);
        let process = PyProcess::open(target.pid).unwrap();
        wait_for("every thread asleep", || {
            process.stack_dump().unwrap().iter().all(|s| {
                s.frames.last().is_some_and(|f| f.function == "deep") && s.frames.len() >= 20
            })
        });
        let mut samples = Vec::new();
        for _ in 0..50 {
            let start = Instant::now();
            let stacks = process.stack_dump().unwrap();
            samples.push(start.elapsed());
            assert_eq!(stacks.len(), threads);
        }
        let start = Instant::now();
        let stacks = stack_dump(target.pid).unwrap();
        let with_open = start.elapsed();
        let depth = stacks[0].frames.len();
        eprintln!(
            "stack dump, {threads} thread(s) of depth {depth}: median {:?} \
             (with PyProcess::open: {with_open:?})",
            median(samples)
        );
    }
}

#[test]
fn stack_dump_of_a_busy_target_stays_consistent() {
    let _serial = serial("stack_dump_of_a_busy_target_stays_consistent");
    // Calls and returns all the time: the hardest case for a reader that
    // does not stop the target.
    let target = Target::python(
        "def leaf(x):
    return x + 1
def middle(x):
    return leaf(x) + leaf(x)
def top():
    x = 0
    while True:
        x = middle(x) % 1000
print('ready', flush=True)
top()",
    );
    let process = PyProcess::open(target.pid).unwrap();
    wait_for("top() to run", || {
        process.stack_dump().unwrap()[0]
            .frames
            .iter()
            .any(|f| f.function == "top")
    });
    let mut incomplete = 0;
    for _ in 0..500 {
        let stacks = process.stack_dump().unwrap();
        let stack = &stacks[0];
        if let Some(why) = &stack.incomplete {
            if incomplete < 3 {
                eprintln!("incomplete: {why}");
            }
            incomplete += 1;
            continue;
        }
        let names: Vec<&str> = stack.frames.iter().map(|f| f.function.as_str()).collect();
        assert!(
            matches!(
                names[..],
                ["<module>", "top"]
                    | ["<module>", "top", "middle"]
                    | ["<module>", "top", "middle", "leaf"]
            ),
            "{stack}"
        );
    }
    eprintln!("{incomplete} of 500 dumps of a busy thread were incomplete");
    assert!(incomplete < 10);
}

/// Two threads, each 200 calls deep in code whose file name is 100,000
/// bytes long: 40 MB of names, all copied into the reader were nothing cut.
const LONG_NAMES_PY: &str = r#"
import threading, time
source = """
def dive(n, ready):
    if n == 0:
        ready.release()
        time.sleep(600)
        return
    dive(n - 1, ready)
"""
space = {"time": time}
exec(compile(source, "x" * 100_000, "exec"), space)
ready = threading.Semaphore(0)
for name in ("first", "second"):
    threading.Thread(target=space["dive"], args=(200, ready), name=name, daemon=True).start()
ready.acquire()
ready.acquire()
print("ready", flush=True)
time.sleep(600)
"#;

#[test]
fn stack_dump_holds_a_bounded_amount_of_text() {
    let _serial = serial("stack_dump_holds_a_bounded_amount_of_text");
    let (_dir, file) = written("long_names.py", LONG_NAMES_PY);
    let target = Target::spawn(Command::new(python314()).arg(&file));
    let stacks = stack_dump(target.pid).unwrap();
    let text: usize = stacks
        .iter()
        .flat_map(|stack| &stack.frames)
        .map(|frame| frame.file.len() + frame.function.len())
        .sum();
    assert!(text <= heli_grant::MAX_DUMP_TEXT, "{text} bytes of names");
    assert_eq!(stacks.len(), 3, "{stacks:#?}");
    // The main thread is whole. The threads are read newest first: the
    // second diver keeps its most recent calls, the first has no room
    // left; each says it was cut.
    assert!(stacks[0].main);
    assert_eq!(stacks[0].incomplete, None);
    assert!(!stacks[0].frames.is_empty());
    let (first, second) = (&stacks[1], &stacks[2]);
    assert_eq!(first.name.as_deref(), Some("first"));
    assert!(second.frames.len() > 50, "{} frames", second.frames.len());
    assert!(second.frames.iter().all(|frame| frame.function == "dive"));
    assert_eq!(second.frames.last().unwrap().line, Some(5));
    assert!(first.frames.is_empty(), "{} frames", first.frames.len());
    for stack in [first, second] {
        let why = stack.incomplete.as_deref().unwrap_or_default();
        assert!(why.starts_with("cut: a dump holds at most"), "{why:?}");
    }
}
