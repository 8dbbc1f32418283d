#!/usr/bin/env bash
# heli's test command: installs what the tests need on a fresh machine, then
# runs every check. CI (.ci/run) calls exactly this.
#
#   scripts/test.sh            everything
#   HELI_SKIP_VM=1 scripts/test.sh   everything but the Yama VM suite (for quick local runs;
#                                    CI never sets it)
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/checks.sh

step "Python 3.14 (private install from Debian's binary packages)"
HELI_PYTHON=$(scripts/install-python314.sh | tail -n 1)
export HELI_PYTHON
"$HELI_PYTHON" --version >&2

step "ptrace tools for the attach --with tests (gdb, strace from apt; py-spy from PyPI); zsh, fish, groff and man for the completion and man page tests; systemd-analyze, unshare and nsenter for the service tests"
missing=()
for tool_package in gdb:gdb strace:strace zsh:zsh fish:fish groff:groff-base man:man-db \
    systemd-analyze:systemd unshare:util-linux nsenter:util-linux; do
    command -v "${tool_package%%:*}" >/dev/null || missing+=("${tool_package#*:}")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
fi
HELI_TOOLS=$(heli_deps)/tools
HELI_PY_SPY=$HELI_TOOLS/bin/py-spy
if [ ! -x "$HELI_PY_SPY" ]; then
    python3 -m venv "$HELI_TOOLS" >&2 \
        || { apt-get install -y -q --no-install-recommends python3-venv >&2 && python3 -m venv --clear "$HELI_TOOLS" >&2; }
    "$HELI_TOOLS/bin/pip" install -q 'py-spy==0.4.3' >&2
fi
export HELI_PY_SPY
"$HELI_PY_SPY" --version >&2

step "gunicorn from PyPI for the process-tree tests (a private directory on Python 3.14's PYTHONPATH)"
# Pure Python wheels, installed by the tools venv's pip for Python 3.14
# (the private Python 3.14 has no pip); never into a site-packages.
HELI_GUNICORN_PATH=$HELI_TOOLS/gunicorn
gunicorn_version=27.0.1
if [ "$(PYTHONPATH=$HELI_GUNICORN_PATH "$HELI_PYTHON" -c 'import gunicorn; print(gunicorn.__version__)' 2>/dev/null)" != "$gunicorn_version" ]; then
    rm -rf "$HELI_GUNICORN_PATH"
    "$HELI_TOOLS/bin/pip" install -q --target "$HELI_GUNICORN_PATH" --python-version 3.14 \
        --only-binary=:all: --no-compile "gunicorn==$gunicorn_version" 'packaging==26.4' >&2
fi
export HELI_GUNICORN_PATH
PYTHONPATH=$HELI_GUNICORN_PATH "$HELI_PYTHON" -m gunicorn --version >&2

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
# The end-to-end tests run the example binaries: build them as programs
# (--all-targets alone builds examples as test harnesses).
cargo build --examples --locked
# Bounded: a hung test fails the run in minutes, not at CI's limit.
bounded 1800 cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked

step "the README's set-up and demo as a fresh unprivileged user (cargo install, install-python314.sh, completions, man pages)"
scripts/test-as-user.sh

step "cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "protocol fuzzing (cargo fuzz, a short run of every target in fuzz/)"
scripts/fuzz.sh

step "mutation testing (cargo mutants, a 24th of heli-core's mutants)"
scripts/mutants.sh --quick

if [ -f scripts/vm/test-yama.sh ] && [ "${HELI_SKIP_VM:-0}" != 1 ]; then
    step "Yama kernel suite under qemu"
    scripts/vm/test-yama.sh
fi

step "all checks passed"
