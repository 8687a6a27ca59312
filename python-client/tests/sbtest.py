"""Helpers shared by the tests, importable by worker processes too (tests/ is on sys.path and
PYTHONPATH): module-level functions are what multiprocessing with spawn can send."""

import os
import subprocess
import sys

import numpy as np

import shmbroker


def run_python(code, *args, timeout=60, check=True, **kwargs):
    """Runs this interpreter on ``code`` in a child process with the same environment."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"child exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def fd_count():
    return len(os.listdir("/proc/self/fd"))


def maps():
    with open("/proc/self/maps") as f:
        return f.read().splitlines()


def segment_maps(name=None):
    """Lines of /proc/self/maps that map shmbroker segments (memfds the daemon labels
    "shmbroker:NAME"), all of them or those of segment ``name``."""
    if name is None:
        return [line for line in maps() if "/memfd:shmbroker:" in line]
    tail = f"/memfd:shmbroker:{name} (deleted)"
    return [line for line in maps() if line.endswith(tail)]


def region_maps():
    """Lines of /proc/self/maps that map shared regions (small segments' memory)."""
    return [line for line in maps() if "/memfd:shmbroker-region:" in line]


# --- The C++ <-> Python pattern (the twin of tests/interop/interop.cc) ---------------------------


def interop_pattern(dtype, n):
    """The values shmbroker_interop writes: element k (memory order) of ``dtype``."""
    dt = np.dtype(dtype)
    k = np.arange(n, dtype=np.uint64)
    native = dt.newbyteorder("=")
    if dt.kind == "b":
        v = (k % 3 == 0)
    elif dt.kind in "iu":
        mixed = k * np.uint64(2654435761) + np.uint64(12345)
        v = mixed.astype(np.dtype(f"u{dt.itemsize}")).view(native)
    elif dt.kind == "f":
        v = k.astype(native) * native.type(0.25) - native.type(3.5)
    elif dt.kind == "c":
        part = np.dtype(f"f{dt.itemsize // 2}")
        v = np.empty(n, dtype=native)
        v.real = k.astype(part) * part.type(0.5)
        v.imag = -(k.astype(part) * part.type(0.25))  # -0.0 for k == 0, as in C++
    else:
        raise ValueError(dt)
    return np.asarray(v).astype(dt)


# --- Worker functions for multiprocessing -------------------------------------------------------


def fill_chunk(args):
    """Pool task: writes start+i into a (pickled-by-reference) writable view."""
    view, start = args
    view[...] = np.arange(start, start + view.size, dtype=view.dtype).reshape(view.shape)
    return os.getpid(), view.shm_name


def sum_view(view):
    return float(view.sum()), bool(view.flags.writeable), type(view).__name__


def make_array(name_and_value):
    """Pool task: creates a shared array and returns it (by reference) to the parent."""
    name, value = name_and_value
    a = shmbroker.create(name, (1000,), "<f8")
    a[:] = value
    return a


def set_everywhere(arr, value):
    """Process target: writes through a pickled reference."""
    arr[...] = value


def attach_and_set(name, value):
    a = shmbroker.attach(name, writable=True)
    a[...] = value


def eventually(predicate, timeout=10.0, interval=0.01):
    """Polls ``predicate`` until it is true (the daemon notices a peer's exit asynchronously)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def mapping_rss(arr):
    """Bytes of the mapping under ``arr`` that have page-table entries in this process (the
    Rss of its line in /proc/self/smaps)."""
    addr = arr.__array_interface__["data"][0]
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise LookupError(f"no mapping at {addr:#x}")
