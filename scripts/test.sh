#!/usr/bin/env bash
# heli's test command: installs what the tests need on a fresh machine, then
# runs every check. CI (.ci/run) calls exactly this.
#
#   scripts/test.sh            everything
#   HELI_SKIP_VM=1 scripts/test.sh   everything but the Yama VM suite (for quick local runs;
#                                    CI never sets it)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "Python 3.14 (private install from Debian's binary packages)"
HELI_PYTHON=$(scripts/install-python314.sh | tail -n 1)
export HELI_PYTHON
"$HELI_PYTHON" --version >&2

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

step "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

if [ -f scripts/vm/test-yama.sh ] && [ "${HELI_SKIP_VM:-0}" != 1 ]; then
    step "Yama kernel suite under qemu"
    scripts/vm/test-yama.sh
fi

step "all checks passed"
