# heli's client side of an attach through the agent: pdb's own remote client
# (the one `python -m pdb -p` runs) on the sockets the controller handed over.
# argv: pid, the target's Python version, pdb's stream fd, the interrupt fd.
import select
import socket
import sys

pid = int(sys.argv[1])
target = sys.argv[2]
stream = socket.socket(fileno=int(sys.argv[3]))
interrupt = socket.socket(fileno=int(sys.argv[4]))
mine = "%d.%d" % sys.version_info[:2]
if ".".join(target.split(".")[:2]) != mine:
    print(
        f"PID {pid} runs Python {target}; this pdb is Python {sys.version.split()[0]}:"
        f" pdb needs the same minor version on both sides (set HELI_PYTHON)",
        file=sys.stderr,
    )
    sys.exit(2)
try:
    ready, _, _ = select.select([stream], [], [], 1.0)
    if not ready:
        print(
            f"Waiting for PID {pid}'s main thread to take the session (it is busy"
            f" outside Python, e.g. in a sleep or a read, or in an import or pdb's"
            f" own code); Ctrl-C cancels.",
            file=sys.stderr,
            flush=True,
        )
        select.select([stream], [], [])
except KeyboardInterrupt:
    # Nothing was sent to the target: closing the sockets withdraws the
    # request; the agent drops it when the main thread gets to it.
    print(f"\nCancelled: PID {pid} was left as it was.", file=sys.stderr)
    sys.exit(130)

import pdb  # noqa: E402

interrupt.setblocking(False)
pdb._PdbClient(pid, stream, interrupt).cmdloop()
