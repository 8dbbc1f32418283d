//! Native PEP 768 through the controller: the errors a user sees for targets
//! that cannot be inspected.

use crate::util::{by_remote_exec, serial, temp_script, wait_for, Controller, Kind, SOON};

/// The first line `client ARGS` prints to stderr once the target runs.
fn client_error(controller: &Controller, args: &[&str]) -> (Option<i32>, String) {
    let (status, _, stderr) = controller.run_client(args);
    (status.code(), stderr)
}

#[test]
fn stack_of_a_program_that_is_not_python_says_so() {
    let _serial = serial();
    let controller = Controller::start_on(Kind::Socket, &["--", "sleep", "600"]);
    let (code, err) = client_error(&controller, &["stack"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Cannot read the target's stacks"), "{err}");
    assert!(err.contains("is not a Python process"), "{err}");
}

#[test]
fn stack_of_python_3_13_names_the_version() {
    let _serial = serial();
    let python313 = std::env::var("HELI_PYTHON313")
        .unwrap_or_else(|_| "/root/.pyenv/versions/3.13.0/bin/python3.13".into());
    assert!(
        std::path::Path::new(&python313).exists(),
        "Python 3.13 not found at {python313}: set HELI_PYTHON313"
    );
    let controller = Controller::start_on(
        Kind::Socket,
        &["--python", &python313, "examples/target.py"],
    );
    let mut last = String::new();
    // Until the interpreter has mapped its libraries.
    wait_for("the 3.13 error", SOON, || {
        let (code, err) = client_error(&controller, &["stack"]);
        assert_eq!(code, Some(1), "{err}");
        last = err;
        last.contains("3.13")
    });
    assert!(last.contains("CPython 3.14"), "{last}");
}

#[test]
fn a_remote_exec_grant_into_a_target_that_disabled_remote_debugging_names_the_switch() {
    let _serial = serial();
    let controller = Controller::start_with_env(
        Kind::Socket,
        &by_remote_exec("examples/target.py"),
        &[("PYTHON_DISABLE_REMOTE_DEBUG", "1")],
    );
    let (code, err) = client_error(&controller, &["attach"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("PYTHON_DISABLE_REMOTE_DEBUG"), "{err}");
    // Stack dumps read memory only: they still work (once it runs target.py).
    wait_for("a stack in target.py", SOON, || {
        let (status, out, err) = controller.run_client(&["stack"]);
        assert!(status.success(), "{err}");
        out.contains("target.py")
    });
}

crate::per_transport!(a_stack_dump_longer_than_a_request_line_reaches_the_client);

/// 20 threads 60 frames deep: a `STACK` reply of about 100 kB, far over the
/// 4096 bytes a request may take, arrives whole on either transport.
fn a_stack_dump_longer_than_a_request_line_reaches_the_client(kind: Kind) {
    let _serial = serial();
    let (_dir, deep) = temp_script(
        "deep.py",
        "import threading, time\n\
         def deep(n):\n    if n == 0:\n        time.sleep(1000)\n    return deep(n - 1)\n\
         for _ in range(19):\n    threading.Thread(target=deep, args=(60,), daemon=True).start()\n\
         deep(60)\n",
    );
    let controller = Controller::start_on(kind, &[deep.to_str().unwrap()]);
    let mut last = String::new();
    wait_for("20 threads asleep 60 frames deep", SOON, || {
        let (status, out, err) = controller.run_client(&["stack"]);
        assert!(status.success(), "{out}{err}\n{}", controller.log_text());
        last = out;
        last.matches("in deep").count() == 20 * 61
    });
    assert!(last.len() > 50_000, "{} bytes", last.len());
    assert_eq!(last.matches("Thread ").count(), 20, "{last}");
}

/// `client stack --all | head -1`: the client's output ends at a pipe its
/// reader closed. The client ends quietly and well (no panic on EPIPE).
#[test]
fn a_client_whose_output_reader_went_away_ends_quietly() {
    let _serial = serial();
    let controller = Controller::demo(Kind::Fifo);
    controller.wait_for_work_loop();
    for args in [
        &["stack", "--all"][..],
        &["ps", "--json"],
        &["status"],
        &["pid"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = controller
            .client()
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{args:?}: {:?} {err}",
            output.status
        );
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}
