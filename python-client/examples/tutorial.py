"""The classic shared-memory tutorial, with shmbroker.

The parent creates a 100,000-element float64 array; a child process attaches to it by name and
sets it to 42.0; the parent sees 42.0 everywhere. No shape or dtype to pass around, no
resource_tracker, nothing to close.

    python3 examples/tutorial.py [fork|spawn|forkserver]
"""

import multiprocessing as mp
import os
import sys

import numpy as np

import shmbroker


def child(name):
    arr = shmbroker.attach(name, writable=True)  # shape and dtype come from the daemon
    arr[:] = 42.0


def main(method=None):
    ctx = mp.get_context(method)
    name = f"examples/tutorial/{os.getpid()}"
    arr = shmbroker.create(name, 100_000, np.float64)
    try:
        p = ctx.Process(target=child, args=(name,))
        p.start()
        p.join()
        assert p.exitcode == 0, f"child exited with {p.exitcode}"
        assert (arr == 42.0).all()
        print(f"{ctx.get_start_method()}: the parent sees {arr[0]} in all {arr.size} elements")
    finally:
        shmbroker.unlink(name)  # processes still using it keep their memory


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
