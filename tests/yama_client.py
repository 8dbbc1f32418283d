"""One client process that asks for a grant and runs pdb -p as its own
child, to prove what Yama allows it.

Usage: yama_client.py PYTHON ADDRESS STEP...

ADDRESS is a FIFO directory, or a session socket (`*.sock`, one connection
kept for all steps: a grant lasts as long as its connection).

Steps: `close` closes the socket connection (the process lives on); `pdb` runs `PYTHON -m pdb -p TARGET` as a child and prints
`pdb allowed <output>` or `pdb denied <output>`; any other step is sent as a
request (`$PID` is this process's pid, `$CHILD` the pid of a child it keeps
sleeping, another process a grant can go to) and its reply printed.
"""

import os
import socket
import subprocess
import sys


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


if __name__ == "__main__":
    python, address = sys.argv[1], sys.argv[2]
    send = socket_sender(address) if address.endswith(".sock") else fifo_sender(address)
    target = int(send("GET_TARGET_PID").split()[1])
    child = subprocess.Popen(["sleep", "1000"])
    try:
        for step in sys.argv[3:]:
            if step == "pdb":
                print(pdb(python, target), flush=True)
            else:
                step = step.replace("$PID", str(os.getpid())).replace("$CHILD", str(child.pid))
                print(send(step), flush=True)
    finally:
        child.kill()
