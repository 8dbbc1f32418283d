"""A CPU-bound target whose time goes 70% to seventy() and 30% to
thirty(), by construction: each round, seventy() is busy 7 units of time
and thirty() 3, measured with time.perf_counter (no Python frame below
them while they spin). The unit varies from round to round (0.5 to 1.5
ms), so that no sampling rate keeps in step with the rounds: the shares
stay 70/30, and a sampler sees them so.

With an argument, it ends after that many seconds.
"""

import random
import sys
import time


def seventy(unit):
    end = time.perf_counter() + 7 * unit
    while time.perf_counter() < end:
        pass


def thirty(unit):
    end = time.perf_counter() + 3 * unit
    while time.perf_counter() < end:
        pass


def main():
    stop = time.perf_counter() + float(sys.argv[1]) if len(sys.argv) > 1 else None
    while stop is None or time.perf_counter() < stop:
        unit = random.uniform(0.0005, 0.0015)
        seventy(unit)
        thirty(unit)


main()
