//! What the benches share: the Python they start, whether they run as a
//! benchmark (`cargo bench`) or as a quick check (`cargo test`), and timing.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The Python the programs run: `$HELI_PYTHON`, else `python3.14`.
pub(crate) fn python() -> PathBuf {
    heli::cli::python::find()
        .expect("Python 3.14 not found: run scripts/install-python314.sh or set HELI_PYTHON")
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
