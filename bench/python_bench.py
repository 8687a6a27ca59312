#!/usr/bin/python3
"""Python benchmark: shmbroker against the usual ways of sharing a NumPy array.

1. Big array: a parent makes an array of N float64 (default 100,000,000: 800 MB) and a child
   process gets access to it and checks it (sums it and compares). Timed from the moment the
   parent starts handing the array over until the child's answer is back, child start-up
   included (every child is started the same way, by fork). Queue, Pipe and Manager pickle the
   whole array, so they run on N/20 elements and their time is scaled up by 20.
2. Churn: a producer hands small arrays (4 KiB, 64 KiB, 1 MiB) one by one to a long-lived
   consumer, which gets access, reads (sums) and answers. Timed per array: make, fill, hand over,
   attach, read, answer, release.

Prints the median of each and its ratio to shmbroker (ratio > 1: slower than shmbroker).

    /usr/bin/python3 bench/python_bench.py              # the defaults: a few minutes
    /usr/bin/python3 bench/python_bench.py -n 10000000 --repeat 3 --churn-items 300

Uses the daemon at the usual socket path ($SHMBROKER_SOCKET, ...); if none answers, starts
build/bin/shmbrokerd (or --shmbrokerd PATH) on a temporary socket for the run.
"""

import argparse
import gc
import multiprocessing as mp
import multiprocessing.shared_memory as mp_shm
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "python-client"))
import shmbroker  # noqa: E402

CTX = mp.get_context("fork")
SCALE = 20  # Queue, Pipe and Manager move N / SCALE elements


# --- Big array: the child side of each method ----------------------------------------------------
# Every child gets what it needs, checks the sum and sends ("ok", sum) or an error back.

def _check(arr, expected):
    s = float(arr.sum())
    return ("ok", s) if s == expected else ("bad", s)


def child_fork(conn, expected):
    conn.send(_check(_FORK_SOURCE, expected))


def child_shared_memory(conn, name, shape, dtype, expected):
    # Forked: this child shares the parent's resource tracker, so attaching registers the name
    # there a second time, harmlessly (with spawn it would unlink the segment when the child
    # exits, gh-82300).
    shm = mp_shm.SharedMemory(name)
    arr = np.ndarray(shape, dtype, buffer=shm.buf)
    result = _check(arr, expected)
    del arr
    shm.close()
    conn.send(result)


def child_memmap(conn, path, shape, dtype, expected):
    arr = np.memmap(path, dtype=dtype, mode="r", shape=shape)
    result = _check(arr, expected)
    del arr
    conn.send(result)


def child_rawarray(conn, raw, expected):
    conn.send(_check(np.frombuffer(raw, dtype=np.float64), expected))


def child_array(conn, arr, expected):
    with arr.get_lock():
        conn.send(_check(np.frombuffer(arr.get_obj(), dtype=np.float64), expected))


def child_queue(conn, q, expected):
    conn.send(_check(q.get(), expected))


def child_pipe(conn, expected):
    arr = conn.recv()
    conn.send(_check(arr, expected))


def child_manager(conn, ns, expected):
    conn.send(_check(ns.arr, expected))


def child_shmbroker_name(conn, name, expected):
    conn.send(_check(shmbroker.attach(name), expected))


def child_shmbroker_pickled(conn, expected):
    conn.send(_check(conn.recv(), expected))


# --- Big array: the parent side -------------------------------------------------------------------

_FORK_SOURCE = None


def _run_child(target, args, send=None):
    parent, child = CTX.Pipe()
    p = CTX.Process(target=target, args=(child, *args))
    p.start()
    if send is not None:
        parent.send(send)
    status, value = parent.recv()
    p.join()
    if status != "ok" or p.exitcode != 0:
        raise RuntimeError(f"{target.__name__}: {status} {value} exit {p.exitcode}")


def big_fork(src, expected):
    global _FORK_SOURCE
    t0 = time.perf_counter()
    _FORK_SOURCE = src  # the child inherits the parent's memory
    _run_child(child_fork, (expected,))
    t = time.perf_counter() - t0
    _FORK_SOURCE = None
    return t


def big_shared_memory(src, expected):
    t0 = time.perf_counter()
    shm = mp_shm.SharedMemory(create=True, size=src.nbytes)
    arr = np.ndarray(src.shape, src.dtype, buffer=shm.buf)
    arr[:] = src
    _run_child(child_shared_memory, (shm.name, src.shape, src.dtype.str, expected))
    t = time.perf_counter() - t0
    del arr
    shm.close()
    shm.unlink()
    return t


def big_memmap(src, expected):
    path = f"/dev/shm/python-bench-{os.getpid()}"
    t0 = time.perf_counter()
    arr = np.memmap(path, dtype=src.dtype, mode="w+", shape=src.shape)
    arr[:] = src
    _run_child(child_memmap, (path, src.shape, src.dtype.str, expected))
    t = time.perf_counter() - t0
    del arr
    os.unlink(path)
    return t


def big_rawarray(src, expected):
    t0 = time.perf_counter()
    raw = CTX.RawArray("d", src.size)
    np.frombuffer(raw, dtype=np.float64)[:] = src
    _run_child(child_rawarray, (raw, expected))
    return time.perf_counter() - t0


def big_array(src, expected):
    t0 = time.perf_counter()
    arr = CTX.Array("d", src.size)  # with a lock
    with arr.get_lock():
        np.frombuffer(arr.get_obj(), dtype=np.float64)[:] = src
    _run_child(child_array, (arr, expected))
    return time.perf_counter() - t0


def big_queue(src, expected):
    t0 = time.perf_counter()
    q = CTX.Queue()
    q.put(src)
    _run_child(child_queue, (q, expected))
    t = time.perf_counter() - t0
    q.close()
    return t


def big_pipe(src, expected):
    t0 = time.perf_counter()
    _run_child(child_pipe, (expected,), send=src)
    return time.perf_counter() - t0


def big_manager(src, expected, manager):
    t0 = time.perf_counter()
    ns = manager.Namespace()
    ns.arr = src
    _run_child(child_manager, (ns, expected))
    return time.perf_counter() - t0


def big_shmbroker_name(src, expected):
    name = f"bench/python/{os.getpid()}/big"
    t0 = time.perf_counter()
    arr = shmbroker.share(src, name)
    _run_child(child_shmbroker_name, (name, expected))
    t = time.perf_counter() - t0
    shmbroker.unlink(name)
    del arr
    return t


def big_shmbroker_pickled(src, expected):
    name = f"bench/python/{os.getpid()}/big"
    t0 = time.perf_counter()
    arr = shmbroker.share(src, name)
    _run_child(child_shmbroker_pickled, (expected,), send=arr)  # a reference, not the data
    t = time.perf_counter() - t0
    shmbroker.unlink(name)
    del arr
    return t


def bench_big(n, repeat):
    src = np.arange(n, dtype=np.float64)
    src_small = src[: n // SCALE].copy()
    expected = float(src.sum())
    expected_small = float(src_small.sum())
    manager = CTX.Manager()
    methods = [
        ("shmbroker (attach by name)", lambda: big_shmbroker_name(src, expected), 1),
        ("shmbroker (pickled array)", lambda: big_shmbroker_pickled(src, expected), 1),
        ("fork inheritance", lambda: big_fork(src, expected), 1),
        ("multiprocessing.shared_memory", lambda: big_shared_memory(src, expected), 1),
        ("numpy.memmap on /dev/shm", lambda: big_memmap(src, expected), 1),
        ("multiprocessing.RawArray", lambda: big_rawarray(src, expected), 1),
        ("multiprocessing.Array (lock)", lambda: big_array(src, expected), 1),
        ("multiprocessing.Queue", lambda: big_queue(src_small, expected_small), SCALE),
        ("multiprocessing.Pipe", lambda: big_pipe(src_small, expected_small), SCALE),
        ("multiprocessing.Manager", lambda: big_manager(src_small, expected_small, manager), SCALE),
    ]
    results = {name: [] for name, _, _ in methods}
    for r in range(repeat):  # interleaved, so drifts of the machine hit every method alike
        for name, fn, scale in methods:
            gc.collect()
            results[name].append(fn() * scale)
            print(f"  [{r + 1}/{repeat}] {name}: {results[name][-1]:.3f} s", file=sys.stderr)
    manager.shutdown()
    return [(name, statistics.median(results[name]), scale) for name, _, scale in methods]


# --- Churn ----------------------------------------------------------------------------------------

def consumer_shmbroker(conn):
    while (arr := conn.recv()) is not None:  # unpickling attaches
        s = float(arr.sum())
        del arr
        conn.send(s)


def consumer_shared_memory(conn):
    while (msg := conn.recv()) is not None:
        name, shape, dtype = msg
        shm = mp_shm.SharedMemory(name)  # forked: the parent's tracker, see above
        arr = np.ndarray(shape, dtype, buffer=shm.buf)
        s = float(arr.sum())
        del arr
        shm.close()
        conn.send(s)


def consumer_pipe(conn):
    while (arr := conn.recv()) is not None:
        conn.send(float(arr.sum()))


def churn_shmbroker(conn, n, i, prefix):
    name = f"{prefix}/{i}"
    a = shmbroker.create(name, n, np.float64)
    a[:] = i
    conn.send(a)
    s = conn.recv()
    shmbroker.unlink(name)
    return s


def churn_shared_memory(conn, n, i, prefix):
    shm = mp_shm.SharedMemory(create=True, size=n * 8)
    a = np.ndarray((n,), np.float64, buffer=shm.buf)
    a[:] = i
    conn.send((shm.name, (n,), "<f8"))
    s = conn.recv()
    del a
    shm.close()
    shm.unlink()
    return s


def churn_pipe(conn, n, i, prefix):
    a = np.empty(n, np.float64)
    a[:] = i
    conn.send(a)
    return conn.recv()


def bench_churn(items):
    methods = [
        ("shmbroker", consumer_shmbroker, churn_shmbroker),
        ("multiprocessing.shared_memory", consumer_shared_memory, churn_shared_memory),
        ("pickled Pipe", consumer_pipe, churn_pipe),
    ]
    rows = []
    for size in (4 << 10, 64 << 10, 1 << 20):
        n = size // 8
        count = items if size < (1 << 20) else max(50, items // 4)
        for name, consumer, produce in methods:
            parent, child = CTX.Pipe()
            p = CTX.Process(target=consumer, args=(child,))
            p.start()
            prefix = f"bench/python/{os.getpid()}/churn"
            for i in range(min(50, count)):  # warm up
                produce(parent, n, i, prefix)
            times = []
            for i in range(count):
                t0 = time.perf_counter()
                s = produce(parent, n, i, prefix)
                times.append(time.perf_counter() - t0)
                if s != float(i) * n:
                    raise RuntimeError(f"{name}: wrong sum {s}")
            parent.send(None)
            p.join()
            rows.append((size, name, statistics.median(times)))
            print(f"  {size >> 10} KiB {name}: {rows[-1][2] * 1e6:.0f} us", file=sys.stderr)
    return rows


# --- Daemon and report ----------------------------------------------------------------------------

def ensure_daemon(path):
    try:
        shmbroker.stats()
        return None
    except shmbroker.UnavailableError:
        pass
    daemon = path or os.path.join(REPO, "build", "bin", "shmbrokerd")
    if not os.access(daemon, os.X_OK):
        sys.exit(f"no shmbrokerd answers and {daemon} does not exist: build it or start one")
    tmp = tempfile.mkdtemp(prefix="shmbroker-bench-")
    sock = os.path.join(tmp, "shmbrokerd.sock")
    proc = subprocess.Popen([daemon, "--socket", sock, "--log-level", "warn"])
    os.environ["SHMBROKER_SOCKET"] = sock
    shmbroker.default_client().close()
    import shmbroker.client as sc

    sc._default = None
    for _ in range(500):
        try:
            shmbroker.stats()
            return proc
        except shmbroker.UnavailableError:
            time.sleep(0.01)
    sys.exit("the daemon started for the benchmark does not answer")


def fmt_time(t):
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.0f} µs"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100_000_000, help="float64 elements (big array)")
    ap.add_argument("--repeat", type=int, default=5, help="runs per method (big array)")
    ap.add_argument("--churn-items", type=int, default=2000, help="arrays per size (churn)")
    ap.add_argument("--only", choices=["big", "churn"], help="run one of the two benchmarks")
    ap.add_argument("--shmbrokerd", help="daemon to start when none answers")
    args = ap.parse_args()

    daemon = ensure_daemon(args.shmbrokerd)
    try:
        print(f"# Python benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
              f"NumPy {np.__version__}, shmbrokerd {shmbroker.default_client().server.version}")
        if args.only in (None, "big"):
            rows = bench_big(args.n, args.repeat)
            base = rows[0][1]
            print(f"\n## A child gets an array of {args.n:,} float64 ({args.n * 8 / 1e6:,.0f} MB) "
                  f"and checks it (median of {args.repeat})\n")
            print("| method | median | ratio to shmbroker |")
            print("|---|---:|---:|")
            for name, t, scale in rows:
                note = f" (scaled from N/{scale})" if scale != 1 else ""
                print(f"| {name}{note} | {fmt_time(t)} | {t / base:.2f} |")
        if args.only in (None, "churn"):
            rows = bench_churn(args.churn_items)
            print(f"\n## Churn: a producer hands small arrays to a long-lived consumer "
                  f"(median per array, {args.churn_items} arrays per size)\n")
            print("| size | method | median | ratio to shmbroker |")
            print("|---|---|---:|---:|")
            base = {}
            for size, name, t in rows:
                base.setdefault(size, t)
                print(f"| {size >> 10} KiB | {name} | {fmt_time(t)} | {t / base[size]:.2f} |")
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait()


if __name__ == "__main__":
    main()
