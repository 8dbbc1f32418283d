# heli's agent loader. The heli controller put this directory first on the
# PYTHONPATH of the process it started; Python's `site` imports this module
# at start-up. It sets up heli's agent (see _heli_agent.py), puts back the
# environment and sys.path as they were, then gives way to the process's
# own sitecustomize, if it has one: nothing of the user's is lost.


def _heli_load():
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    environ = os.environ
    fd = environ.pop("HELI_AGENT_FD", None)
    parent = environ.pop("HELI_AGENT_PARENT", None)
    original = environ.pop("HELI_AGENT_ORIG_PYTHONPATH", None)
    if original is None:
        environ.pop("PYTHONPATH", None)
    else:
        environ["PYTHONPATH"] = original
    sys.path[:] = [
        entry for entry in sys.path if not entry or os.path.abspath(entry) != here
    ]
    agent = None
    if fd is not None:
        # Only the process the controller started takes the agent: a
        # process it started that did not exec Python itself (a shell
        # running python as a child) passes the channel down, and that
        # child must not answer for its parent.
        if parent is not None and parent.isdigit() and int(parent) == os.getppid():
            sys.path.insert(0, here)
            try:
                import _heli_agent

                _heli_agent.start(int(fd), here)
                agent = _heli_agent
            except Exception as err:  # never break the target's start-up
                print(f"heli: the agent did not start: {err!r}", file=sys.stderr)
            finally:
                del sys.path[0]
        else:
            sys.path.insert(0, here)
            try:
                import _heli_agent

                _heli_agent.refuse(int(fd))
            except Exception:
                pass
            finally:
                del sys.path[0]
                sys.modules.pop("_heli_agent", None)
    # The process's own sitecustomize, found on the rest of sys.path. When
    # this module's import ends, importlib takes whatever sys.modules holds
    # under the name: the user's module, as if heli had never been here; or
    # None, which makes `import sitecustomize` fail as it would have without
    # heli (site ignores that ImportError, as it does when there is none).
    import importlib.util

    del sys.modules["sitecustomize"]
    try:
        if importlib.util.find_spec("sitecustomize") is None:
            sys.modules["sitecustomize"] = None
        else:
            import sitecustomize  # noqa: F401
    finally:
        if agent is not None:
            try:
                agent.ready()
            except Exception as err:
                print(f"heli: the agent did not start: {err!r}", file=sys.stderr)


_heli_load()
del _heli_load
