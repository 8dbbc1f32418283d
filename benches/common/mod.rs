//! What the benches share: the Python they start, whether they run as a
//! benchmark (`cargo bench`) or as a quick check (`cargo test`), and timing.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Python the programs run: `$HELI_PYTHON`, else `python3.14`.
pub(crate) fn python() -> PathBuf {
    heli::cli::python::find()
        .expect("Python 3.14 not found: run scripts/install-python314.sh or set HELI_PYTHON")
}

#[path = "../../tests/deps.rs"]
mod deps;
use deps::deps_dir;

/// py-spy: `$HELI_PY_SPY`, else scripts/test.sh's install.
pub(crate) fn py_spy() -> PathBuf {
    let path = std::env::var_os("HELI_PY_SPY")
        .map(PathBuf::from)
        .unwrap_or_else(|| deps_dir().join("tools/bin/py-spy"));
    assert!(
        path.is_file(),
        "py-spy not found at {}: run scripts/test.sh or set HELI_PY_SPY",
        path.display()
    );
    path
}

/// `target/<profile>`, where this bench runs from.
pub(crate) fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The controller example of this profile. `cargo test` builds it;
/// `cargo bench` does not: then build (or bring up to date) it first.
pub(crate) fn controller_exe() -> PathBuf {
    example_exe("controller")
}

/// Example `name` of this profile, built (or brought up to date) first
/// under `cargo bench`, which does not build examples.
pub(crate) fn example_exe(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let dir = profile_dir();
    let mut built = BUILT.lock().unwrap();
    if benchmarking() && !built.iter().any(|b| b == name) {
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cargo.args(["build", "--example", name]);
        if dir.ends_with("release") {
            cargo.arg("--release");
        }
        assert!(
            cargo.status().unwrap().success(),
            "cannot build the {name} example"
        );
        built.push(name.to_owned());
    }
    dir.join("examples").join(name)
}

/// Spawns the controller `exe` with `args`, run from the repository with
/// [`python`], its session sockets under `runtime_dir`
/// (`XDG_RUNTIME_DIR`), logging at `log_level` (`RUST_LOG`), and its
/// standard streams on `/dev/null`.
pub(crate) fn spawn_controller(
    exe: &Path,
    args: &[&str],
    runtime_dir: &Path,
    log_level: &str,
) -> Child {
    Command::new(exe)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("XDG_RUNTIME_DIR", runtime_dir)
        .env("HELI_PYTHON", python())
        .env("RUST_LOG", log_level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Whether this is `cargo bench` (full rounds) rather than `cargo test`.
pub(crate) fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// How long each of `rounds` calls of `round` took; `check` judges what
/// each returned, outside the time taken.
pub(crate) fn time_each<T>(
    rounds: usize,
    mut round: impl FnMut() -> T,
    mut check: impl FnMut(T),
) -> Vec<Duration> {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            let result = round();
            let took = start.elapsed();
            check(result);
            took
        })
        .collect()
}

/// The median, 99th percentile and maximum of `samples`, in milliseconds.
pub(crate) fn percentiles(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99), at(1.0))
}
