"""One client process that asks for a grant and runs pdb -p as its own
child, to prove what Yama allows it.

Usage: yama_client.py PYTHON ADDRESS STEP...

ADDRESS is a FIFO directory, or a session socket (`*.sock`, one connection
kept for all steps: a grant lasts as long as its connection).

Steps: `close` closes the socket connection (the process lives on); `pdb`
runs `PYTHON -m pdb -p TARGET` as a child and prints `pdb allowed <output>`
or `pdb denied <output>`; `pdb:PID` the same for process PID (a worker of
the target's tree); `kill:PID` kills process PID (SIGKILL) and waits until
it is gone or a zombie, printing `killed PID`; `other:REQUEST` sends REQUEST from another process
(a child on a connection of its own) and prints its reply; `handoff:FILE`
forks, the parent writes its pid to FILE and exits, and the child carries on
with the same connection (and the same `$PID`) once FILE.go exists, so that
the suite can give the parent's pid to another process meanwhile;
`mem` opens the target's `/proc/PID/mem` (Yama rules it as it rules
ptrace: at once, without starting pdb) and prints `mem allowed` or `mem
denied`; `until:TEXT` asks `STATUS` every 0.2 s until its reply holds TEXT
(for a minute at most) and prints `until TEXT` (or `until TEXT: not
seen`); any other
step is sent as a request (`$PID` is this process's pid, `$CHILD` the pid of
a child it keeps sleeping, another process a grant can go to) and its reply
printed; `$PARENT` is this process's parent.
"""

import os
import socket
import subprocess
import sys
import time


def fifo_sender(directory):
    def send(command):
        with open(os.path.join(directory, "control"), "w") as control:
            control.write(command + "\n")
        with open(os.path.join(directory, "response")) as response:
            return response.readline().rstrip("\n")

    return send


def socket_sender(path):
    connection = socket.socket(socket.AF_UNIX)
    connection.connect(path)
    replies = connection.makefile()

    def send(command):
        if command == "close":
            replies.close()
            connection.close()
            return "closed"
        connection.sendall((command + "\n").encode())
        return replies.readline().rstrip("\n")

    return send


def pdb(python, target):
    try:
        run = subprocess.run(
            [python, "-m", "pdb", "-p", str(target)],
            input="p ('sum', 40 + 2)\nq\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return "pdb hung"
    output = " ".join((run.stdout + run.stderr).split())
    if run.returncode == 0 and "('sum', 42)" in output:
        return "pdb allowed"
    if "insufficient permissions" in output or "Operation not permitted" in output:
        return "pdb denied"
    return f"pdb failed rc={run.returncode}: {output[-300:]}"


def mem(target):
    try:
        with open(f"/proc/{target}/mem", "rb"):
            return "mem allowed"
    except PermissionError:
        return "mem denied"


def until(send, text):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if text in send("STATUS"):
            return f"until {text}"
        time.sleep(0.2)
    return f"until {text}: not seen"


def kill(pid):
    os.kill(pid, 9)
    for _ in range(600):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    return f"killed {pid}"


def other(python, address, request):
    """REQUEST's reply when another process (this script, run as a child)
    sends it on its own connection."""
    run = subprocess.run(
        [sys.executable, __file__, python, address, request],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return (run.stdout + run.stderr).strip()


def handoff(stamp):
    """Fork; the parent writes its pid to `stamp` and exits, the child
    returns once the parent is gone and `stamp`.go exists."""
    parent = os.getpid()
    if os.fork():
        with open(stamp + ".tmp", "w") as out:
            out.write(f"{parent}\n")
        os.rename(stamp + ".tmp", stamp)
        os._exit(0)
    for _ in range(1200):
        if os.getppid() != parent and os.path.exists(stamp + ".go"):
            return
        time.sleep(0.1)
    sys.exit("handoff: no go after 120 s")


if __name__ == "__main__":
    python, address = sys.argv[1], sys.argv[2]
    send = socket_sender(address) if address.endswith(".sock") else fifo_sender(address)
    target = int(send("GET_TARGET_PID").split()[1])
    me = os.getpid()
    child = subprocess.Popen(["sleep", "1000"])
    try:
        for step in sys.argv[3:]:
            step = step.replace("$PID", str(me)).replace("$CHILD", str(child.pid))
            step = step.replace("$PARENT", str(os.getppid()))
            if step == "pdb":
                print(pdb(python, target), flush=True)
            elif step.startswith("pdb:"):
                print(pdb(python, int(step[len("pdb:") :])), flush=True)
            elif step.startswith("kill:"):
                print(kill(int(step[len("kill:") :])), flush=True)
            elif step.startswith("other:"):
                print(other(python, address, step[len("other:") :]), flush=True)
            elif step.startswith("handoff:"):
                handoff(step[len("handoff:") :])
            elif step == "mem":
                print(mem(target), flush=True)
            elif step.startswith("until:"):
                print(until(send, step[len("until:") :]), flush=True)
            else:
                print(send(step), flush=True)
    finally:
        child.kill()
