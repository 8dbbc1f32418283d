"""The WSGI app the gunicorn tests serve (tests/gunicorn.rs and the Yama
VM suite): `/` answers its worker's pid; `/slow` says `slow PID` on stdout
and hangs in `slow_handler` until its worker's parent (the arbiter) goes."""

import os
import time


def slow_handler():
    print(f"slow {os.getpid()}", flush=True)
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.05)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        slow_handler()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d\n" % os.getpid()]
