//! C programs the tests build for themselves.

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// C that defines `_GNU_SOURCE` and `filter_prctl(action)`, which gives
/// the calling thread (only: no `SECCOMP_FILTER_FLAG_TSYNC`) a seccomp
/// filter that answers `prctl` with `action`, or exits 1. Put it before a
/// program's own source.
pub(crate) const FILTER_PRCTL_C: &str = r#"
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static void filter_prctl(unsigned int action) {
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_prctl, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, action),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof filter / sizeof filter[0], filter };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) {
        perror("seccomp");
        exit(1);
    }
}
"#;

/// Builds `source` with `cc` (or `$CC`) into `name` in the tests' temp
/// directory, linking `libs`, and returns the program's path; once per run
/// of a test binary and `name` (later calls return the path at once).
/// Built under a name of its own first, so a test binary running meanwhile
/// never finds half a program.
pub(crate) fn build_c(name: &str, source: &str, libs: &[&str]) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|err| err.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let exe = dir.join(name);
    if built.iter().any(|done| done == name) {
        return exe;
    }
    let tmp = dir.join(format!("{name}-{}", std::process::id()));
    let src = tmp.with_extension("c");
    fs::write(&src, source).unwrap();
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let status = Command::new(&cc)
        .args(["-O1", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src)
        .args(libs)
        .status()
        .unwrap_or_else(|err| panic!("cannot run {cc:?} to build {name}: {err}"));
    assert!(status.success(), "building {name} failed");
    fs::remove_file(&src).unwrap();
    fs::rename(&tmp, &exe).unwrap();
    built.push(name.to_owned());
    exe
}
