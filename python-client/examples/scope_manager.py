"""SharedMemoryManager's tutorial with shmbroker.scope(): every segment made in the block is
freed when it ends, or when this process dies however it dies (the daemon sees the connection
close), so a crashed run leaves nothing behind.

    python3 examples/scope_manager.py [fork|spawn|forkserver]
"""

import multiprocessing as mp
import sys

import numpy as np

import shmbroker


def do_work(chunk, start, stop):
    # Writes through a pickled view: the worker attaches the same memory.
    chunk[start:stop] = np.arange(start, stop, dtype=chunk.dtype)


def main(method="fork"):
    ctx = mp.get_context(method)
    with shmbroker.scope(prefix="examples/scope/") as s:
        data = s.create(None, 2_000_000, "int64")  # a generated name under the prefix
        name = shmbroker.segment_name(data)
        writable = s.attach(name, writable=True)
        step = len(data) // 4
        with ctx.Pool(4) as pool:
            pool.starmap(do_work, [(writable, i * step, (i + 1) * step) for i in range(4)])
        assert (data == np.arange(len(data))).all()
        print(f"{method}: 4 workers filled {data.nbytes >> 20} MB of {name}")
    # The block is over: the name is gone, the arrays here still read their memory.
    try:
        shmbroker.stat(name)
        raise SystemExit("the scope's segment outlived it")
    except shmbroker.NotFoundError:
        pass
    print(f"after the block: {name} unlinked, data[-1] = {data[-1]}")


if __name__ == "__main__":
    main(*sys.argv[1:])
