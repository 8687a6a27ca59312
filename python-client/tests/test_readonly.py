"""Read-only attachments are read-only all the way down: flag, buffer and kernel mapping."""

import ctypes
import errno
import mmap
import signal

import numpy as np
import pytest

import shmbroker
from sbtest import run_python


def _mapping_view(arr):
    """The memoryview over the raw mapping at the bottom of an array's base chain."""
    a = arr
    while isinstance(a, np.ndarray):
        a = a.base
    assert isinstance(a, memoryview)
    return a


def _maps_line(address):
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return line
    raise AssertionError(f"{address:#x} is not mapped")


def test_read_only_attach(names):
    name = names()
    w = shmbroker.create(name, (4, 4), "f8")
    w[...] = 1.5
    r = shmbroker.attach(name)
    assert not r.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        r[0, 0] = 2.0
    with pytest.raises(ValueError):
        r += 1
    with pytest.raises(ValueError, match="WRITEABLE"):
        r.setflags(write=True)
    for view in (r[1:], r.T, r.reshape(16), r[::-1, ::2], np.asarray(r), r.view(np.int64)):
        assert not view.flags.writeable
        with pytest.raises(ValueError):
            view.setflags(write=True)
    # The buffer under the array refuses writes too.
    mv = _mapping_view(r)
    assert mv.readonly
    with pytest.raises(TypeError):
        mv[0] = 0
    with pytest.raises((TypeError, ValueError)):
        np.frombuffer(mv, np.uint8).setflags(write=True)
    # The kernel mapping is read-only and shared: "r--s".
    address = r.__array_interface__["data"][0]
    assert _maps_line(address).split()[1] == "r--s"
    assert _maps_line(w.__array_interface__["data"][0]).split()[1] == "rw-s"
    # mprotect cannot make it writable: the daemon sent a read-only descriptor.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = address & ~(mmap.PAGESIZE - 1)
    assert libc.mprotect(ctypes.c_void_p(page), mmap.PAGESIZE,
                         mmap.PROT_READ | mmap.PROT_WRITE) == -1
    assert ctypes.get_errno() == errno.EACCES
    assert (r == 1.5).all()


def test_writing_the_mapping_faults(names):
    # Going around NumPy and Python with a raw store kills the writer, not the data.
    name = names()
    w = shmbroker.create(name, 8, "u1")
    w[:] = 9
    code = f"""
import ctypes, resource, shmbroker
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for the expected crash
r = shmbroker.attach({name!r})
print("attached", flush=True)
ctypes.memset(r.__array_interface__["data"][0], 0, 8)
print("wrote")
"""
    proc = run_python(code, check=False)
    assert "attached" in proc.stdout and "wrote" not in proc.stdout
    assert proc.returncode == -signal.SIGSEGV
    assert (w == 9).all()


def test_writable_attach_and_pickled_read_only_view(names):
    import pickle

    name = names()
    shmbroker.create(name, 6, "i4")
    w = shmbroker.attach(name, writable=True)
    w[:] = 3
    ro = w[2:]
    ro.setflags(write=False)
    back = pickle.loads(pickle.dumps(ro))
    assert not back.flags.writeable
    with pytest.raises(ValueError):
        back.setflags(write=True)
    back_w = pickle.loads(pickle.dumps(w[2:]))
    assert back_w.flags.writeable
    back_w[0] = 8
    assert w[2] == 8 and back[0] == 8
