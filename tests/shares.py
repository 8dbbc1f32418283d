"""A CPU-bound target whose time goes 70% to seventy() and 30% to
thirty(), by construction: each round, seventy() is busy for 7 units of
the thread's CPU time and thirty() for 3 (no Python frame below them
while they spin). The unit varies from round to round (0.5 to 1.5 ms), so
that no sampling rate keeps in step with the rounds: the shares stay
70/30, and a sampler sees them so.

CPU time, not time.perf_counter: on a busy machine the target is
descheduled now and then for a few milliseconds. A function busy until a
wall-clock deadline loses the rest of its round to such a pause, and the
shorter one gains from pauses more than its share (30/70 of thirty's
rounds are cut short against fewer of seventy's): such a target showed
65/35 under load. Busy for its CPU time, each function is paused in
proportion to its time, and the wall time keeps the 70/30 shares too.

With an argument, it ends after that many seconds.
"""

import random
import sys
import time


def seventy(unit):
    end = time.thread_time() + 7 * unit
    while time.thread_time() < end:
        pass


def thirty(unit):
    end = time.thread_time() + 3 * unit
    while time.thread_time() < end:
        pass


def main():
    stop = time.perf_counter() + float(sys.argv[1]) if len(sys.argv) > 1 else None
    while stop is None or time.perf_counter() < stop:
        unit = random.uniform(0.0005, 0.0015)
        seventy(unit)
        thirty(unit)


main()
