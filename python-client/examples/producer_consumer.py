"""A producer publishes arrays under names; consumers attach to them read-only.

The producer exits as soon as it has published: the segments live on in the daemon until they
are unlinked, so consumers can attach whenever they get to it. Consumers map them read-only
(kernel-enforced), and read the metadata the producer attached.

    python3 examples/producer_consumer.py [COUNT] [fork|spawn|forkserver]
"""

import multiprocessing as mp
import os
import sys

import numpy as np

import shmbroker


def producer(prefix, count, names):
    rng = np.random.default_rng(0)
    for i in range(count):
        frame = rng.random((480, 640), dtype=np.float32)
        name = f"{prefix}/frame-{i:04d}"
        shmbroker.share(frame, name, attrs={"seq": str(i), "mean": repr(float(frame.mean()))})
        names.put(name)
    print(f"producer {os.getpid()}: published {count} frames, exiting")


def consumer(names, results):
    while (name := names.get()) is not None:
        frame = shmbroker.attach(name)  # read-only: frame.flags.writeable is False
        assert not frame.flags.writeable
        expected = float(shmbroker.stat(name).attrs["mean"])
        results.put((name, float(frame.mean()), expected, os.getpid()))
    results.put(None)


def main(count=64, method=None, consumers=2):
    ctx = mp.get_context(method)
    prefix = f"examples/pc/{os.getpid()}"
    names, results = ctx.Queue(), ctx.Queue()
    try:
        prod = ctx.Process(target=producer, args=(prefix, count, names))
        prod.start()
        workers = [ctx.Process(target=consumer, args=(names, results)) for _ in range(consumers)]
        for w in workers:
            w.start()
        prod.join()
        assert prod.exitcode == 0
        for _ in workers:
            names.put(None)
        seen, done, pids = {}, 0, set()
        while done < consumers:
            r = results.get()
            if r is None:
                done += 1
                continue
            name, mean, expected, pid = r
            assert abs(mean - expected) < 1e-6, (name, mean, expected)
            seen[name] = mean
            pids.add(pid)
        for w in workers:
            w.join()
            assert w.exitcode == 0
        assert len(seen) == count
        listed = shmbroker.list(prefix + "/*")
        assert [i.name for i in listed] == sorted(seen)
        print(f"{len(pids)} consumer process(es) read {len(seen)} frames of "
              f"{listed[0].nbytes // 1024} KiB each, read-only; all means match the producer's")
    finally:
        shmbroker.purge([prefix + "/*"])


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 64, sys.argv[2] if len(sys.argv) > 2 else None)
