#!/usr/bin/python3
"""Python benchmark: shmbroker against multiprocessing.shared_memory and plain Pipes.

Three benchmarks, each run in up to three CPU placements; every ratio compares figures measured in the
same run (this VM is shared and noisy: absolute times drift by several times from hour to hour).

1. churn-name: a producer hands float64 arrays of 4 KiB, 64 KiB and 1 MiB one by one to a
   long-lived consumer process (fork context) and waits for its answer. Per item:
     - shmbroker: shmbroker.create(unique name), fill, the *name* (a str) goes through a
       multiprocessing Pipe, the consumer shmbroker.attach(name)es, sums, answers the sum;
       the producer shmbroker.unlink()s.
     - stdlib: multiprocessing.shared_memory.SharedMemory(create=True), np.ndarray on it, fill,
       the name goes through the Pipe, the consumer SharedMemory(name)s, sums, close()s,
       answers; the producer close()s and unlink()s.
     - pickled copy: np.empty, fill, conn.send(array) pickles the data, the consumer sums.
     - bare name (the handoff floor): a short str goes through the Pipe and comes back; nothing
       is made or read.
2. churn-pickle: the same, but the shmbroker array object itself goes through the Pipe
   (conn.send(arr): a reference; unpickling in the consumer attaches). The same three peers.
   When shmbroker.create accepts None as the name (generated names; detected once at start),
   this variant uses it; otherwise unique names as in churn-name. With generated names a
   second shmbroker row, "refcount", makes the array with lifetime="refcount" and never
   unlinks: the ticket taken when it is pickled and both releases are pipelined; a consumer that
   maps the region reads at once (its attach is pipelined too), so its cycle waits on one
   round trip (the create) where the other waits on two (create, unlink). A third row, "made
   ahead", does the same with a client of connect(ahead=True) (created once per run, in the
   parent), whose creates after the first wait on nothing: no waited round trip in the cycle.
   For each size: the median time per item (µs), arrays/s, the ratio of that time to
   stdlib's and to the pickled-copy Pipe's (> 1: slower), and the mean CPU time per item of
   the producer, the consumer (process_time, asked between blocks) and the daemon
   (/proc/PID/schedstat; only when that process is visible), which says where a cycle's time
   goes when all of them share one CPU. Everything counts: make, fill,
   hand over, attach, read, answer, release. Each method has its own consumer; after 20
   untimed items each, the methods take turns in blocks of 25 items, so drifts of the machine
   hit them alike. Every answer is checked (fill values start at 1, so zeros never pass): a
   wrong sum raises.
3. seed (the tutorial's case, big): the parent makes N float64 (default 100,000,000: 800 MB)
   filled with 1.0; a forked child attaches it by name, checks sum == N and answers. Timed from
   before the creation until the answer is back (creation, fill and the child's start
   included); then the child is joined and the segment freed. Three runs in a row for
   shmbroker (shmbroker.create + fill), then three for stdlib (SharedMemory(create=True) +
   np.ndarray fill); runs 1, 2 and 3 are reported separately (later runs can find memory
   warm) with the ratio shmbroker / stdlib per run.

CPU placements (--placement; CPU 0 and 1 stand for the first two CPUs this process may use):
"one": the parent, its children and the daemon all on CPU 0
(os.sched_setaffinity in the parent before any child starts; the daemon it starts runs under
`taskset -c 0`); "across": the parent on CPU 0, every consumer/child on CPU 1, the daemon
unpinned (the scheduler places it, as it would a system service; its requests come from both
sides); "apart": the parent and every child on CPU 0, the daemon alone on CPU 1 (a machine with a
core to spare for the service, which this 2-CPU VM has only when the clients share one: then a
request the client does not wait for costs it nothing). The stdlib resource tracker process runs
with the parent. An external daemon (one that
already answers at the usual socket path) is used as it is, and is never pinned: the output
says so. Otherwise the bench starts a fresh build/bin/shmbrokerd (or --shmbrokerd PATH) per
placement on a temporary socket and stops it afterwards.

    /usr/bin/python3 bench/python_bench.py                     # everything: about 1.5 minutes
    /usr/bin/python3 bench/python_bench.py --items 300 -n 10000000 --json /tmp/pb.json  # ~15 s
    /usr/bin/python3 bench/python_bench.py --only seed --placement one --daemon-arg=--max-memory=4G
    /usr/bin/python3 bench/plot.py /tmp/pb.json --out /tmp/pb.png   # the figure

Options: --placement one|across|apart|both|all (both: one and across, the default; all: the
three); --only churn-name|churn-pickle|seed
(repeatable); --items N (timed arrays per size and method, default 2000); -n N (seed array
elements, default 100,000,000); --json PATH; --shmbrokerd PATH; --daemon-arg ARG (repeatable,
passed to the daemon the bench starts, e.g. --daemon-arg=--prealloc=1G once the daemon has it).
Times above are for the 2-CPU development VM.

Progress goes to stderr, Markdown tables (one per benchmark per placement) to stdout, and with
--json PATH all results to a JSON file for bench/plot.py: {"meta": {...}, "placements": [{
"placement", "where", "daemon", "churn-name": [rows], "churn-pickle": [rows], "seed": {"n",
"runs": [{"run", "shmbroker_s", "stdlib_s", "ratio"}]}}]}, a churn row being {"size", "method"
(shmbroker, shmbroker-refcount, shmbroker-ahead, stdlib, pickled-pipe, bare-pipe), "label", "items", "median_s", "q1_s", "q3_s",
"per_s", "vs_stdlib", "vs_pickled_pipe", "cpu_producer_us", "cpu_consumer_us", "cpu_daemon_us"
(None when the daemon's /proc is not readable)}.
"""

import argparse
import gc
import json
import multiprocessing as mp
import multiprocessing.shared_memory as mp_shm
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import resource_tracker

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "python-client"))
import shmbroker  # noqa: E402
import shmbroker.client  # noqa: E402  (to forget the default client when the socket changes)

CTX = mp.get_context("fork")
SIZES = (4 << 10, 64 << 10, 1 << 20)
SEED_RUNS = 3
BLOCK = 25  # items per method before moving on to the next (interleaving)

# Set once at start by detect_generated_names().
GENERATED_NAMES = False
_counter = 0


def unique_name(kind):
    global _counter
    _counter += 1
    return f"bench/python/{os.getpid()}/{kind}/{_counter}"


def pin(cpu):
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


# --- Churn: consumers (long-lived children) -------------------------------------------------------
# Each gets (conn, cpu), pins itself, answers every message until None. Any exception is sent
# back as ("error", text) so the producer's check fails loudly instead of waiting.

_CPU = "cpu?"  # asks a consumer for its CPU time so far, between timed blocks


def _serve(conn, cpu, handle):
    pin(cpu)
    try:
        while (msg := conn.recv()) is not None:
            conn.send(time.process_time_ns() if type(msg) is str and msg == _CPU else handle(msg))
    except Exception as e:  # noqa: BLE001
        conn.send(("error", f"{type(e).__name__}: {e}"))


def _sum_shmbroker_name(name):
    arr = shmbroker.attach(name)
    s = float(arr.sum())
    del arr
    return s


def _sum_shmbroker_pickled(arr):  # conn.recv() unpickled it: attached
    s = float(arr.sum())
    del arr
    return s


def _sum_stdlib(name_n):
    name, n = name_n
    # Forked: this child shares the parent's resource tracker, so attaching registers the name
    # there a second time, harmlessly (with spawn it would unlink the segment when the child
    # exits, gh-82300).
    shm = mp_shm.SharedMemory(name)
    arr = np.ndarray((n,), np.float64, buffer=shm.buf)
    s = float(arr.sum())
    del arr
    shm.close()
    return s


def _sum_copy(arr):
    return float(arr.sum())


def _echo(name):
    return name


def consumer_shmbroker_name(conn, cpu):
    _serve(conn, cpu, _sum_shmbroker_name)


def consumer_shmbroker_pickled(conn, cpu):
    _serve(conn, cpu, _sum_shmbroker_pickled)


def consumer_stdlib(conn, cpu):
    _serve(conn, cpu, _sum_stdlib)


def consumer_copy(conn, cpu):
    _serve(conn, cpu, _sum_copy)


def consumer_echo(conn, cpu):
    _serve(conn, cpu, _echo)


# --- Churn: producers (one item each; return (answer, expected)) ----------------------------------
# The fill value v >= 1, so an array of zeros (a wrong mapping) never passes the check.

def produce_shmbroker_name(conn, n, v):
    name = unique_name("churn-name")
    a = shmbroker.create(name, n, np.float64)
    a.fill(v)
    conn.send(name)
    s = conn.recv()
    shmbroker.unlink(name)
    return s, v * n


def produce_shmbroker_pickled(conn, n, v):
    if GENERATED_NAMES:
        a = shmbroker.create(None, n, np.float64)
        name = shmbroker.segment_name(a)
    else:
        name = unique_name("churn-pickle")
        a = shmbroker.create(name, n, np.float64)
    a.fill(v)
    conn.send(a)  # a reference to the segment, not the data
    s = conn.recv()
    shmbroker.unlink(name)
    return s, v * n


def produce_shmbroker_refcount(conn, n, v):
    # No unlink: the segment goes when the consumer's attachment and this array are released,
    # and both releases ride in front of later requests (no waited round trip of their own).
    a = shmbroker.create(None, n, np.float64, lifetime="refcount")
    a.fill(v)
    conn.send(a)  # takes a ticket, pipelined: the segment survives until the consumer attaches
    return conn.recv(), v * n


_AHEAD = None


def produce_shmbroker_ahead(conn, n, v):
    # As refcount, from a client that makes each next array ahead (connect(ahead=True)).
    global _AHEAD
    if _AHEAD is None:
        _AHEAD = shmbroker.connect(ahead=True)  # forget_client() closes it
    a = _AHEAD.create(None, n, np.float64, lifetime="refcount")
    a.fill(v)
    conn.send(a)
    return conn.recv(), v * n


def produce_stdlib(conn, n, v):
    shm = mp_shm.SharedMemory(create=True, size=n * 8)
    a = np.ndarray((n,), np.float64, buffer=shm.buf)
    a.fill(v)
    conn.send((shm.name, n))
    s = conn.recv()
    del a
    shm.close()
    shm.unlink()
    return s, v * n


def produce_copy(conn, n, v):
    a = np.empty(n, np.float64)
    a.fill(v)
    conn.send(a)
    return conn.recv(), v * n


def produce_echo(conn, n, v):
    name = unique_name("bare")  # as long as the names above
    conn.send(name)
    return conn.recv(), name


# key, label, consumer, producer
PEERS = [
    ("stdlib", "multiprocessing.shared_memory (name)", consumer_stdlib, produce_stdlib),
    ("pickled-pipe", "Pipe, pickled copy", consumer_copy, produce_copy),
    ("bare-pipe", "Pipe, bare name (floor)", consumer_echo, produce_echo),
]


def churn_methods(which):
    if which == "churn-name":
        own = ("shmbroker", "shmbroker (name)", consumer_shmbroker_name, produce_shmbroker_name)
    else:
        names = "generated names" if GENERATED_NAMES else "unique names"
        own = ("shmbroker", f"shmbroker (pickled array, {names})", consumer_shmbroker_pickled,
               produce_shmbroker_pickled)
        if GENERATED_NAMES:
            refcount = ("shmbroker-refcount", "shmbroker (pickled array, refcount)",
                        consumer_shmbroker_pickled, produce_shmbroker_refcount)
            ahead = ("shmbroker-ahead", "shmbroker (pickled array, refcount, made ahead)",
                     consumer_shmbroker_pickled, produce_shmbroker_ahead)
            return [own, refcount, ahead] + PEERS
    return [own] + PEERS


def check(label, answer, expected):
    if answer != expected:
        raise RuntimeError(f"{label}: the consumer answered {answer!r}, expected {expected!r}")


def bench_churn(which, items, cpu_child):
    """Rows: one dict per size and method."""
    methods = churn_methods(which)
    warmup = min(20, items)
    rows = []
    for size in SIZES:
        n = size // 8
        procs = []
        try:
            for key, label, consumer, produce in methods:
                parent, child = CTX.Pipe()
                p = CTX.Process(target=consumer, args=(child, cpu_child), daemon=True)
                p.start()
                child.close()  # so a consumer that dies gives EOFError here, not a hang
                procs.append((key, label, produce, parent, p))
            times = {key: [] for key, *_ in methods}
            cpu = {key: [0, 0, 0] for key, *_ in methods}  # ns: producer, consumer, daemon
            v = 0
            for key, label, produce, conn, _ in procs:
                for _ in range(warmup):
                    v += 1
                    check(label, *produce(conn, n, float(v)))
            gc.collect()
            done = 0
            while done < items:  # interleaved blocks
                k = min(BLOCK, items - done)
                for key, label, produce, conn, _ in procs:
                    t = times[key]
                    conn.send(_CPU)
                    c0 = (time.process_time_ns(), conn.recv(), daemon_cpu_ns())
                    for _ in range(k):
                        v += 1
                        t0 = time.perf_counter()
                        answer, expected = produce(conn, n, float(v))
                        t.append(time.perf_counter() - t0)
                        check(label, answer, expected)
                    conn.send(_CPU)
                    c1 = (time.process_time_ns(), conn.recv(), daemon_cpu_ns())
                    for i, (a, b) in enumerate(zip(c0, c1)):
                        cpu[key][i] += b - a if a is not None and b is not None else 0
                done += k
        finally:
            for key, label, produce, conn, p in procs:
                try:
                    conn.send(None)
                except OSError:
                    pass
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join()
        for key, label, produce, conn, p in procs:
            if p.exitcode != 0:
                raise RuntimeError(f"{label}: the consumer exited with {p.exitcode}")
        by_key = {}
        for key, label, *_ in methods:
            q1, med, q3 = statistics.quantiles(times[key], n=4)
            med = statistics.median(times[key])
            by_key[key] = med
            cpu_us = [c / items / 1e3 for c in cpu[key]]
            rows.append({"size": size, "method": key, "label": label, "items": items,
                         "median_s": med, "q1_s": q1, "q3_s": q3, "per_s": 1.0 / med,
                         "cpu_producer_us": cpu_us[0], "cpu_consumer_us": cpu_us[1],
                         "cpu_daemon_us": cpu_us[2] if DAEMON_PID else None})
            print(f"  {which} {fmt_size(size):>7}  {label:<42} median {med * 1e6:8.1f} µs "
                  f"(p25 {q1 * 1e6:.1f}, p75 {q3 * 1e6:.1f}); CPU µs per item: producer "
                  f"{cpu_us[0]:.1f}, consumer {cpu_us[1]:.1f}, daemon {cpu_us[2]:.1f}",
                  file=sys.stderr)
        for r in rows[-len(methods):]:
            r["vs_stdlib"] = r["median_s"] / by_key["stdlib"]
            r["vs_pickled_pipe"] = r["median_s"] / by_key["pickled-pipe"]
    return rows


# The daemon's pid when its CPU time can be read (/proc/PID/schedstat: nanoseconds on a CPU), else
# None. Set per placement by main().
DAEMON_PID = None


def daemon_cpu_ns():
    if DAEMON_PID is None:
        return None
    try:
        with open(f"/proc/{DAEMON_PID}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def set_daemon_pid(pid):
    """Uses the daemon's pid from its hello when /proc shows that process (same pid namespace)."""
    global DAEMON_PID
    DAEMON_PID = pid
    if daemon_cpu_ns() is None:
        DAEMON_PID = None


# --- Seed: one big array, a fresh child checks it -------------------------------------------------

def child_seed_shmbroker(conn, cpu, name):
    pin(cpu)
    try:
        arr = shmbroker.attach(name)
        s = float(arr.sum())
        del arr
        conn.send(s)
    except Exception as e:  # noqa: BLE001
        conn.send(("error", f"{type(e).__name__}: {e}"))


def child_seed_stdlib(conn, cpu, name, n):
    pin(cpu)
    try:
        shm = mp_shm.SharedMemory(name)  # forked: the parent's tracker, see _sum_stdlib
        arr = np.ndarray((n,), np.float64, buffer=shm.buf)
        s = float(arr.sum())
        del arr
        shm.close()
        conn.send(s)
    except Exception as e:  # noqa: BLE001
        conn.send(("error", f"{type(e).__name__}: {e}"))


def _seed_child(target, args, cpu_child):
    parent, child = CTX.Pipe()
    p = CTX.Process(target=target, args=(child, cpu_child, *args), daemon=True)
    p.start()
    child.close()
    return parent, p


def _seed_finish(label, conn, p, answer, n):
    p.join()
    check(label, answer, float(n))
    if p.exitcode != 0:
        raise RuntimeError(f"{label}: the child exited with {p.exitcode}")


def seed_shmbroker(n, cpu_child):
    name = unique_name("seed")
    t0 = time.perf_counter()
    arr = shmbroker.create(name, n, np.float64)
    arr.fill(1.0)
    conn, p = _seed_child(child_seed_shmbroker, (name,), cpu_child)
    answer = conn.recv()
    t = time.perf_counter() - t0
    _seed_finish("shmbroker seed", conn, p, answer, n)
    shmbroker.unlink(name)
    del arr
    gc.collect()
    shmbroker.flush()  # the daemon frees the memory now, not at the next request
    return t


def seed_stdlib(n, cpu_child):
    t0 = time.perf_counter()
    shm = mp_shm.SharedMemory(create=True, size=n * 8)
    arr = np.ndarray((n,), np.float64, buffer=shm.buf)
    arr.fill(1.0)
    conn, p = _seed_child(child_seed_stdlib, (shm.name, n), cpu_child)
    answer = conn.recv()
    t = time.perf_counter() - t0
    _seed_finish("stdlib seed", conn, p, answer, n)
    del arr
    shm.close()
    shm.unlink()
    gc.collect()
    return t


def bench_seed(n, cpu_child):
    out = {"shmbroker": [], "stdlib": []}
    for key, fn in (("shmbroker", seed_shmbroker), ("stdlib", seed_stdlib)):
        for r in range(SEED_RUNS):
            out[key].append(fn(n, cpu_child))
            print(f"  seed {key} run {r + 1}: {out[key][-1] * 1e3:.1f} ms", file=sys.stderr)
    return [{"run": r + 1, "shmbroker_s": out["shmbroker"][r], "stdlib_s": out["stdlib"][r],
             "ratio": out["shmbroker"][r] / out["stdlib"][r]} for r in range(SEED_RUNS)]


# --- Daemon -----------------------------------------------------------------------------------------

def forget_client():
    # The module-level functions use a per-process default client; drop it so the next call
    # resolves the socket path again (and the made-ahead client with it).
    global _AHEAD
    if _AHEAD is not None:
        _AHEAD.close()
        _AHEAD = None
    c = shmbroker.client._default
    if c is not None:
        c.close()
    shmbroker.client._default = None


def daemon_answers():
    try:
        shmbroker.stats()
        return True
    except shmbroker.UnavailableError:
        forget_client()
        return False


class OwnDaemon:
    """A shmbrokerd started for one placement, on a temporary socket."""

    def __init__(self, path, cpu, extra_args):
        self.tmp = tempfile.mkdtemp(prefix="shmbroker-bench-")
        sock = os.path.join(self.tmp, "shmbrokerd.sock")
        cmd = [path, "--socket", sock, "--log-level", "warn", *extra_args]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd)
        os.environ["SHMBROKER_SOCKET"] = sock
        forget_client()
        for _ in range(1000):
            if self.proc.poll() is not None:
                self.stop()
                sys.exit(f"the daemon exited with {self.proc.returncode}: {' '.join(cmd)}")
            try:
                shmbroker.stats()
                return
            except shmbroker.UnavailableError:
                forget_client()
                time.sleep(0.01)
        self.stop()
        sys.exit(f"the daemon started for the benchmark does not answer: {' '.join(cmd)}")

    def stop(self):
        forget_client()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def detect_generated_names():
    """True when shmbroker.create(None, ...) makes a segment with a generated name."""
    try:
        a = shmbroker.create(None, 1, np.float64)
    except (TypeError, shmbroker.InvalidArgumentError):
        return False
    name = shmbroker.segment_name(a)
    if not name:
        raise RuntimeError("shmbroker.create(None, ...) gave an array without a segment name")
    shmbroker.unlink(name)
    return True


# --- Report -----------------------------------------------------------------------------------------

def fmt_time(t):
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.1f} µs" if t < 1e-4 else f"{t * 1e6:.0f} µs"


def fmt_size(size):
    return f"{size >> 20} MiB" if size >= 1 << 20 else f"{size >> 10} KiB"


def fmt_rate(r):
    return f"{r:,.0f}"


def print_churn(which, rows, items, where):
    title = ("Churn by name: the name goes through the Pipe, the consumer attaches"
             if which == "churn-name" else
             "Churn by pickled array: the shmbroker array goes through the Pipe, unpickling "
             "attaches")
    print(f"\n## {title} ({where})\n")
    print(f"Median per item over {items} items per size; ratios are time ÷ the peer's time "
          "(> 1: slower).\n")
    print("CPU: mean CPU time per item of the producer, the consumer and the daemon (- when its "
          "/proc is not readable).\n")
    print("| size | method | median µs | arrays/s | × stdlib | × pickled Pipe | CPU µs "
          "producer / consumer / daemon |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        d = r["cpu_daemon_us"]
        cpu = (f"{r['cpu_producer_us']:.0f} / {r['cpu_consumer_us']:.0f} / "
               f"{'-' if d is None else f'{d:.0f}'}")
        print(f"| {fmt_size(r['size'])} | {r['label']} | {r['median_s'] * 1e6:.1f} | "
              f"{fmt_rate(r['per_s'])} | {r['vs_stdlib']:.2f} | {r['vs_pickled_pipe']:.2f} | "
              f"{cpu} |")


def print_seed(rows, n, where):
    print(f"\n## Seed: a child checks {n:,} float64 ({n * 8 / 1e6:.3g} MB) of 1.0 ({where})\n")
    print("Creation, fill, child start, attach, sum and answer; shmbroker runs 1-3 first, then "
          "stdlib runs 1-3.\n")
    print("| run | shmbroker | multiprocessing.shared_memory | shmbroker ÷ stdlib |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {fmt_time(r['shmbroker_s'])} | {fmt_time(r['stdlib_s'])} | "
              f"{r['ratio']:.2f} |")


# --- Main -------------------------------------------------------------------------------------------

def main():
    global GENERATED_NAMES
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the comment at the top of this file for what is measured.")
    ap.add_argument("--placement", choices=["one", "across", "apart", "both", "all"],
                    default="both",
                    help="one: everything on CPU 0; across: parent on CPU 0, children on CPU 1; "
                         "apart: parent and children on CPU 0, the daemon on CPU 1; both (one "
                         "and across, the default); all")
    ap.add_argument("--only", choices=["churn-name", "churn-pickle", "seed"], action="append",
                    help="run only this benchmark (repeatable)")
    ap.add_argument("--items", type=int, default=2000,
                    help="timed arrays per size and method in the churn benchmarks "
                         "(default %(default)s)")
    ap.add_argument("-n", type=int, default=100_000_000,
                    help="float64 elements of the seed array (default %(default)s: 800 MB)")
    ap.add_argument("--json", metavar="PATH", help="write all results as JSON (for plot.py)")
    ap.add_argument("--shmbrokerd", metavar="PATH",
                    help="the daemon to start when none answers (default build/bin/shmbrokerd)")
    ap.add_argument("--daemon-arg", metavar="ARG", action="append", default=[],
                    help="extra argument for the daemon the bench starts (repeatable), "
                         "e.g. --daemon-arg=--max-memory=4G")
    args = ap.parse_args()
    if args.items < 4 or args.n < 1:
        ap.error("--items must be at least 4 and -n at least 1")
    benches = [b for b in ("churn-name", "churn-pickle", "seed")
               if not args.only or b in args.only]
    placements = {"both": ["one", "across"], "all": ["one", "across", "apart"]}.get(
        args.placement, [args.placement])

    allowed = sorted(os.sched_getaffinity(0))
    cpu_a = allowed[0]
    cpu_b = allowed[1] if len(allowed) > 1 else None
    for two in ("across", "apart"):
        if two in placements and cpu_b is None:
            print(f"only one CPU is available: skipping the '{two}' placement", file=sys.stderr)
            placements.remove(two)

    external = daemon_answers()
    daemon_path = args.shmbrokerd or os.path.join(REPO, "build", "bin", "shmbrokerd")
    if external:
        if args.daemon_arg or args.shmbrokerd:
            print("warning: a daemon already answers; --shmbrokerd/--daemon-arg are ignored",
                  file=sys.stderr)
    elif not os.access(daemon_path, os.X_OK):
        sys.exit(f"no shmbrokerd answers and {daemon_path} does not exist: build it or start one")

    # Make sure the stdlib resource tracker runs before any child is forked (forked children then
    # share it) and does not count in the first timed items.
    resource_tracker.ensure_running()
    tracker_pid = getattr(resource_tracker._resource_tracker, "_pid", None)

    results = {"meta": {
        "argv": sys.argv[1:], "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__,
        "items": args.items, "n": args.n, "sizes": list(SIZES),
        "daemon": "external" if external else daemon_path,
        "daemon_args": [] if external else args.daemon_arg,
    }, "placements": []}

    print(f"# Python benchmark: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"NumPy {np.__version__}")
    for placement in placements:
        os.sched_setaffinity(0, allowed)  # the daemon must not inherit a pin it should not have
        if placement == "one":
            cpu_parent, cpu_child, cpu_daemon = cpu_a, None, cpu_a  # children inherit CPU 0
            where = f"one CPU: parent, children{'' if external else ' and daemon'} on CPU {cpu_a}"
        elif placement == "apart":
            cpu_parent, cpu_child, cpu_daemon = cpu_a, None, cpu_b
            where = f"daemon apart: parent and children on CPU {cpu_a}, daemon on CPU {cpu_b}"
        else:
            cpu_parent, cpu_child, cpu_daemon = cpu_a, cpu_b, None
            where = f"across CPUs: parent on CPU {cpu_a}, children on CPU {cpu_b}, daemon unpinned"
        daemon = None
        if external:
            daemon_note = "external daemon, not pinned"
            if placement in ("one", "apart"):
                where += "; daemon external, NOT pinned"
                print("note: an external daemon answers: it is not pinned to CPU "
                      f"{cpu_daemon}", file=sys.stderr)
        else:
            daemon = OwnDaemon(daemon_path, cpu_daemon, args.daemon_arg)
            daemon_note = ("started: " + " ".join(daemon.cmd))
        try:
            server = shmbroker.default_client().server
            results["meta"]["daemon_version"] = server.version
            set_daemon_pid(server.pid)
            if not results["placements"]:
                GENERATED_NAMES = detect_generated_names()
                results["meta"]["pickle_names"] = "generated" if GENERATED_NAMES else "unique"
                print(f"shmbrokerd {server.version}; churn-pickle uses "
                      f"{results['meta']['pickle_names']} names", file=sys.stderr)
            os.sched_setaffinity(0, {cpu_parent})
            if tracker_pid:
                try:
                    os.sched_setaffinity(tracker_pid, {cpu_parent})
                except OSError:
                    pass
            print(f"\n# Placement: {where}\n\nDaemon: {daemon_note}.", flush=True)
            print(f"placement {placement}: {where}", file=sys.stderr)
            entry = {"placement": placement, "where": where, "daemon": daemon_note}
            for which in benches:
                if which == "seed":
                    entry["seed"] = {"n": args.n, "runs": bench_seed(args.n, cpu_child)}
                    print_seed(entry["seed"]["runs"], args.n, where)
                else:
                    entry[which] = bench_churn(which, args.items, cpu_child)
                    print_churn(which, entry[which], args.items, where)
                sys.stdout.flush()
            results["placements"].append(entry)
        finally:
            os.sched_setaffinity(0, allowed)
            if daemon is not None:
                daemon.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
        print(f"results written to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
