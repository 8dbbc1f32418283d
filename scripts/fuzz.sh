#!/usr/bin/env bash
# Fuzzes heli's line protocol (the cargo-fuzz targets in fuzz/): installs
# cargo-fuzz if needed, builds the targets, then runs each one for a bounded
# time; fails on the first crash, leaving the input that caused it in
# fuzz/artifacts/<target>/. scripts/test.sh runs it with the defaults.
#
#   scripts/fuzz.sh                          every target, 12 s each
#   scripts/fuzz.sh request reply            only these targets
#   HELI_FUZZ_SECONDS=300 scripts/fuzz.sh    a longer run (seconds per target)
#   HELI_FUZZ_SANITIZER=address scripts/fuzz.sh
#                                            with AddressSanitizer: its rustc flag
#                                            is unstable, allowed here on the
#                                            stable toolchain by RUSTC_BOOTSTRAP=1
#
# It runs on the stable toolchain: without a sanitizer, cargo-fuzz needs no
# unstable rustc flag. The code fuzzed (heli-core) forbids unsafe code, so
# AddressSanitizer would find nothing a panic does not show, at a third of
# the speed or less. What the fuzzer finds beyond the committed seeds stays
# in fuzz/corpus/<target>/ (ignored by git) and helps the next run.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/checks.sh

cargo_tool cargo-fuzz 0.13.2

seconds=${HELI_FUZZ_SECONDS:-12}
sanitizer=${HELI_FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi

cd fuzz
if (($#)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
((${#targets[@]})) || { echo "fuzz.sh: no fuzz target found in fuzz/" >&2; exit 1; }

step "fuzz/: cargo fmt --check, cargo clippy -D warnings"
cargo fmt -- --check
# --locked here, as cargo fuzz has no such option: fuzz/Cargo.lock is current.
cargo clippy --all-targets --locked -- -D warnings

step "cargo fuzz build (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer" >&2

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
    step "cargo fuzz run $target (${seconds} s)"
    # -timeout: one input taking 10 s is a hang, and fails the run.
    if ! cargo fuzz run --sanitizer "$sanitizer" "$target" -- \
        -max_total_time="$seconds" -timeout=10 -max_len=8192 \
        -dict="$PWD/protocol.dict" >"$log" 2>&1; then
        # Without libFuzzer's progress lines: the panic, the input, how to replay it.
        grep -v '^#[0-9]' "$log" | tail -n 150 >&2
        echo "fuzz.sh: $target failed; its input is in fuzz/artifacts/$target/ (replay it in fuzz/)" >&2
        exit 1
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE' "$log" >&2 || tail -n 5 "$log" >&2
done
step "fuzzing found nothing (${#targets[@]} targets, ${seconds} s each)"
