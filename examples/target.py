"""A demo target for heli: a worker that counts, factorizes and sleeps.

Run it under the controller, then attach pdb from another terminal:

    cargo run --example controller -- examples/target.py
    cargo run --example client        # then: attach, p counter, q
"""

import logging
import random
import time

logging.basicConfig(level=logging.INFO, format="%(asctime)s target: %(message)s")
logger = logging.getLogger(__name__)

counter = 0


def factorize(n):
    """Return the prime factors of n, smallest first."""
    factors = []
    d = 2
    while d * d <= n:
        while n % d == 0:
            factors.append(d)
            n //= d
        d += 1
    if n > 1:
        factors.append(n)
    return factors


def work_loop():
    """Simulate some work being done."""
    global counter
    while True:
        counter += 1
        n = random.randint(10**5, 10**6)
        result = factorize(n)
        logger.info(f"Iteration {counter}, number {n} = {' x '.join(map(str, result))}")
        # Sleep in short steps so that injected code runs promptly.
        for _ in range(10):
            time.sleep(0.1)


if __name__ == "__main__":
    logger.info("started")
    try:
        work_loop()
    except KeyboardInterrupt:
        logger.info("interrupted; exiting")
