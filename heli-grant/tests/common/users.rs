//! Acting as another user.

use std::thread;

/// Runs `f` in a thread of ours whose credentials are user nobody's (the
/// raw system calls change the calling thread's only: glibc's would change
/// every thread's). Fails unless this test runs as root.
pub(crate) fn as_nobody<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test acts as another user: run it as root (CI does)"
    );
    thread::spawn(move || {
        // SAFETY: setresgid and setresuid take integers and touch no memory.
        let res = unsafe { libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) };
        assert_eq!(res, 0, "setresgid: {}", std::io::Error::last_os_error());
        // SAFETY: as above.
        let res = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(res, 0, "setresuid: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}
