# heli's agent: runs inside a Python process the heli controller started,
# and talks only to that controller, through the socket the controller made
# and passed down (no path, no port: nothing else can reach it).
#
# One daemon thread, "heli-agent", blocked in poll(): idle, it never wakes.
# On request it
# - schedules pdb on the main thread at its next safe point (sys.remote_exec
#   on this very process, which the kernel allows at every Yama scope; where
#   remote debugging is disabled, _thread.interrupt_main with a handler of
#   ours), pdb speaking to the client over the sockets the controller gave;
# - reads every thread's stack (sys._current_frames).
#
# The channel: one JSON object a line. From the agent: {"hello": ...} once,
# then answers {"id": n, "ok": true, ...} or {"id": n, "error": "..."}. From
# the controller: {"id": n, "op": "attach", "session": s, "colorize": bool}
# (with two file descriptors: pdb's stream, the interrupt stream; answered
# with the earlier sessions still on, "earlier_on": [s, ...]), {"id": n,
# "op": "stacks"}, or {"id": n, "op": "hangup", "session": s} (the time of
# session s is up: its sockets are shut down, whoever holds the client's
# ends; answered with whether it was on, "ended": bool). A forked child gets an agent of its own over a new channel it
# sends the controller ({"child": ...} with the channel's other end); it
# never answers for its parent.

import os
import socket
import sys
import threading

MAX_LINE = 64 * 1024
MAX_FDS = 4
# While work waits for the main thread, the agent thread looks every so
# often whether the main thread put it off (it was in pdb's code or in an
# import, see _busy): first after RETRY_FIRST seconds, then twice as long
# each time, up to RETRY_MOST.
RETRY_FIRST = 0.02
RETRY_MOST = 1.0
# How long the main thread puts work off at most: a main thread that stays
# busy (a target run under its own pdb) then gets it anyway.
DEFER_MOST = 10.0
# The signal whose Python handler runs pdb where remote debugging is
# disabled: raised only by _thread.interrupt_main (no signal is sent), or by
# someone sending it, in which case the previous handler gets it.
TRIGGER_SIGNAL = None

_agent = None


def start(fd, directory):
    """Starts the agent on the inherited channel `fd` (from sitecustomize,
    on the main thread)."""
    global _agent, TRIGGER_SIGNAL
    channel = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    version = "%d.%d.%d" % sys.version_info[:3]
    if sys.version_info < (3, 14):
        _send(channel, '{"unsupported": {"pid": %d, "python": "%s"}}' % (os.getpid(), version))
        channel.close()
        return
    remote = sys.is_remote_debug_enabled()
    # A seccomp filter (a container's) may forbid the process_vm_writev
    # that sys.remote_exec does even on this process: then the handler is
    # the way, set up now (only the main thread may).
    if not remote or _seccomp_filtered():
        import signal

        TRIGGER_SIGNAL = signal.SIGRTMIN + 6
        _Chained(signal, TRIGGER_SIGNAL)
    trigger = "remote_exec" if remote else "signal"
    _agent = _Agent(channel, os.path.join(directory, "_heli_attach.py"), version, trigger)
    os.register_at_fork(after_in_child=_forked)


def ready():
    """Says hello to the controller and starts serving: once start-up is
    over (the process's own sitecustomize has run), so that pdb never
    starts in the middle of it."""
    agent = _agent
    if agent is not None:
        _send(agent.channel, agent.hello("hello"))
        agent.run()


def _seccomp_filtered():
    try:
        with open("/proc/self/status") as status:
            return any(line.split() == ["Seccomp:", "2"] for line in status)
    except OSError:
        return False


def refuse(fd):
    """Tells the controller this process does not take the agent (it is
    not the one the controller started: a wrapper ran it without exec),
    and closes the channel."""
    try:
        channel = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        _send(channel, '{"not_target": {"pid": %d}}' % os.getpid())
    except OSError:
        pass
    channel.close()


def _send(sock, line):
    sock.sendall(line.encode() + b"\n")


class _Chained:
    """The trigger signal's handler: pdb when one is pending, else what the
    signal did before."""

    def __init__(self, signal, signum):
        self.signal = signal
        self.signum = signum
        self.previous = signal.signal(signum, self)

    def __call__(self, signum, frame):
        agent = _agent
        if agent is not None and agent.triggered:
            # Ours (interrupt_main): possibly for work an earlier call
            # already did, as two triggers may come as one call.
            agent.triggered = False
            agent.run_pending(frame)
            return
        previous = self.previous
        if callable(previous):
            previous(signum, frame)
        elif previous == self.signal.SIG_DFL:
            self.signal.signal(signum, self.signal.SIG_DFL)
            os.kill(os.getpid(), signum)


class _Agent:
    def __init__(self, channel, script, version, trigger):
        self.channel = channel
        self.script = script
        self.version = version
        self.trigger = trigger
        # Set by the agent thread, taken by the main thread.
        self.pending = None
        # The interrupt socket of the session on, watched by the agent thread.
        self.interrupt = None
        # The sockets of each session started, by number, until pdb's
        # stream is closed: for hangup.
        self.sessions = {}
        # The pdb server of the session on, once started; and one whose
        # client went away while the target ran on, for the main thread to
        # let go of.
        self.server = None
        self.release = None
        # Set before each interrupt_main, so that the handler tells its own
        # triggers from a real signal.
        self.triggered = False
        # Set by the main thread when it put the pending work off: the agent
        # thread triggers it again.
        self.deferred = False
        # When the work outstanding was first put off (time.monotonic()).
        self.deferred_since = None
        self.lock = threading.Lock()
        self.thread = None

    def hello(self, kind):
        return '{"%s": {"pid": %d, "python": "%s", "trigger": "%s"}}' % (
            kind,
            os.getpid(),
            self.version,
            self.trigger,
        )

    def run(self):
        self.thread = threading.Thread(target=self.serve, name="heli-agent", daemon=True)
        self.thread.start()

    # The agent thread.

    def serve(self):
        import select

        buffer = b""
        held = []
        retry = RETRY_FIRST
        try:
            while True:
                # poll, not select: a process with more than FD_SETSIZE
                # (1024) files open gets sockets numbered beyond it.
                poller = select.poll()
                poller.register(self.channel, select.POLLIN)
                interrupt = self.interrupt
                if interrupt is not None:
                    poller.register(interrupt, select.POLLIN)
                if self.outstanding():
                    readable = {fd for fd, _ in poller.poll(retry * 1000)}
                    retry = min(retry * 2, RETRY_MOST)
                    self.retry_deferred()
                else:
                    # Idle: asleep until the controller or the client speaks.
                    retry = RETRY_FIRST
                    readable = {fd for fd, _ in poller.poll()}
                if interrupt is not None and interrupt.fileno() in readable:
                    self.interrupted(interrupt)
                if self.channel.fileno() not in readable:
                    continue
                data, fds, _, _ = socket.recv_fds(self.channel, MAX_LINE, MAX_FDS)
                if not data:
                    break
                held.extend(fds)
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.answer(line, held)
                    held = []
                if len(buffer) > MAX_LINE:
                    break
        except Exception:
            pass
        finally:
            for fd in held:
                _close(fd)
            self.closed()

    def outstanding(self):
        return self.pending is not None or self.release is not None

    def retry_deferred(self):
        with self.lock:
            deferred, self.deferred = self.deferred, False
        if deferred:
            try:
                self.trigger_main()
            except Exception:
                # Asked again at the next look, the work never lost.
                with self.lock:
                    self.deferred = True

    def closed(self):
        global _agent
        try:
            self.channel.close()
        except OSError:
            pass
        if _agent is self:
            _agent = None

    def answer(self, line, fds):
        import json

        ident = None
        try:
            request = json.loads(line)
            ident = request.get("id") if isinstance(request, dict) else None
            if not isinstance(ident, int):
                raise ValueError("no request id")
            op = request.get("op")
            if op == "attach":
                # Handed over: attach closes them, once, whatever happens.
                taken, fds = fds, []
                reply = self.attach(request, taken)
            elif op == "stacks":
                reply = {"threads": _stacks()}
            elif op == "hangup":
                reply = {"ended": self.hang_up(request)}
            else:
                raise ValueError("unknown request")
            reply["id"] = ident
            reply["ok"] = True
        except Exception as err:
            reply = {"id": ident, "error": str(err) or type(err).__name__}
        finally:
            for fd in fds:
                _close(fd)
        _send(self.channel, json.dumps(reply))

    def attach(self, request, fds):
        session = request.get("session")
        if len(fds) != 2 or not isinstance(session, int):
            for fd in fds:
                _close(fd)
            raise ValueError("attach needs two sockets and a session number")
        stream = socket.socket(fileno=fds[0])
        interrupt = socket.socket(fileno=fds[1])
        with self.lock:
            busy = self.pending is not None or self.interrupt is not None
            if not busy:
                self.pending = (stream, bool(request.get("colorize")))
                # New work: put off for DEFER_MOST from now at most.
                self.deferred_since = None
                self.interrupt = interrupt
                # Sessions whose sockets are both closed are over.
                self.sessions = {
                    number: sockets for number, sockets in self.sessions.items() if _open(sockets)
                }
                earlier_on = sorted(self.sessions)
                self.sessions[session] = (stream, interrupt)
        if busy:
            stream.close()
            interrupt.close()
            raise ValueError("a debugger is already attached through the agent")
        try:
            self.trigger_main()
        except Exception:
            with self.lock:
                self.pending = None
                self.interrupt = None
                self.sessions.pop(session, None)
            stream.close()
            interrupt.close()
            raise
        return {"earlier_on": earlier_on}

    def hang_up(self, request):
        """Ends a session whose time is up: its sockets shut down, pdb in
        the main thread reads the end of its stream and detaches (at its
        prompt, or when it next reads), the agent thread finds the
        interrupt stream ended as when a client goes away, and whoever
        holds the client's ends reads their end. A session over is left
        alone: a later one is never ended in its place."""
        with self.lock:
            sockets = self.sessions.pop(request.get("session"), None)
        if sockets is None or not _open(sockets):
            return False
        # Either may be the one kept: pdb's stream (pdb at its prompt, or
        # the target running on under it), or the interrupt stream alone
        # (pdb quit, a byte written there still interrupts the target).
        for sock in _open(sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return True

    def trigger_main(self):
        """Has the main thread call run_pending at its next safe point."""
        if self.trigger == "remote_exec":
            try:
                _remote_exec(self.script)
                return
            except PermissionError as err:
                if TRIGGER_SIGNAL is None:
                    raise PermissionError(
                        f"sys.remote_exec on this process is not permitted ({err}): a seccomp "
                        "filter forbids process_vm_writev"
                    ) from None
        import _thread

        self.triggered = True
        _thread.interrupt_main(TRIGGER_SIGNAL)

    def interrupted(self, interrupt):
        try:
            data = interrupt.recv(64)
        except OSError:
            data = b""
        if data:
            # As `pdb -p` does with os.kill(pid, SIGINT) on Unix: a blocking
            # call in the main thread is interrupted too.
            import signal

            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            return
        # The client is gone: the session is over. A pdb server it left
        # attached while the target runs on (`continue`, then the client was
        # killed) would refuse every later attach: the main thread lets go of
        # it.
        with self.lock:
            if self.interrupt is interrupt:
                self.interrupt = None
            pending, self.pending = self.pending, None
            server, self.server = self.server, None
            if pending is None and server is not None:
                self.release = server
        interrupt.close()
        if pending is not None:
            pending[0].close()
        elif server is not None:
            try:
                self.trigger_main()
            except Exception:
                pass

    # The main thread.

    def run_pending(self, frame):
        import time

        busy = _busy(frame)
        now = time.monotonic()
        with self.lock:
            if busy and self.outstanding():
                since = self.deferred_since
                if since is None:
                    self.deferred_since = since = now
                if now - since < DEFER_MOST:
                    # Not now: the agent thread triggers this again.
                    self.deferred = True
                    return
            self.deferred_since = None
            self.deferred = False
            pending, self.pending = self.pending, None
            release, self.release = self.release, None
        try:
            self._run(frame, pending, release)
        except BaseException as err:
            # Never a client left waiting for a session that cannot start;
            # nothing on the target's stderr (its client has the reason).
            if pending is not None:
                _refuse(pending[0], f"heli: pdb could not start in the target: {err!r}")
            if not isinstance(err, Exception):
                raise  # a real Ctrl-C or exit of the target's own goes on

    def _run(self, frame, pending, release):
        if release is not None:
            _release(release)
            release = None
        if pending is None:
            return
        stream, colorize = pending
        if _hung_up(stream):
            # The client gave up before the main thread got here.
            stream.close()
            return
        import gc
        import pdb

        # What earlier sessions left goes now, not as garbage collected
        # under the new session's trace (where pdb would stop in it).
        gc.collect()
        with stream:
            sockfile = stream.makefile("rwb")
        server = pdb._PdbServer(sockfile, colorize=colorize)
        if pdb.Pdb._last_pdb_instance is not None:
            server.error("Another PDB instance is already attached.")
            sockfile.close()
        else:
            with self.lock:
                self.server = server
            server.set_trace(frame=frame)


def _busy(frame):
    """Whether the main thread is, from `frame` down, in the middle of what
    a pdb session must not start in: pdb's own code (a session ending,
    whose tear-down switches tracing off and would end a new one at once),
    or an import of a module pdb's own imports could need (the target's
    first `import logging` runs as the agent is ready: pdb's imports would
    find it half made). An import of the target's own module is no reason:
    some programs run for good from one."""
    modules = (sys.modules.get(name) for name in ("pdb", "bdb", "cmd"))
    debugger = {id(module.__dict__) for module in modules if module is not None}
    while frame is not None:
        if id(frame.f_globals) in debugger:
            return True
        frame = frame.f_back
    stdlib = os.path.dirname(os.__file__)
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        if getattr(spec, "_initializing", False):
            origin = getattr(spec, "origin", None) or ""
            if not os.path.isabs(origin) or origin.startswith(stdlib + os.sep):
                return True
    return False


def _refuse(stream, message):
    """Ends a session that cannot start, saying why in pdb's protocol."""
    import json

    try:
        line = json.dumps({"message": message + "\n", "type": "error"}) + "\n"
        stream.sendall(line.encode())
    except OSError:
        pass
    finally:
        stream.close()


def _remote_exec(script):
    """sys.remote_exec on this process, tried again on a RuntimeError: under
    load it once failed with "Can't find the main thread in the remote
    process" (once in 12 runs of the agent tests on a loaded machine)."""
    import time

    for delay in (0.01, 0.05, None):
        try:
            sys.remote_exec(os.getpid(), script)
            return
        except RuntimeError:
            if delay is None:
                raise
            time.sleep(delay)


def _release(server):
    """Lets go of a pdb server whose client is gone (on the main thread):
    no breakpoint or trace of it left, its instance no longer in the
    way."""
    import pdb

    if pdb.Pdb._last_pdb_instance is not server:
        # pdb let go of it by itself: its client said quit, or its prompt
        # read the end of the stream.
        return
    try:
        server.clear_all_breaks()
        server.set_continue()
    except Exception:
        pass
    finally:
        server.detach()


def _open(sockets):
    """Those of `sockets` still open in this process."""
    return [sock for sock in sockets if sock.fileno() != -1]


def _hung_up(sock):
    import select

    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _close(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def run_pending(frame):
    """Runs the pending pdb session on the main thread (the attach script)."""
    agent = _agent
    if agent is not None:
        agent.run_pending(frame)


def _stacks():
    main = threading.main_thread().ident
    threads = {thread.ident: thread for thread in threading.enumerate()}
    stacks = []
    for ident, frame in sys._current_frames().items():
        frames = []
        while frame is not None:
            code = frame.f_code
            frames.append({"function": code.co_name, "file": code.co_filename, "line": frame.f_lineno})
            frame = frame.f_back
        frames.reverse()
        thread = threads.get(ident)
        stacks.append(
            {
                "native_thread_id": (thread.native_id if thread is not None else None) or 0,
                "thread_id": ident,
                "name": thread.name if thread is not None else None,
                "interpreter_id": 0,
                "main": ident == main,
                "activity": None,
                "gil": None,
                "frames": frames,
                "incomplete": None,
            }
        )
    return stacks


def _forked():
    """In a forked child: the parent's channel and session are not ours. The
    child gets an agent of its own, on a channel it hands the controller."""
    global _agent
    parent, _agent = _agent, None
    if parent is None:
        return
    # Not under parent.lock: the agent thread may have held it at the fork,
    # and it does not exist here (this is the only thread).
    pending, parent.pending = parent.pending, None
    interrupt, parent.interrupt = parent.interrupt, None
    server = parent.server or parent.release
    parent.server = parent.release = None
    for sock in (pending[0] if pending else None, interrupt):
        if sock is not None:
            sock.close()
    # Nor is a pdb session of the parent's, which the child inherited (a
    # fork while pdb traces the parent: the child would stop at its
    # breakpoints and talk over the parent's stream, out of reach of the
    # end of that session once the parent lets go of it). The child lets
    # go of it, and closes its copies of every session's sockets: the
    # parent's sessions go on.
    if server is not None:
        try:
            _release(server)
        except Exception:
            pass
    for sockets in parent.sessions.values():
        for sock in sockets:
            sock.close()
    parent.sessions = {}
    mine = None
    try:
        mine, theirs = socket.socketpair()
        with theirs:
            line = (parent.hello("child") + "\n").encode()
            socket.send_fds(parent.channel, [line], [theirs.fileno()])
    except OSError:
        if mine is not None:
            mine.close()
        mine = None
    finally:
        parent.channel.close()
    if mine is not None:
        _agent = _Agent(mine, parent.script, parent.version, parent.trigger)
        _agent.run()
