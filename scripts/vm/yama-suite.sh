#!/usr/bin/env bash
# The Yama suite, run as root inside a Yama kernel by scripts/vm/test-yama.sh:
#
#   bash scripts/vm/run.sh scripts/vm/yama-suite.sh EXAMPLES_DIR PYTHON [CYCLES]
#
# Sets ptrace_scope 1, 0, 2, 3 in turn (3 last: it cannot be lowered) and
# (at 2 and 3: through heli's in-target agent)
# runs the real controller, client and pdb as an unprivileged user; at scope
# 1 also a real gunicorn's tree (from $HELI_GUNICORN_PATH, default
# $(heli_deps)/tools/gunicorn, as scripts/test.sh installs it). Ends with
# "yama: N passed, N failed" and exits non-zero if anything failed.
set -uo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
. "$here/guest-lib.sh"

examples=$1 python=$2 cycles=${3:-1000} # grant/revoke cycles of the endurance run
repo=$(realpath "$here/../..")
passes=0 fails=0
ok() { echo "ok   - $*"; passes=$((passes + 1)); }
fail() { echo "FAIL - $*"; fails=$((fails + 1)); }
# expect DESC PATTERN TEXT: TEXT must match the extended regex PATTERN.
expect() {
  if grep -Eq -- "$2" <<<"$3"; then ok "$1"; else fail "$1: expected /$2/ in: $3"; fi
}

user=$(heli_vm_user)
work=$(heli_vm_workdir)
cp "$examples/controller" "$examples/client" "$repo/examples/target.py" \
  "$repo/tests/yama_client.py" "$work/"
chown "$user:" "$work"/*
echo "kernel $(uname -r), user $(id "$user"), python $python"

pipes=/tmp/heliparent_debug/user_$user
socket=/run/user/$HELI_VM_UID/heli/yama.sock
mkdir -p "/run/user/$HELI_VM_UID" && chown "$user:" "/run/user/$HELI_VM_UID" && chmod 0700 "/run/user/$HELI_VM_UID"
transport=socket
client() {
  as_user env XDG_RUNTIME_DIR="/run/user/$HELI_VM_UID" "$work/client" --transport "$transport" \
    --python "$python" --timeout 30 "$@"
}
address() { if [[ $transport == fifo ]]; then echo "$pipes"; else echo "$socket"; fi; }
yama_client() { as_user "$python" "$work/yama_client.py" "$python" "$(address)" "$@"; }

controller_pid=
# What start_controller runs, and in what environment (the tree's section
# runs gunicorn).
target_args=("$work/target.py") target_env=()
start_controller() { # start_controller [CONTROLLER OPTIONS...]
  as_user env HELI_PYTHON="$python" RUST_LOG=info XDG_RUNTIME_DIR="/run/user/$HELI_VM_UID" \
    "${target_env[@]}" "$work/controller" --transport "$transport" --name yama "$@" "${target_args[@]}" \
    >"$work/controller.log" 2>&1 &
  controller_pid=$!
  for _ in $(seq 600); do
    client pid >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "controller did not start: $(cat "$work/controller.log")"
  return 1
}
stop_controller() {
  client terminate >/dev/null 2>&1
  for _ in $(seq 300); do kill -0 "$controller_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$controller_pid" 2>/dev/null; then
    fail "controller still running after terminate"
    kill -9 "$controller_pid"
  fi
  wait "$controller_pid" 2>/dev/null
}
attach() { # attach: one client attach, pdb reads the counter
  printf "p ('counter', counter)\nq\n" | client attach 2>&1
}

set_ptrace_scope 1 || fail "cannot set scope 1"
for transport in socket fifo; do
  echo "--- ptrace_scope 1, $transport transport (at ${SECONDS} s)"
  start_controller || continue
  expect "controller chose the Yama granter" "granter: yama" "$(cat "$work/controller.log")"
  # The very first attach of a fresh client reaches pdb and reads the
  # counter (the original's first attach was denied: its grant was late).
  expect "first attach reaches (Pdb) and prints counter" "\('counter', [0-9]+\)" "$(attach)"
  target=$(client pid)
  # A read-only stack dump needs no grant, and gives none.
  expect "stack read without a grant" "in work_loop" "$(client stack 2>&1)"
  out=$(yama_client pdb)
  expect "after the stack dump: pdb -p still denied" "^pdb denied" "$out"
  # Negative control first: without a grant the same process is denied;
  # with it allowed; after REVOKE denied again.
  out=$(yama_client pdb 'GRANT_ACCESS $PID' pdb 'REVOKE $PID' pdb)
  expect "no grant: pdb -p denied" "^pdb denied" "$(sed -n 1p <<<"$out")"
  expect "grant answered READY" "^READY$" "$(sed -n 2p <<<"$out")"
  expect "granted: pdb -p as the client's child allowed" "^pdb allowed" "$(sed -n 3p <<<"$out")"
  expect "revoke answered READY" "^READY$" "$(sed -n 4p <<<"$out")"
  expect "revoked: pdb -p denied again" "^pdb denied" "$(sed -n 5p <<<"$out")"
  # Yama keeps one ptracer: a grant to another process replaces ours, and
  # our REVOKE then must not take the other's grant away.
  out=$(yama_client 'GRANT_ACCESS $PID' 'GRANT_ACCESS $CHILD' 'GRANT_ACCESS $CHILD FORCE' pdb \
    'REVOKE $PID' 'GRANT_ACCESS $PID FORCE' pdb 'REVOKE $PID' pdb)
  expect "a second grant is refused while one is held" "^ERROR: target is being debugged by client PID" "$(sed -n 2p <<<"$out")"
  expect "FORCE takes the grant over" "^READY$" "$(sed -n 3p <<<"$out")"
  expect "taken over: our pdb -p denied" "^pdb denied" "$(sed -n 4p <<<"$out")"
  expect "REVOKE of a taken-over grant refused, naming the holder" \
    "^ERROR: The grant is held by client PID [0-9]+, not PID [0-9]+: nothing revoked$" "$(sed -n 5p <<<"$out")"
  expect "granted again: pdb -p allowed" "^pdb allowed" "$(sed -n 7p <<<"$out")"
  expect "our REVOKE: pdb -p denied" "^pdb denied" "$(sed -n 9p <<<"$out")"
  if [[ $transport == socket ]]; then
    # The grant goes with its connection: closed, the client (alive) and
    # its children are denied again.
    out=$(yama_client 'GRANT_ACCESS $PID' pdb close pdb)
    expect "socket: granted pdb -p allowed" "^pdb allowed" "$(sed -n 2p <<<"$out")"
    expect "socket: connection closed, grant revoked: pdb -p denied" "^pdb denied" "$(sed -n 4p <<<"$out")"
    # Another process of the same user cannot take our grant away, by pid
    # or without one; ours still works after both tries.
    out=$(yama_client 'GRANT_ACCESS $PID' 'other:REVOKE $PID' 'other:REVOKE' pdb 'REVOKE' pdb)
    expect "socket: another process's REVOKE <holder> refused" \
      "^ERROR: REVOKE refused: the grant is held by client PID [0-9]+; only its connection" "$(sed -n 2p <<<"$out")"
    expect "socket: another process's bare REVOKE refused" "^ERROR: REVOKE refused" "$(sed -n 3p <<<"$out")"
    expect "socket: after both, the holder's pdb -p still allowed" "^pdb allowed" "$(sed -n 4p <<<"$out")"
    expect "socket: the holder's own REVOKE: pdb -p denied" "^pdb denied" "$(sed -n 6p <<<"$out")"
    # PID reuse: A connects and exits, leaving its connection to its child
    # C; A's pid goes to a new process N of the same user; C then asks for
    # a grant for "its own" pid, which is N's now: refused.
    stamp=$work/handoff
    rm -f "$stamp" "$stamp.go"
    yama_client "handoff:$stamp" 'GRANT_ACCESS $PID' >"$work/handoff.out" 2>&1 &
    handoff=$!
    for _ in $(seq 300); do [[ -s $stamp ]] && break; sleep 0.1; done
    a=$(cat "$stamp" 2>/dev/null)
    for _ in $(seq 100); do [[ -n $a && -e /proc/$a ]] || break; sleep 0.1; done
    reused=
    for _ in $(seq 5); do
      echo $((a - 1)) >/proc/sys/kernel/ns_last_pid
      setpriv --reuid="$HELI_VM_UID" --regid="$HELI_VM_UID" --clear-groups sleep 60 &
      n=$!
      if ((n == a)); then reused=$n; break; fi
      kill "$n"
    done
    if [[ -n $reused ]]; then
      ok "pid $a reused by a new process of the user"
      : >"$stamp.go"
      for _ in $(seq 300); do [[ -s $work/handoff.out ]] && break; sleep 0.1; done
      expect "socket: a grant for an exited client's reused pid refused" \
        "^ERROR: GRANT_ACCESS $a refused: .*\(your PID is unknown\)" "$(cat "$work/handoff.out")"
      kill "$reused"
    else
      fail "could not give pid $a to a new process"
      : >"$stamp.go"
    fi
    wait "$handoff"
  fi
  good=0
  for i in $(seq 20); do
    out=$(attach)
    if grep -Eq "\('counter', [0-9]+\)" <<<"$out"; then good=$((good + 1)); else echo "cycle $i: $out"; fi
  done
  expect "20 attach/detach cycles in a row" "^20$" "$good"
  # A grant for a process that does not exist is refused.
  expect "grant for a missing pid refused" "^ERROR" "$(yama_client 'GRANT_ACCESS 2147483000 FORCE')"
  expect "target survived the grants" "^[0-9]+$" "$(client pid)"
  stop_controller
  kill -0 "$target" 2>/dev/null && fail "target $target left running" || ok "target ended with the controller"
  if [[ $transport == socket ]] && start_controller --grant-method remote-exec; then
    # The same grant made by the target itself (PEP 768 remote exec), no ptrace.
    expect "remote-exec: attach reaches (Pdb) and prints counter" "\('counter', [0-9]+\)" "$(attach)"
    log=$(cat "$work/controller.log")
    expect "remote-exec: the grant was made by remote exec" \
      "prctl\(PR_SET_PTRACER, [1-9][0-9]*\) in PID [0-9]+ returned 0 \(remote exec\)" "$log"
    expect "remote-exec: STATUS shows the method" '"grant_method": "remote-exec"' "$(client status --json 2>&1)"
    stop_controller
  fi
done

for transport in socket fifo; do
  echo "--- ptrace_scope 1, time-limited grants, $transport transport (at ${SECONDS} s)"
  # Once its time is up the grant is withdrawn in the kernel: the client
  # that held it is denied again (/proc/PID/mem, ruled by Yama as ptrace).
  if start_controller --max-grant 60s; then
    out=$(yama_client mem 'GRANT_ACCESS $PID FOR 61' 'GRANT_ACCESS $PID FOR 5' mem 'until:grants=none' mem)
    expect "$transport: no grant: the target's memory denied" "^mem denied" "$(sed -n 1p <<<"$out")"
    expect "$transport: a grant past --max-grant refused" \
      "^ERROR: GRANT_ACCESS [0-9]+ refused: asked for 61 s; this controller grants 60 s at most" "$(sed -n 2p <<<"$out")"
    expect "$transport: a grant for 5 s answered READY" "^READY$" "$(sed -n 3p <<<"$out")"
    expect "$transport: within its time the target's memory allowed" "^mem allowed" "$(sed -n 4p <<<"$out")"
    expect "$transport: the grant withdrawn when its time was up" "^until grants=none$" "$(sed -n 5p <<<"$out")"
    expect "$transport: its time up, the target's memory denied again" "^mem denied" "$(sed -n 6p <<<"$out")"
    # attach --for (once: the client's part is the same on both): pdb at
    # its prompt is detached on time, the target runs on, and a later
    # attach sees its counter moved (qemu's emulation is slow: pdb gets 20 s).
    [[ $transport == socket ]] || { stop_controller; continue; }
    first=$(attach | grep -Eo "\('counter', [0-9]+\)" | grep -Eo "[0-9]+")
    out=$( (printf "p ('counter', counter)\n"; sleep 30) | client attach --for 20s 2>&1)
    expect "$transport: attach --for 20s: pdb read the counter" "\('counter', [0-9]+\)" "$out"
    expect "$transport: attach --for 20s: pdb detached when the time was up" \
      "Time is up \(20 s\): detaching pdb; the target runs on" "$out"
    second=$(attach | grep -Eo "\('counter', [0-9]+\)" | grep -Eo "[0-9]+")
    expect "$transport: the target ran on after it ($first then $second)" "^yes$" \
      "$( ((${second:-0} > ${first:-0})) && echo yes || echo no)"
    stop_controller
  fi
done

transport=socket
echo "--- ptrace_scope 1, a profile without a grant (at ${SECONDS} s)"
# The controller samples its target's stacks; the client writes the flame
# graph and gets no right over the target.
if start_controller; then
  # --idle: target.py sleeps most of the time, and idle samples are left
  # out by default (as py-spy does).
  out=$(cd "$work" && client profile --idle --duration 2s -o "$work/profile.svg" 2>&1)
  expect "client profile --duration 2s writes the SVG" "^Wrote $work/profile.svg: [1-9][0-9]* samples" "$out"
  svg=$(as_user "$python" -c '
import sys, xml.etree.ElementTree as tree
root = tree.parse(sys.argv[1]).getroot()
titles = [e.text or "" for e in root.iter() if e.tag.endswith("title")]
print("svg", root.tag.endswith("svg"), any("work_loop" in t for t in titles))
' "$work/profile.svg" 2>&1)
  expect "the SVG parses and shows work_loop" "^svg True True$" "$svg"
  expect "after client profile: pdb -p still denied" "^pdb denied" "$(yama_client pdb)"
  expect "after client profile: no grant in force" '"grants": \[\]' "$(client status --json 2>&1)"
  stop_controller
fi

echo "--- ptrace_scope 1, asyncio tasks (at ${SECONDS} s)"
# The controller reads its target's task tree, as `python -m asyncio pstree`
# would with a ptrace right the client does not have.
printf '%s\n' 'import asyncio' 'async def main():' '    async with asyncio.TaskGroup() as tg:' \
  '        tg.create_task(asyncio.Event().wait(), name="waiter")' 'asyncio.run(main())' >"$work/tasks.py"
chown "$user:" "$work/tasks.py"
target_args=("$work/tasks.py")
if start_controller; then
  for _ in $(seq 100); do
    out=$(client tasks 2>&1) && grep -q "(T) waiter" <<<"$out" && break
    sleep 0.1
  done
  expect "client tasks lists the tasks" "^└── \(T\) Task-1 \(0x.*\(T\) waiter \(0x" "$(tr '\n' ' ' <<<"$out")"
  # Reading the tasks gave the client no right over the target.
  expect "after client tasks: pdb -p still denied" "^pdb denied" "$(yama_client pdb)"
  stop_controller
fi
target_args=("$work/target.py")

transport=socket
echo "--- ptrace_scope 1, the tree: a real gunicorn's workers (at ${SECONDS} s)"
# gunicorn from scripts/test.sh's private directory (the guest sees the
# host's files), on a Unix socket, 2 sync workers that wake every 0.5 s.
gunicorn_path=${HELI_GUNICORN_PATH:-$(. "$here/../lib/deps.sh" && heli_deps)/tools/gunicorn}
# workers: the target's children that ps --json lists as Python processes.
workers() {
  client ps --json | as_user "$python" -c 'import json, sys
tree = json.load(sys.stdin)
root = tree["processes"][0]["pid"]
print(" ".join(str(p["pid"]) for p in tree["processes"] if p["parent"] == root and p["python"]))'
}
if [[ ! -f $gunicorn_path/gunicorn/__init__.py ]]; then
  fail "gunicorn not found in $gunicorn_path: run scripts/test.sh (it installs it) or set HELI_GUNICORN_PATH"
else
  cp "$repo/tests/gunicorn_app.py" "$work/app.py" && chown "$user:" "$work/app.py"
  target_env=(PYTHONPATH="$gunicorn_path")
  target_args=(-- "$python" -m gunicorn --workers 2 --bind "unix:$work/gunicorn.sock" --timeout 0
    --no-control-socket --chdir "$work" app:app)
  if start_controller; then
    arbiter=$(client pid)
    w=()
    for _ in $(seq 300); do
      read -ra w <<<"$(workers)"
      ((${#w[@]} == 2)) && break
      sleep 0.1
    done
    expect "ps lists gunicorn's 2 workers" "^2$" "${#w[@]}"
    if ((${#w[@]} == 2)); then
      w1=${w[0]} w2=${w[1]}
      out=$(client stack --all 2>&1)
      expect "stack --all: the arbiter under its header" "^Process $arbiter \(target\) Python 3\.14" "$out"
      expect "stack --all: worker $w1 under its header" "^Process $w1 \(child of $arbiter\) Python 3\.14" "$out"
      expect "stack --all: worker $w2 under its header" "^Process $w2 \(child of $arbiter\) Python 3\.14" "$out"
      out=$(printf "p ('pid', __import__('os').getpid())\nq\n" | client attach --pid "$w1" 2>&1)
      expect "attach --pid WORKER reaches (Pdb) in the worker: os.getpid() is $w1" "\('pid', $w1\)" "$out"
      expect "after attach --pid: no grant left" "grants=none" "$(yama_client STATUS)"
      # One ptracer per process: the arbiter's grant lets the client into
      # the arbiter only, a worker's into that worker only.
      out=$(yama_client 'GRANT_ACCESS $PID' "pdb:$w1" pdb 'REVOKE $PID' "GRANT_ACCESS \$PID TARGET $w1" \
        pdb "pdb:$w1" "pdb:$w2" "REVOKE \$PID TARGET $w1" "pdb:$w1")
      expect "tree: the arbiter's grant answered READY" "^READY$" "$(sed -n 1p <<<"$out")"
      expect "tree: the arbiter's grant does not let the client into a worker" "^pdb denied" "$(sed -n 2p <<<"$out")"
      expect "tree: the arbiter's grant lets it into the arbiter" "^pdb allowed" "$(sed -n 3p <<<"$out")"
      expect "tree: a worker's grant answered READY" "^READY$" "$(sed -n 5p <<<"$out")"
      expect "tree: a worker's grant does not let the client into the arbiter" "^pdb denied" "$(sed -n 6p <<<"$out")"
      expect "tree: a worker's grant lets it into that worker" "^pdb allowed" "$(sed -n 7p <<<"$out")"
      expect "tree: a worker's grant does not let it into the other worker" "^pdb denied" "$(sed -n 8p <<<"$out")"
      expect "tree: the worker's grant revoked" "^READY$" "$(sed -n 9p <<<"$out")"
      expect "tree: revoked, pdb -p on the worker denied again" "^pdb denied" "$(sed -n 10p <<<"$out")"
      # Outside the tree: pid 1, the client's own parent.
      out=$(client attach --pid 1 --with 'true {pid}' 2>&1); rc=$?
      expect "attach --pid 1 refused (exit 1)" "^1$" "$rc"
      expect "attach --pid 1: the rule named" "PID 1 is not in the target's process tree" "$out"
      expect "a grant on the client's own parent refused" "^ERROR: .*is not in the target's process tree" \
        "$(yama_client 'GRANT_ACCESS $PID TARGET $PARENT')"
      # A worker killed during its grant: the grant goes with it, the
      # next grant (the other worker, then its replacement) works.
      out=$(yama_client "GRANT_ACCESS \$PID TARGET $w1" "kill:$w1" STATUS "GRANT_ACCESS \$PID TARGET $w2" \
        "pdb:$w2" "REVOKE \$PID TARGET $w2")
      expect "tree: grant on the worker to be killed" "^READY$" "$(sed -n 1p <<<"$out")"
      expect "tree: a killed worker's grant is dropped" "grants=none" "$(sed -n 3p <<<"$out")"
      expect "tree: the next grant, on the other worker, READY" "^READY$" "$(sed -n 4p <<<"$out")"
      expect "tree: and pdb -p reaches it" "^pdb allowed" "$(sed -n 5p <<<"$out")"
      new=
      for _ in $(seq 300); do
        read -ra w <<<"$(workers)"
        for p in "${w[@]}"; do [[ $p != "$w1" && $p != "$w2" ]] && new=$p; done
        [[ -n $new ]] && break
        sleep 0.1
      done
      expect "gunicorn replaced the killed worker" "^[0-9]+$" "$new"
      out=$(printf "p ('pid', __import__('os').getpid())\nq\n" | client attach --pid "$new" 2>&1)
      expect "attach --pid on the replacement worker: os.getpid() is $new" "\('pid', $new\)" "$out"
    fi
    stop_controller
  fi
  target_args=("$work/target.py") target_env=()
fi

echo "--- ptrace_scope 1, endurance: $cycles grant/revoke cycles, frozen and thawed halfway (at ${SECONDS} s)"
# As the hostile probe ran it: the target frozen by the cgroup freezer (what
# `docker pause` does) while a grant waits must hold no other request up.
if start_controller; then
  target=$(client pid)
  stamp=$work/endurance
  rm -f "$stamp".*
  cp "$repo/tests/yama_endurance.py" "$work/" && chown "$user:" "$work/yama_endurance.py"
  as_user "$python" "$work/yama_endurance.py" "$(address)" "$cycles" "$stamp" \
    >"$work/endurance.out" 2>&1 &
  endurance=$!
  freezer=/sys/fs/cgroup/heli-endurance
  froze=
  for _ in $(seq 6000); do
    kill -0 "$endurance" 2>/dev/null || break
    if [[ -z $froze && -e $stamp.freeze ]]; then
      mkdir -p "$freezer" && echo "$target" >"$freezer/cgroup.procs" && echo 1 >"$freezer/cgroup.freeze"
      for _ in $(seq 100); do grep -q "frozen 1" "$freezer/cgroup.events" && break; sleep 0.05; done
      grep -q "frozen 1" "$freezer/cgroup.events" && froze=1 || froze=failed
      : >"$stamp.frozen"
    fi
    if [[ $froze == 1 && -e $stamp.thaw && ! -e $stamp.thawed ]]; then
      echo 0 >"$freezer/cgroup.freeze"
      : >"$stamp.thawed"
    fi
    sleep 0.1
  done
  wait "$endurance"; rc=$?
  out=$(cat "$work/endurance.out")
  echo "$out" | sed 's/^/    /'
  expect "endurance: the target was frozen by the cgroup freezer" "^1$" "$froze"
  expect "endurance: every cycle granted and revoked as Yama shows, target untouched" "^problems 0$" "$out"
  expect "endurance: no request hung" "^hangs 0$" "$out"
  expect "endurance: the grant into the frozen target failed in time, saying why" \
    "^frozen_grant_reply ERROR: (Grant failed: )?.*frozen" "$out"
  expect "endurance: exit 0" "^0$" "$rc"
  expect "endurance: target survived" "^$target$" "$(client pid)"
  stop_controller
  rmdir "$freezer" 2>/dev/null
fi

echo "--- ptrace_scope 0 (at ${SECONDS} s)"
set_ptrace_scope 0 || fail "cannot set scope 0"
if start_controller; then
  expect "controller chose the no-op granter" "granter: noop" "$(cat "$work/controller.log")"
  expect "attach works through the no-op path" "\('counter', [0-9]+\)" "$(attach)"
  stop_controller
fi

# At scopes 2 and 3 no ptrace works for the unprivileged user: the
# controller (--agent auto) sets up its agent in the target at start, and
# attach goes through it. With --agent never, attach explains and exits 5.
for scope in 2 3; do
  echo "--- ptrace_scope $scope (at ${SECONDS} s)"
  set_ptrace_scope $scope || fail "cannot set scope $scope"
  if start_controller; then
    target=$(client pid)
    for _ in $(seq 100); do client status 2>&1 | grep -Eq "agent +ready" && break; sleep 0.1; done
    out=$(client status 2>&1)
    expect "scope $scope: status shows the agent ready" "agent +ready" "$out"
    expect "scope $scope: status says attach goes through the agent" "attach +agent" "$out"
    for round in 1 2; do
      out=$(attach)
      expect "scope $scope: attach $round through the agent" "Attached through the agent in target PID $target" "$out"
      expect "scope $scope: attach $round, pdb prints the target's counter" "\('counter', [0-9]+\)" "$out"
      expect "scope $scope: attach $round, q detaches" "Debugger detached" "$out"
      expect "scope $scope: the target runs on after attach $round" "^$target$" "$(client pid)"
    done
    out=$(client stack 2>&1)
    expect "scope $scope: stack comes from the agent, labelled" "read by the agent.*work_loop|work_loop.*read by the agent" "$(tr '\n' ' ' <<<"$out")"
    expect "scope $scope: pdb -p itself is still denied" "pdb denied" "$(yama_client pdb 2>&1)"
    stop_controller
  fi
  # Remote debugging disabled in the target: the agent's own trigger.
  target_env=(PYTHON_DISABLE_REMOTE_DEBUG=1)
  if start_controller; then
    for _ in $(seq 100); do client status 2>&1 | grep -Eq "agent +ready" && break; sleep 0.1; done
    out=$(attach)
    expect "scope $scope, remote debugging disabled: attach through the agent" "\('counter', [0-9]+\)" "$out"
    stop_controller
  fi
  target_env=()
  if start_controller --agent never; then
    start=$(date +%s)
    out=$(client attach </dev/null 2>&1); rc=$?
    took=$(($(date +%s) - start))
    expect "scope $scope, --agent never: client exits 5" "^5$" "$rc"
    case $scope in
      2) expect "scope 2: message names CAP_SYS_PTRACE" "ptrace_scope 2 \(admin-only\).*CAP_SYS_PTRACE" "$out" ;;
      3) expect "scope 3: message says disabled until reboot" "disabled until reboot" "$out" ;;
    esac
    expect "scope $scope: client answered within its timeout" "^([0-9]|[12][0-9])$" "$took"
    stop_controller
  fi
done

echo "yama: $passes passed, $fails failed (in ${SECONDS} s)"
((fails == 0))
