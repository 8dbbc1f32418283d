"""Speaks the original helicopter-parent client's dialect over the FIFOs.

Like the published Python client: lowercase commands, a blocking open of
the control pipe, write, close, then a blocking open of the response pipe
and one line read. Prints each reply on a line of its own.

Usage: original_client.py FIFO_DIR COMMAND...
"""

import os
import sys


def send(directory, command):
    with open(os.path.join(directory, "control"), "w") as control:
        control.write(command + "\n")
    with open(os.path.join(directory, "response")) as response:
        return response.readline().rstrip("\n")


if __name__ == "__main__":
    directory = sys.argv[1]
    for command in sys.argv[2:]:
        command = command.replace("$PID", str(os.getpid()))
        print(send(directory, command), flush=True)
