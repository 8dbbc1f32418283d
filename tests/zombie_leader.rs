//! A target whose main thread has exited while another thread runs on (a
//! "zombie leader") is alive: STATUS says it runs, and a grant goes through
//! a live thread instead of failing with "not running".

use std::process::Command;
use std::time::Duration;

use crate::util::{end, serial, wait_for, Controller, Kind};

/// The target: its main thread starts one that ticks for ever, then calls
/// `pthread_exit`.
const LEADER_EXITS_C: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static void *tick(void *arg) {
    (void)arg;
    for (;;) {
        sleep(1);
    }
    return NULL;
}

int main(void) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, tick, NULL) != 0) {
        return 1;
    }
    pthread_exit(NULL);
}
"#;

/// Builds the target with the C compiler (`$CC`, else `cc`): the test
/// fails without one.
fn build(dir: &std::path::Path) -> std::path::PathBuf {
    let source = dir.join("leader_exits.c");
    let program = dir.join("leader_exits");
    std::fs::write(&source, LEADER_EXITS_C).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-O1", "-pthread", "-o"])
        .arg(&program)
        .arg(&source)
        .status()
        .unwrap_or_else(|err| panic!("this test needs a C compiler ({cc}): {err}"));
    assert!(status.success(), "{cc} failed");
    program
}

/// The state letter of thread `tid` of process `pid`.
fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
}

#[test]
fn a_target_whose_main_thread_exited_is_running_and_can_be_granted() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let program = build(dir.path());
    let program = program.to_str().unwrap();
    let controller = Controller::start_on(Kind::Socket, &["--granter", "yama", "--", program]);
    let target = controller.target_pid();
    wait_for("the main thread to exit", Duration::from_secs(10), || {
        thread_state(target, target) == Some('Z')
    });

    let status = controller.session().ask("STATUS\n");
    assert_eq!(field(&status, "state"), Some("running"), "{status}");

    let grantee = Command::new("sleep").arg("100").spawn().unwrap();
    let reply = controller
        .session()
        .ask(&format!("GRANT_ACCESS {}\n", grantee.id()));
    // A Yama kernel says READY; without Yama the injected prctl itself
    // fails with EINVAL, which shows the injection ran in a live thread.
    assert!(
        reply == "READY\n" || reply.contains("EINVAL"),
        "{reply}\n{}",
        controller.log_text()
    );
    assert!(!reply.contains("not running"), "{reply}");
    // Left running, untraced.
    let tracer = std::fs::read_to_string(format!("/proc/{target}/status"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("TracerPid:").map(|v| v.trim().to_owned()));
    assert_eq!(tracer.as_deref(), Some("0"));
    let status = controller.session().ask("STATUS\n");
    assert_eq!(field(&status, "state"), Some("running"), "{status}");
    end(grantee);
}

/// The same in Python (its main thread calls `pthread_exit` through
/// ctypes): `client stack` reads the live threads' stacks through one of
/// them, since the main thread's own memory map is empty.
#[test]
fn the_stacks_of_a_python_target_whose_main_thread_exited_are_read() {
    let _serial = serial();
    let (_dir, script) = crate::util::temp_script(
        "leader_exits.py",
        "import ctypes, threading, time\n\
         def waiting_in_a_worker():\n\
         \x20   while True:\n\
         \x20       time.sleep(0.05)\n\
         threading.Thread(target=waiting_in_a_worker).start()\n\
         ctypes.CDLL(None).pthread_exit(None)\n",
    );
    let controller = Controller::start_on(Kind::Socket, &[script.to_str().unwrap()]);
    let target = controller.target_pid();
    wait_for("the main thread to exit", Duration::from_secs(10), || {
        thread_state(target, target) == Some('Z')
    });
    let (status, stdout, stderr) = controller.run_client(&["stack"]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("in waiting_in_a_worker"), "{stdout}");
}
