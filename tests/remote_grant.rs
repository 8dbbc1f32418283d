//! `--grant-method remote-exec`: STATUS shows it, and a grant runs the
//! `prctl` in the target through PEP 768 remote execution (without Yama
//! the call fails with EINVAL, and the client is told so).

use crate::util::{alive, by_remote_exec, serial, Controller, Kind};

#[test]
fn remote_exec_grant_method_is_shown_and_used() {
    let _serial = serial();
    let controller = Controller::start_on(Kind::Socket, &by_remote_exec("examples/target.py"));
    let target = controller.target_pid();
    let (status, out, err) = controller.run_client(&["status", "--json"]);
    assert!(status.success(), "{out}{err}");
    assert!(out.contains(r#""grant_method": "remote-exec""#), "{out}");
    assert!(out.contains(r#""granter": "yama""#), "{out}");
    let (status, out, err) = controller.run_client(&["attach"]);
    let log = controller.log_text();
    if heli::grant::PtraceScope::current().unwrap() == heli::grant::PtraceScope::NoYama {
        assert!(!status.success(), "{out}{err}");
        let text = format!("{out}{err}");
        assert!(text.contains("by remote exec (PEP 768)"), "{text}\n{log}");
        assert!(text.contains("EINVAL"), "{text}\n{log}");
    }
    assert!(log.contains("grant method: remote-exec"), "{log}");
    // How the grant was actually made shows in STATUS.
    let (status, out, err) = controller.run_client(&["status", "--json"]);
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains(r#""last_grant_method": "remote-exec""#),
        "{out}"
    );
    assert!(alive(target));
}
