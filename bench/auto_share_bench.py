#!/usr/bin/python3
"""auto_share benchmark: a multiprocessing.Pool over 100 MB float64 arrays, pickled as usual
against the same program under shmbroker.auto_share().

Three cases, each a pool.map(..., chunksize=1) over --tasks tasks (default 8) on a Pool of
--workers (default 2), timed from the call until every result is back in the parent:
  - send:   each task sends a --mb (default 100) MB array; the worker returns its sum.
  - echo:   each task sends such an array; the worker returns a new one of the same size
            (a * 2.0): 100 MB each way.
  - return: each task sends an int; the worker makes a --mb MB array and returns it.
The arrays sent are made and filled before the clock starts. "pickled" is a Pool made without
auto_share, "auto_share" one made under it (so its workers share their results too); both pools
exist side by side and are warmed up, the cases take turns (pickled first in odd rounds,
auto_share first in even ones), --repeat rounds (default 3), and each figure is the median of its
rounds. After each timed map the results are dropped and the segments freed, untimed.

Also measured, in the parent alone: the first move into shared memory (what auto_share does to
each array it sends: shmbroker.share(a, lifetime="refcount"), a new segment and one copy) against
ForkingPickler.dumps(a) (what ordinary pickling does before the pipe), per --mb MB array.

CPU placements (--placement; CPU 0 and 1 stand for the first two CPUs this process may use):
"one": the parent, the workers and the daemon all on CPU 0 (the daemon under `taskset -c 0`);
"unpinned": nothing is pinned. A shmbrokerd (build/bin/shmbrokerd or --shmbrokerd PATH) is
started per placement on a temporary socket and stopped afterwards.

    /usr/bin/python3 bench/auto_share_bench.py                          # about 5 minutes
    /usr/bin/python3 bench/auto_share_bench.py --mb 20 --repeat 1 --placement unpinned  # quick
    /usr/bin/python3 bench/auto_share_bench.py --method spawn --method forkserver

Options: --method fork|spawn|forkserver (repeatable; default fork and spawn), --json PATH.
Markdown tables go to stdout, progress to stderr. Ratios compare figures of the same run: this
VM is shared and noisy, absolute times drift.
"""

import argparse
import gc
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing.reduction import ForkingPickler

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "python-client"))
import shmbroker  # noqa: E402

from python_bench import OwnDaemon  # noqa: E402  (starts and stops a private shmbrokerd)

CASES = ("send", "echo", "return")


# --- Worker side (module level: spawn and forkserver children import it) ----------------------

def task_sum(a):
    return float(a.sum())


def task_echo(a):
    return a * 2.0


def task_make(args):
    n, value = args
    return np.full(n, value)


def warm(_):
    return os.getpid()


TASK = {"send": task_sum, "echo": task_echo, "return": task_make}


# --- Parent side --------------------------------------------------------------------------------

def inputs(case, n, tasks):
    if case == "return":
        return [(n, float(i)) for i in range(tasks)]
    return [np.full(n, float(i + 1)) for i in range(tasks)]


def check(case, n, results):
    for i, r in enumerate(results):
        if case == "send":
            ok = r == (i + 1) * n
        elif case == "echo":
            ok = r.shape == (n,) and r[0] == 2.0 * (i + 1) and r[-1] == 2.0 * (i + 1)
        else:
            ok = r.shape == (n,) and r[0] == i and r[-1] == i
        if not ok:
            raise AssertionError(f"{case}: wrong result for task {i}")


def timed_map(pool, case, n, tasks):
    args = inputs(case, n, tasks)
    gc.collect()
    t0 = time.perf_counter()
    results = pool.map(TASK[case], args, chunksize=1)
    elapsed = time.perf_counter() - t0
    check(case, n, results)
    shared = sum(isinstance(r, shmbroker.SharedArray) for r in results)
    del results, args
    gc.collect()
    shmbroker.flush()
    return elapsed, shared


def move_costs(n, repeat):
    """Median seconds of shmbroker.share(a, lifetime="refcount") and ForkingPickler.dumps(a)."""
    a = np.full(n, 1.5)
    share, dump = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        s = shmbroker.share(a, lifetime="refcount")
        share.append(time.perf_counter() - t0)
        del s
        shmbroker.flush()
        t0 = time.perf_counter()
        b = ForkingPickler.dumps(a)
        dump.append(time.perf_counter() - t0)
        del b
    return statistics.median(share), statistics.median(dump)


def run_placement(placement, args, allowed, daemon_path):
    n = args.mb * (1 << 20) // 8
    os.sched_setaffinity(0, allowed)
    cpu = None
    if placement == "one":
        cpu = allowed[0]
        where = f"one CPU: parent, workers and daemon on CPU {cpu}"
    else:
        where = "unpinned: parent, workers and daemon wherever the scheduler puts them"
    daemon = OwnDaemon(daemon_path, cpu, [])
    rows = []
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})  # the workers inherit it
        print(f"placement {placement}: {where}", file=sys.stderr)
        move = move_costs(n, max(3, args.repeat))
        for method in args.method:
            ctx = mp.get_context(method)
            plain = ctx.Pool(args.workers)
            with shmbroker.auto_share():
                auto = ctx.Pool(args.workers)
            try:
                for pool in (plain, auto):
                    pool.map(warm, range(4 * args.workers), chunksize=1)
                times = {(c, m): [] for c in CASES for m in ("pickled", "auto_share")}
                shared = {}
                for r in range(args.repeat):
                    for case in CASES:
                        order = [("pickled", plain), ("auto_share", auto)]
                        if r % 2:
                            order.reverse()
                        for mode, pool in order:
                            if mode == "auto_share":
                                with shmbroker.auto_share():
                                    t, s = timed_map(pool, case, n, args.tasks)
                            else:
                                t, s = timed_map(pool, case, n, args.tasks)
                            times[case, mode].append(t)
                            shared[case, mode] = s
                            print(f"  {method} {case} {mode} round {r + 1}: {t:.3f} s",
                                  file=sys.stderr)
                for case in CASES:
                    p = statistics.median(times[case, "pickled"])
                    a = statistics.median(times[case, "auto_share"])
                    rows.append({
                        "method": method, "case": case, "pickled_s": p, "auto_share_s": a,
                        "ratio": a / p, "pickled_runs": times[case, "pickled"],
                        "auto_share_runs": times[case, "auto_share"],
                        "results_shared": shared[case, "auto_share"],
                    })
            finally:
                plain.terminate()
                auto.terminate()
                plain.join()
                auto.join()
    finally:
        os.sched_setaffinity(0, allowed)
        daemon.stop()
    return {"placement": placement, "where": where, "daemon": " ".join(daemon.cmd),
            "move": {"share_s": move[0], "forking_pickler_dumps_s": move[1]}, "rows": rows}


WHAT = {
    "send": "{mb} MB to the worker, a float back",
    "echo": "{mb} MB to the worker, {mb} MB back",
    "return": "an int to the worker, {mb} MB back",
}


def print_placement(entry, args):
    print(f"\n## {entry['where']}\n")
    print(f"{args.tasks} tasks on a Pool of {args.workers}; median of {args.repeat} rounds; "
          "ratio = auto_share ÷ pickled (< 1: faster).\n")
    print("| start method | case | pickled | auto_share | ratio |")
    print("|---|---|---:|---:|---:|")
    for r in entry["rows"]:
        what = WHAT[r["case"]].format(mb=args.mb)
        print(f"| {r['method']} | {r['case']}: {what} | {r['pickled_s']:.2f} s | "
              f"{r['auto_share_s']:.2f} s | {r['ratio']:.2f} |")
    m = entry["move"]
    print(f"\nOne {args.mb} MB array in the parent: moved into shared memory "
          f"(`shmbroker.share`) {m['share_s'] * 1e3:.0f} ms, `ForkingPickler.dumps` "
          f"{m['forking_pickler_dumps_s'] * 1e3:.0f} ms.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="See the comment at the top of this file.")
    ap.add_argument("--tasks", type=int, default=8, help="tasks per map (default %(default)s)")
    ap.add_argument("--workers", type=int, default=2, help="Pool size (default %(default)s)")
    ap.add_argument("--mb", type=int, default=100, help="MB per array (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (default %(default)s)")
    ap.add_argument("--method", action="append", choices=["fork", "spawn", "forkserver"],
                    help="start method (repeatable; default fork and spawn)")
    ap.add_argument("--placement", choices=["one", "unpinned", "both"], default="both")
    ap.add_argument("--shmbrokerd", metavar="PATH",
                    help="the daemon to start (default build/bin/shmbrokerd)")
    ap.add_argument("--json", metavar="PATH", help="write all results as JSON")
    args = ap.parse_args()
    if args.tasks < 1 or args.workers < 1 or args.mb < 1 or args.repeat < 1:
        ap.error("--tasks, --workers, --mb and --repeat must be at least 1")
    args.method = args.method or ["fork", "spawn"]
    daemon_path = args.shmbrokerd or os.path.join(REPO, "build", "bin", "shmbrokerd")
    if not os.access(daemon_path, os.X_OK):
        sys.exit(f"{daemon_path} does not exist: build it (./dev build) or pass --shmbrokerd")
    allowed = sorted(os.sched_getaffinity(0))
    placements = ["one", "unpinned"] if args.placement == "both" else [args.placement]

    print(f"# auto_share benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"NumPy {np.__version__}")
    results = {"meta": {"argv": sys.argv[1:], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "numpy": np.__version__, "tasks": args.tasks, "workers": args.workers,
                        "mb": args.mb, "repeat": args.repeat},
               "placements": []}
    for placement in placements:
        entry = run_placement(placement, args, allowed, daemon_path)
        results["placements"].append(entry)
        print_placement(entry, args)
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"results written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
