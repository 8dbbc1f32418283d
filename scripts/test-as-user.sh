#!/usr/bin/env bash
# The README's set-up and demo as a fresh, unprivileged user would run them
# (scripts/test.sh runs it, as root, after building the examples):
#
#   1. `cargo install --path . --example controller --example client` into a
#      temporary --root, from the already-built target directory (seconds:
#      nothing is rebuilt);
#   2. as a throw-away user made with useradd (removed at the end, with its
#      home): scripts/install-python314.sh into its per-user default,
#      ~/.local/share/heli; the completions and man pages set up as the
#      README says; then the demo: a controller running examples/target.py,
#      `client status`, `client stack`, `client terminate`.
#
#   scripts/test-as-user.sh            (as root; the repository's root is found from the script)
#
# Environment: CARGO_TARGET_DIR (default: cargo's for this workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "test-as-user.sh: run it as root (it makes a user)" >&2; exit 1; }

say() { printf '[test-as-user] %s\n' "$*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

work=$(mktemp -d /tmp/heli-as-user.XXXXXX)
chmod 755 "$work"
user=heli-t$$
controller_pid=""
cleanup() {
    local rc=$?
    [[ -z $controller_pid ]] || kill -KILL "$controller_pid" 2>/dev/null || true
    if id "$user" >/dev/null 2>&1; then
        # What the user still runs (a target the demo left) ends with it.
        pkill -KILL -u "$user" 2>/dev/null || true
        userdel --remove "$user" 2>/dev/null || userdel --force --remove "$user" || true
    fi
    rm -rf -- "$work"
    exit "$rc"
}
trap cleanup EXIT

# ---- 1. cargo install, reusing the build ---------------------------------------
target_dir=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}
t0=$SECONDS
CARGO_TARGET_DIR=$target_dir cargo install --locked --debug --path . \
    --example controller --example client --root "$work/install" --no-track >&2
say "cargo install: $((SECONDS - t0)) s"
for program in controller client; do
    [[ -x $work/install/bin/$program ]] || fail "cargo install left no bin/$program"
done
chmod -R a+rX "$work/install"

# ---- 2. a throw-away user ---------------------------------------------------------
# The user reads a copy of what the README's steps use: the repository may
# sit in root's home, which other users cannot enter.
mkdir -p "$work/heli"
cp -R scripts examples "$work/heli/"
chmod -R a+rX "$work/heli"
useradd --create-home --shell /bin/bash "$user"
home=$(getent passwd "$user" | cut -d: -f6)
command -v patchelf >/dev/null || fail "patchelf missing (scripts/install-python314.sh as root installs it)"

# as_user <script>: runs bash <script> as the user, in a login-like
# environment (no HELI_* nor XDG_* variables of ours), from the copy.
as_user() {
    runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" \
        PATH="$work/install/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 \
        bash -c "cd '$work/heli' && $1"
}

t0=$SECONDS
python=$(as_user 'scripts/install-python314.sh | tail -n 1')
say "install-python314.sh as $user: $((SECONDS - t0)) s, $python"
[[ $python == "$home/.local/share/heli/py314/usr/bin/python3.14" ]] \
    || fail "Python 3.14 went to $python, not the per-user default"

# The README's shell set-up, as the user.
as_user 'set -e
mkdir -p ~/.local/share/bash-completion/completions ~/.local/share/man/man1
client completions bash > ~/.local/share/bash-completion/completions/client
controller --completions bash > ~/.local/share/bash-completion/completions/controller
client man --dir ~/.local/share/man/man1 >/dev/null
controller --man > ~/.local/share/man/man1/controller.1
source ~/.local/share/bash-completion/completions/client
complete -p client >/dev/null' || fail "the completions and man pages did not install"
for page in client.1 client-attach.1 controller.1; do
    [[ -s $home/.local/share/man/man1/$page ]] || fail "no man page $page"
done

# The demo: terminal 1 and terminal 2.
as_user "export HELI_PYTHON=$python; exec controller examples/target.py" >"$work/controller.log" 2>&1 &
controller_pid=$!
for ((i = 0; i < 200; i++)); do
    as_user 'client status' >"$work/status.txt" 2>&1 && break
    kill -0 "$controller_pid" 2>/dev/null || { cat "$work/controller.log" >&2; fail "the controller ended"; }
    sleep 0.1
done
cat "$work/status.txt" >&2
grep -q "target" "$work/status.txt" || { cat "$work/controller.log" >&2; fail "client status"; }
as_user 'client stack' >"$work/stack.txt" 2>&1 || { cat "$work/stack.txt" >&2; fail "client stack"; }
grep -q "target.py" "$work/stack.txt" || { cat "$work/stack.txt" >&2; fail "client stack shows no target.py frame"; }
say "client stack: $(grep -c 'target.py' "$work/stack.txt") target.py frame lines"
as_user 'client terminate' >&2 || fail "client terminate"
wait "$controller_pid" || true
controller_pid=""
say "set-up and demo as an unprivileged user: ok"
