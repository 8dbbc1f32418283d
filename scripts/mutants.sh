#!/usr/bin/env bash
# Mutation testing of heli-core with cargo-mutants: installs it if needed,
# then changes heli-core's code in small ways (a `+` for a `-`, a body for a
# default value...) and runs heli-core's tests against each change. Fails
# when a change (a mutant) survives the tests, other than the equivalent
# mutants listed, each with its reason, in .cargo/mutants.toml.
#
#   scripts/mutants.sh                  every mutant of heli-core (about 1,000: hours)
#   scripts/mutants.sh --quick          one 24th of them, which 24th chosen by
#                                       the commit (a few minutes); scripts/test.sh
#                                       runs this
#   scripts/mutants.sh -f heli-core/src/controller.rs
#                                       more cargo mutants options: one file, a
#                                       --re filter, a --shard of your own...
#   HELI_MUTANTS_JOBS=1 scripts/mutants.sh
#                                       builds and tests at a time (default 2)
#
# What it finds goes to target/mutants/mutants.out/: missed.txt, caught.txt,
# timeout.txt, unviable.txt, and a log per mutant in log/. A mutant that makes
# the tests hang until cargo-mutants' timeout counts as found (the tests did
# not pass), and is listed.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/checks.sh

cargo_tool cargo-mutants 27.1.0 mutants

# Shards for --quick: each commit tests one, the next commit the next one.
QUICK_SHARDS=24
args=()
for arg in "$@"; do
    if [ "$arg" = --quick ]; then
        commits=$(git rev-list --count HEAD 2>/dev/null || echo 0)
        args+=(--shard "$((commits % QUICK_SHARDS))/$QUICK_SHARDS" --sharding round-robin)
    else
        args+=("$arg")
    fi
done

# Most of heli-core's tests wait on channels, each for at most 10 s: when a
# mutant makes several of them wait that long, side by side they fail in
# about 10 s, where two at a time they would run past cargo-mutants' timeout.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-16}

step "cargo mutants -p heli-core ${args[*]}"
# cargo-mutants creates the output directory but not its parent: a fresh
# checkout has no target/ yet.
mkdir -p target
status=0
# --locked as everywhere in scripts/test.sh; --no-shuffle so a run's order
# is the source's, and a shard the same mutants every time.
cargo mutants --package heli-core --jobs "${HELI_MUTANTS_JOBS:-2}" --no-shuffle \
    --cargo-arg=--locked --colors never --output target/mutants "${args[@]}" || status=$?

out=target/mutants/mutants.out
# Status 2 means missed mutants, 3 timeouts; when a run has both, cargo
# mutants says 3: missed.txt is what tells.
case $status in
0 | 2 | 3) ;;
*)
    echo "mutants.sh: cargo mutants failed (exit status $status; 4: the tests fail without mutants)" >&2
    exit 1
    ;;
esac
if [ -s "$out/timeout.txt" ]; then
    # The tests did not pass with those mutants.
    echo "mutants.sh: these mutants made the tests hang (found, not missed):" >&2
    sed 's/^/    /' "$out/timeout.txt" >&2
fi
if [ "$status" = 2 ] || [ -s "$out/missed.txt" ]; then
    echo "mutants.sh: mutants the tests missed (see $out/missed.txt and $out/log/):" >&2
    sed 's/^/    /' "$out/missed.txt" >&2
    echo "Add a test that catches each, or, if none can, list it with its reason" >&2
    echo "in .cargo/mutants.toml (exclude_re)." >&2
    exit 1
fi
caught=$(wc -l <"$out/caught.txt")
timeouts=$(wc -l <"$out/timeout.txt")
unviable=$(wc -l <"$out/unviable.txt")
step "no mutant missed: $caught caught, $timeouts timeouts, $unviable unviable"
