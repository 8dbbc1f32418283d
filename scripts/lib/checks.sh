# shellcheck shell=bash
# What heli's check scripts share (scripts/test.sh, scripts/fuzz.sh,
# scripts/mutants.sh): step headings, and cargo tools installed on demand.
# From the repository's root, source it:  . scripts/lib/checks.sh

. "$(dirname "${BASH_SOURCE[0]}")/deps.sh"

# step <words...>: a heading on stderr, with the seconds since the script began.
step() { printf '\n==> %s  [%s s]\n' "$*" "$SECONDS" >&2; }

# cargo_tool <crate> <version> [<args>...]: puts <crate> <version> on PATH,
# from $(heli_deps)/<crate>/bin (scripts/lib/deps.sh); first installs it there from
# crates.io, unless `<crate> <args>... --version` there already says
# "<crate> <version>".
cargo_tool() {
    local crate=$1 version=$2
    shift 2
    local root
    root=$(heli_deps)/$crate
    if [ "$("$root/bin/$crate" "$@" --version 2>/dev/null)" != "$crate $version" ]; then
        step "$crate $version (crates.io, into $root)"
        cargo install --locked --version "$version" --root "$root" "$crate"
    fi
    export PATH=$root/bin:$PATH
}

# bounded <seconds> <command> [<args>...]: runs the command; if it has not
# ended after <seconds>, kills it and every process it started, however
# detached (a hung test's targets would otherwise hold the output open and
# keep CI waiting), and fails. The processes are found through a pids
# cgroup of their own (v1 or v2, needs root); without one, through the
# command's process group.
bounded() {
    local seconds=$1
    shift
    local group="" base
    for base in /sys/fs/cgroup/pids /sys/fs/cgroup/unified /sys/fs/cgroup; do
        if [ -w "$base" ] && [ -e "$base/cgroup.procs" ] && mkdir "$base/heli-bounded-$$" 2>/dev/null; then
            group=$base/heli-bounded-$$
            break
        fi
    done
    local rc=0
    set -m
    if [ -n "$group" ]; then
        (echo "$BASHPID" >"$group/cgroup.procs" && exec "$@") &
    else
        "$@" &
    fi
    local pid=$!
    set +m
    (
        # One second at a time: killed early, it leaves no long sleep behind.
        for ((waited = 0; waited < seconds; waited++)); do
            sleep 1
            kill -0 "$pid" 2>/dev/null || exit 0
        done
        printf '\n==> %s: still running after %s s: killing it and what it started\n' "$*" "$seconds" >&2
        # Its process group; what left the group goes with the cgroup below.
        kill -KILL -- "-$pid" 2>/dev/null || true
    ) &
    local watchdog=$!
    wait "$pid" || rc=$?
    kill "$watchdog" 2>/dev/null || true
    wait "$watchdog" 2>/dev/null || true
    if [ -n "$group" ]; then
        # What the command left running ends with it (on time-out too).
        local tries
        for tries in 1 2 3 4 5 6 7 8 9 10; do
            while read -r left; do kill -KILL "$left" 2>/dev/null || true; done <"$group/cgroup.procs"
            rmdir "$group" 2>/dev/null && break
            sleep 0.2
        done
    fi
    return "$rc"
}
