"""A consumer starts before its producer: attach(name, wait=..., sealed=True) waits in the daemon
until the producer has made the segment and sealed it (immutable, enforced by the kernel), as
Plasma's get-with-timeout did. No polling, no sleep.

    python3 examples/seal_wait.py [fork|spawn|forkserver]
"""

import multiprocessing as mp
import os
import sys

import numpy as np

import shmbroker


def consumer(q, name):
    a = shmbroker.attach(name, wait=30, sealed=True)
    q.put((float(a.sum()), shmbroker.stat(name).sealed, a.flags.writeable))


def main(method="fork"):
    NAME = f"examples/sealed/{os.getpid()}"
    ctx = mp.get_context(method)
    q = ctx.Queue()
    c = ctx.Process(target=consumer, args=(q, NAME))
    c.start()  # before the segment exists
    a = shmbroker.create(NAME, 1_000_000, "float64")
    a[:] = 1.0
    a.seal()  # from here on nobody can change a byte; the waiting consumer attaches now
    total, sealed, writeable = q.get(timeout=60)
    c.join()
    assert total == 1_000_000 and sealed and not writeable
    try:
        shmbroker.attach(NAME, writable=True)
        raise SystemExit("a sealed segment was attached writable")
    except shmbroker.FailedPreconditionError:
        pass
    try:
        shmbroker.attach(NAME + "/never", wait=0.2)
        raise SystemExit("a wait did not run out")
    except TimeoutError:  # shmbroker.DeadlineExceededError
        pass
    shmbroker.unlink(NAME)
    print(f"{method}: the consumer waited, then read {total:.0f} from the sealed segment")


if __name__ == "__main__":
    main(*sys.argv[1:])
