#!/usr/bin/env bash
# Runs the Yama suite in a real Yama kernel under qemu: installs the VM
# tooling, builds the examples, boots, runs scripts/vm/yama-suite.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${HELI_PYTHON:-$(scripts/install-python314.sh | tail -n 1)}
scripts/vm/setup.sh
cargo build --examples --locked
examples=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/examples
# The tree's checks run scripts/test.sh's gunicorn (its path passed in).
. scripts/lib/deps.sh
export HELI_GUNICORN_PATH=${HELI_GUNICORN_PATH:-$(heli_deps)/tools/gunicorn}
HELI_VM_PASSENV="${HELI_VM_PASSENV-RUST_BACKTRACE RUST_LOG} HELI_GUNICORN_PATH" \
    bash scripts/vm/run.sh scripts/vm/yama-suite.sh "$examples" "$python"
