"""An ordinary Pool program, unchanged but for one line: under shmbroker.auto_share(), the NumPy
arrays it sends to the workers and the ones they send back travel through shared memory by
reference instead of being pickled through a pipe. Nothing to name, unlink or close: each
segment is freed when no process uses it any more.

    python3 examples/auto_share_pool.py [MB] [fork|spawn|forkserver]
"""

import gc
import multiprocessing as mp
import sys

import numpy as np

import shmbroker


def normalize(a):
    return (a - a.mean()) / a.std()  # a new array of the same size, sent back


def main(mb="8", method="spawn"):
    n = int(mb) * (1 << 20) // 8
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(n) for _ in range(4)]
    before = {i.name for i in shmbroker.list("auto/*")}

    with shmbroker.auto_share():  # the one added line
        with mp.get_context(method).Pool(2) as pool:
            out = pool.map(normalize, data)

    for a, b in zip(data, out):
        assert isinstance(b, shmbroker.SharedArray)  # a reference came back, not the bytes
        np.testing.assert_array_equal(b, (a - a.mean()) / a.std())
    print(f"{method}: {len(data)} arrays of {mb} MB went to the workers and came back by reference")
    del out, b
    gc.collect()
    shmbroker.flush()  # tell the daemon now (it would be told with the next request anyway)
    left = {i.name for i in shmbroker.list("auto/*")} - before
    assert not left, left
    print("every segment freed")


if __name__ == "__main__":
    main(*sys.argv[1:])
