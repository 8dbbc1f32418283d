# Run by heli's agent on the main thread at its next safe point
# (sys.remote_exec on its own process): pdb for the client waiting.
import sys

import _heli_agent

_heli_agent.run_pending(sys._getframe(1))
