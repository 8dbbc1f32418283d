"""Grant/revoke cycles against a real controller on a real Yama kernel,
with the target frozen (cgroup freezer) and thawed in the middle, while
another connection keeps asking STATUS: no request may hang.

Usage: yama_endurance.py SOCKET CYCLES STAMP

Each cycle sends `GRANT_ACCESS <own pid>` then `REVOKE` on one connection
and checks what Yama allows this process: the target's memory may be opened
(PTRACE_MODE_ATTACH) after the grant and not after the revoke, and the
target is never left traced (`TracerPid`) or stopped (`State` t/T).

Halfway through it writes STAMP.freeze and waits for STAMP.frozen (the
suite, as root, froze the target's cgroup), asks for a grant (which must
fail within the controller's deadline, saying the target is frozen) and
STATUS (which must say so), writes STAMP.thaw, waits for STAMP.thawed, and
carries on. A thread asks STATUS on a connection of its own every 20 ms
throughout. Prints `key value` lines; exits 1 if anything was wrong.

A request counts as hung when it took longer than a client waits (2 s, 6 s
for grants) beyond any time the whole machine stood still meanwhile: under
qemu's TCG on a busy host the guest can stall for seconds, which no
controller could help. Another thread measures those stalls (how late a
5 ms sleep wakes up), and the longest is printed.
"""

import os
import socket
import sys
import threading
import time

# The longest a reply may take before it counts as a hang: a client's
# timeout (2 s; 6 s for grants and revokes).
STATUS_LIMIT = 2.0
GRANT_LIMIT = 6.0


class Stalls(threading.Thread):
    """Times when the whole machine stood still: a 5 ms sleep that woke up
    more than 100 ms late."""

    def __init__(self):
        super().__init__(daemon=True)
        self.gaps = []  # (start, end) of each stall
        self.lock = threading.Lock()

    def run(self):
        while True:
            before = time.monotonic()
            time.sleep(0.005)
            after = time.monotonic()
            if after - before > 0.1:
                with self.lock:
                    self.gaps.append((before, after))

    def within(self, start, end):
        """How long the machine stood still between `start` and `end`."""
        with self.lock:
            return sum(max(0.0, min(end, b) - max(start, a)) for a, b in self.gaps)

    def longest(self):
        with self.lock:
            return max((b - a for a, b in self.gaps), default=0.0)


STALLS = Stalls()


class Connection:
    def __init__(self, path):
        self.socket = socket.socket(socket.AF_UNIX)
        self.socket.settimeout(30)
        self.socket.connect(path)
        self.replies = self.socket.makefile()

    def ask(self, request):
        """The reply to `request`, and how long it took in seconds, less the
        time the whole machine stood still meanwhile."""
        start = time.monotonic()
        self.socket.sendall((request + "\n").encode())
        reply = self.replies.readline().rstrip("\n")
        end = time.monotonic()
        return reply, end - start - STALLS.within(start, end)


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def untouched(pid):
    """Why the target does not look untouched (traced or stopped), or None."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = proc_status(f"{pid}/task/{task}")
        except FileNotFoundError:
            continue
        if fields["TracerPid"] != "0":
            return f"thread {task} traced by {fields['TracerPid']}"
        if fields["State"][0] in "tT":
            return f"thread {task} in state {fields['State']}"
    return None


def may_attach(pid):
    """Whether Yama lets this process open the target's memory."""
    try:
        os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))
        return True
    except PermissionError:
        return False


def wait_for(path, limit=60):
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"no {path} after {limit} s")
        time.sleep(0.02)


class StatusPoller(threading.Thread):
    """Asks STATUS every 20 ms; records the answer times."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.connection = Connection(path)
        self.times = []
        self.window = None  # answer times while the target is frozen
        self.failures = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            reply, took = self.connection.ask("STATUS")
            if not reply.startswith("STATUS "):
                self.failures.append(reply)
            self.times.append(took)
            if self.window is not None:
                self.window.append(took)
            time.sleep(0.02)


def main():
    path, cycles, stamp = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    STALLS.start()
    me = os.getpid()
    grants = Connection(path)
    target = int(grants.ask("GET_TARGET_PID")[0].split()[1])
    poller = StatusPoller(path)
    poller.start()
    problems = []
    grant_times = []

    def cycle(n):
        reply, took = grants.ask(f"GRANT_ACCESS {me}")
        grant_times.append(took)
        if reply != "READY":
            problems.append(f"cycle {n}: grant: {reply}")
        elif not may_attach(target):
            problems.append(f"cycle {n}: granted, yet the target's memory is denied")
        reply, took = grants.ask("REVOKE")
        grant_times.append(took)
        if reply != "READY":
            problems.append(f"cycle {n}: revoke: {reply}")
        elif may_attach(target):
            problems.append(f"cycle {n}: revoked, yet the target's memory is allowed")
        why = untouched(target)
        if why:
            problems.append(f"cycle {n}: {why}")

    for n in range(cycles // 2):
        cycle(n)

    # Frozen: the grant fails within its deadline, and says why; STATUS says
    # so too; the target is left as it was.
    open(stamp + ".freeze", "w").close()
    wait_for(stamp + ".frozen")
    poller.window = []
    reply, took = grants.ask(f"GRANT_ACCESS {me}")
    print(f"frozen_grant_reply {reply}")
    print(f"frozen_grant_seconds {took:.2f}")
    if "frozen" not in reply or not reply.startswith("ERROR"):
        problems.append(f"frozen: grant: {reply}")
    if took > GRANT_LIMIT:
        problems.append(f"frozen: the grant took {took:.2f} s")
    status, _ = Connection(path).ask("STATUS")
    if "target_state=frozen" not in status:
        problems.append(f"frozen: STATUS: {status}")
    why = untouched(target)
    if why:
        problems.append(f"frozen: {why}")
    frozen_window = poller.window
    poller.window = None
    open(stamp + ".thaw", "w").close()
    wait_for(stamp + ".thawed")
    # Whatever the frozen grant left undone is undone, not done late.
    time.sleep(0.5)
    if may_attach(target):
        problems.append("thawed: the failed grant took effect after all")
    why = untouched(target)
    if why:
        problems.append(f"thawed: {why}")

    for n in range(cycles // 2, cycles):
        cycle(n)

    poller.stop.set()
    poller.join(timeout=10)
    times = sorted(poller.times)
    hangs = sum(1 for t in poller.times if t > STATUS_LIMIT)
    hangs += sum(1 for t in grant_times if t > GRANT_LIMIT)
    print(f"cycles {cycles}")
    print(f"status_requests {len(times)}")
    print(f"status_median_ms {1000 * times[len(times) // 2]:.2f}")
    print(f"status_max_ms {1000 * times[-1]:.2f}")
    if frozen_window:
        print(f"status_while_frozen_requests {len(frozen_window)}")
        print(f"status_while_frozen_max_ms {1000 * max(frozen_window):.2f}")
    else:
        problems.append("no STATUS was answered while the grant waited")
    grant_times.sort()
    print(f"grant_revoke_median_ms {1000 * grant_times[len(grant_times) // 2]:.2f}")
    print(f"grant_revoke_max_ms {1000 * grant_times[-1]:.2f}")
    print(f"machine_stall_max_ms {1000 * STALLS.longest():.2f}")
    print(f"hangs {hangs}")
    problems += [f"STATUS: {failure}" for failure in poller.failures]
    for problem in problems[:20]:
        print(f"problem {problem}")
    print(f"problems {len(problems)}")
    return 1 if problems or hangs else 0


if __name__ == "__main__":
    sys.exit(main())
