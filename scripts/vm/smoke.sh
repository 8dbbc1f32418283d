#!/usr/bin/env bash
# Guest smoke test for scripts/vm/run.sh:  bash scripts/vm/run.sh scripts/vm/smoke.sh
# Runs as root in the VM.  Proves the kernel has Yama and that, as an
# unprivileged user, ptrace attach obeys ptrace_scope 0/1/2/3.
# Exits 0 only if every expectation holds.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/guest-lib.sh"

fails=0 passes=0
check() { # check DESC EXPECTED ACTUAL
  if [[ $2 == "$3" ]]; then echo "ok   - $1 ($3)"; passes=$((passes + 1))
  else echo "FAIL - $1: expected $2, got $3"; fails=$((fails + 1)); fi
}

echo "kernel: $(uname -r) ($(uname -v))"
echo "ptrace_scope: $(cat /proc/sys/kernel/yama/ptrace_scope)"
[[ $(id -u) == 0 ]] || { echo "FAIL - smoke.sh must run as root in the guest"; exit 1; }

user=$(heli_vm_user)
work=$(heli_vm_workdir)
echo "test user: $(id "$user"), workdir $work"
check "user has no effective capabilities" 0000000000000000 \
  "$(as_user awk '/^CapEff/{print $2}' /proc/self/status)"

# ptrace(PTRACE_ATTACH) probe, stdlib only.  Prints, for each argument, OK or
# the errno name of the attach:
#   PID    attach to that (unrelated) process
#   child  fork, then attach to our own child
cat >"$work/probe.py" <<'PY'
import ctypes, errno, os, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_ATTACH, PTRACE_DETACH = 16, 17

def attach(pid):
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) == -1:
        return errno.errorcode.get(ctypes.get_errno(), "?")
    os.waitpid(pid, 0)
    libc.ptrace(PTRACE_DETACH, pid, None, None)
    return "OK"

res = []
for arg in sys.argv[1:]:
    if arg != "child":
        res.append(attach(int(arg)))
        continue
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    try:
        res.append(attach(pid))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
print(" ".join(res))
PY
chmod 0644 "$work/probe.py"

# The "sibling": started by the same user in its own session, so it is not a
# descendant of the tracer.
target=$(as_user setsid sh -c 'sleep 300 >/dev/null 2>&1 </dev/null & echo $!')
sleep 0.2
[[ -n $target && $(stat -c %u "/proc/$target" 2>/dev/null) == "$(id -u "$user")" ]] \
  || { echo "FAIL - sibling '$target' not running as $user"; exit 1; }
echo "sibling target: pid $target (uid $(stat -c %u "/proc/$target"))"

# -I -S: skip site; python start-up is slow over the guest's 9p root.
probe() { as_user python3 -I -S "$work/probe.py" "$@"; }
probe_root() { python3 -I -S "$work/probe.py" "$@"; }

for scope in 0 1 2 3; do   # 3 last: it cannot be lowered again
  set_ptrace_scope "$scope" || { check "set ptrace_scope=$scope" ok failed; continue; }
  echo "# ptrace_scope=$(cat /proc/sys/kernel/yama/ptrace_scope)"
  case $scope in
    0) exp_sib=OK    exp_child=OK    exp_root=OK ;;
    1) exp_sib=EPERM exp_child=OK    exp_root=OK ;;
    2) exp_sib=EPERM exp_child=EPERM exp_root=OK ;;
    3) exp_sib=EPERM exp_child=EPERM exp_root=EPERM ;;
  esac
  got_sib='' got_child=''
  read -r got_sib got_child < <(probe "$target" child)
  check "scope $scope: user attaches to unrelated sibling" "$exp_sib" "${got_sib:-nothing}"
  check "scope $scope: user attaches to own child" "$exp_child" "${got_child:-nothing}"
  check "scope $scope: root attaches to user's process" "$exp_root" "$(probe_root "$target")"
done
if set_ptrace_scope 1; then r=lowered; else r=refused; fi
check "scope 3 cannot be lowered" refused "$r"

kill "$target" 2>/dev/null
echo "smoke: $passes passed, $fails failed"
((fails == 0))
