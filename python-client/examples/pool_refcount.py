"""Pool workers return arrays in refcount segments: the memory is freed when no process uses it
any more, with no unlink anywhere. A worker may exit before the parent unpickles its result
(maxtasksperchild=1 below): the array in flight holds its segment until it is attached.

    python3 examples/pool_refcount.py [COUNT] [fork|spawn|forkserver]
"""

import gc
import multiprocessing as mp
import sys

import numpy as np

import shmbroker


def make(i):
    a = shmbroker.create(None, (500, 500), "float64", lifetime="refcount")
    a[:] = i
    return a  # pickled by reference: the parent attaches the same memory


def main(count="8", method="spawn"):
    count = int(count)
    with mp.get_context(method).Pool(2, maxtasksperchild=1) as pool:
        arrays = pool.map(make, range(count))
    names = [shmbroker.segment_name(a) for a in arrays]
    total = sum(float(a[0, 0]) for a in arrays)
    assert total == sum(range(count))
    print(f"{method}: got {count} arrays of {arrays[0].nbytes >> 10} KiB from exited workers")
    del arrays
    gc.collect()
    shmbroker.flush()  # tell the daemon now (it would be told with the next request anyway)
    left = [n for n in names if shmbroker.list(n)]
    assert not left, left
    print("released: every segment freed")


if __name__ == "__main__":
    main(*sys.argv[1:])
