"""mmap_aligned: shared mappings at 2 MiB-aligned addresses, with no reservation left behind."""

import ctypes
import errno
import mmap
import os

import pytest

from shmbroker._hugemap import mmap_aligned
from shmbroker._mem import _munmap

MiB = 1 << 20
HUGE = 2 * MiB
RW = mmap.PROT_READ | mmap.PROT_WRITE


def _memfd(size):
    fd = os.memfd_create("test_hugemap", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def _prot_none_ranges():
    """(start, end) of this process's PROT_NONE private mappings: what a leftover reservation
    would be."""
    out = set()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if fields[1] == "---p":
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                out.add((lo, hi))
    return out


def _maps_entry(address):
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return lo, hi, line
    raise AssertionError(f"{address:#x} is not mapped")


@pytest.mark.parametrize("size", [HUGE, 5 * MiB + 123, 8 * MiB])
def test_aligned_whole_and_nothing_left_over(size):
    fd = _memfd(size)
    try:
        before = _prot_none_ranges()
        addr = mmap_aligned(fd, size, RW)
        try:
            assert addr % HUGE == 0
            # One mapping of the file, exactly as long as asked (rounded to pages)...
            lo, hi, line = _maps_entry(addr)
            assert (lo, hi) == (addr, addr + -(-size // mmap.PAGESIZE) * mmap.PAGESIZE), line
            assert "test_hugemap" in line and " rw-s " in line
            # ...and no piece of the reservation around it (it spanned at most 2 MiB more on
            # either side).
            leftover = [(a, b) for a, b in _prot_none_ranges() - before
                        if a < addr + size + HUGE and b > addr - HUGE]
            assert leftover == []
        finally:
            assert _munmap(addr, size) == 0
    finally:
        os.close(fd)


def test_data_visible_both_ways():
    size = 4 * MiB
    fd = _memfd(size)
    try:
        a = mmap_aligned(fd, size, RW)
        b = mmap_aligned(fd, size, mmap.PROT_READ)
        try:
            assert a != b and b % HUGE == 0
            ctypes.memmove(a + size - 5, b"hello", 5)
            assert ctypes.string_at(b + size - 5, 5) == b"hello"
            assert os.pread(fd, 5, size - 5) == b"hello"
            os.pwrite(fd, b"world", 0)
            assert ctypes.string_at(a, 5) == b"world"
        finally:
            _munmap(a, size)
            _munmap(b, size)
    finally:
        os.close(fd)


def test_small_sizes_are_plain_mappings():
    fd = _memfd(4096)
    try:
        addr = mmap_aligned(fd, 100, RW)
        try:
            ctypes.memmove(addr, b"abc", 3)
            assert os.pread(fd, 3, 0) == b"abc"
        finally:
            _munmap(addr, 100)
    finally:
        os.close(fd)


def test_errors_raise_and_leave_nothing():
    size = 4 * MiB + 12288  # an odd reservation size, to find a leftover one
    before = _prot_none_ranges()
    with pytest.raises(OSError) as e:
        mmap_aligned(-1, size, mmap.PROT_READ)
    assert e.value.errno == errno.EBADF
    assert all(b - a != size + HUGE for a, b in _prot_none_ranges() - before)

    fd = _memfd(size)
    try:
        with pytest.raises(OSError) as e:
            mmap_aligned(fd, size, mmap.PROT_READ, align=3 * MiB)
        assert e.value.errno == errno.EINVAL
        # A read-only descriptor cannot be mapped writable.
        ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            with pytest.raises(OSError) as e:
                mmap_aligned(ro, size, RW)
            assert e.value.errno == errno.EACCES
        finally:
            os.close(ro)
    finally:
        os.close(fd)
    assert all(b - a != size + HUGE for a, b in _prot_none_ranges() - before)


def test_large_arrays_are_mapped_aligned_on_2mib_pages(names):
    import shmbroker

    a = shmbroker.create(names(), 4 << 20, "u1")
    assert a.__array_interface__["data"][0] % (2 << 20) == 0
    a[:] = 3
    r = shmbroker.attach(a.shm_name)
    assert r.__array_interface__["data"][0] % (2 << 20) == 0
    assert int(r.sum()) == 3 * (4 << 20)
    with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
        deny = "[deny]" in f.read()
    release = tuple(int(x) for x in os.uname().release.split(".")[:2])
    if release >= (6, 1) and not deny:
        assert shmbroker.stats().huge_page_bytes >= 4 << 20
