"""Pool.map over chunks of one large shared array, each worker writing its chunk in place.

The chunks are views of the shared array: each is pickled as a reference of a few hundred bytes
(name, offset, shape, strides, dtype), and the worker attaches to the same memory.

    python3 examples/pool_chunks.py [N] [fork|spawn|forkserver]
"""

import multiprocessing as mp
import os
import pickle
import sys
import time

import numpy as np

import shmbroker


def fill(task):
    chunk, start = task  # chunk: a writable view of the parent's array
    chunk[:] = np.sqrt(np.arange(start, start + chunk.size, dtype=chunk.dtype))
    return os.getpid()


def main(n=10_000_000, method=None):
    ctx = mp.get_context(method)
    name = f"examples/pool/{os.getpid()}"
    data = shmbroker.create(name, n, np.float64)
    try:
        bounds = np.linspace(0, n, 4 * (os.cpu_count() or 1) + 1, dtype=np.int64)
        tasks = [(data[lo:hi], int(lo)) for lo, hi in zip(bounds[:-1], bounds[1:])]
        print(f"{len(tasks)} chunks of ~{tasks[0][0].nbytes / 1e6:.1f} MB, "
              f"{len(pickle.dumps(tasks[0]))} bytes each when pickled")
        t0 = time.perf_counter()
        with ctx.Pool() as pool:
            pids = set(pool.map(fill, tasks))
        elapsed = time.perf_counter() - t0
        np.testing.assert_allclose(data, np.sqrt(np.arange(n, dtype=np.float64)))
        print(f"{ctx.get_start_method()}: {len(pids)} worker process(es) filled "
              f"{data.nbytes / 1e6:.0f} MB in place in {elapsed:.2f} s")
    finally:
        shmbroker.unlink(name)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000,
         sys.argv[2] if len(sys.argv) > 2 else None)
