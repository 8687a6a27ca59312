"""Shared mappings at an aligned address, through libc with ctypes (as common/map_aligned.cc).

The kernel maps a 2 MiB page with one page-table entry only where the mapping's address and the
file offset are both 2 MiB-aligned; anywhere else the same huge page is mapped 4 KiB at a time,
and a reader gets none of the gain. mmap(2) does not align shared memfd mappings by itself
(shmem_enabled = never), so this reserves room, maps the file over an aligned part of it and
gives back the slack.
"""

import ctypes
import errno
import mmap
import os

from ._mem import _mmap, _munmap

_MAP_FAILED = ctypes.c_void_p(-1).value
# The same on every Linux architecture; the mmap module exports neither.
_PROT_NONE = 0
_MAP_FIXED = 0x10
_PAGE_SIZE = mmap.PAGESIZE


def _checked(addr):
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return addr


def mmap_aligned(fd, size, prot, align=2 << 20):
    """Maps ``size`` bytes of ``fd`` from offset 0, MAP_SHARED with ``prot``, at an address that
    is a multiple of ``align`` (a power of two, at least the page size) when size >= align; below
    that a plain mmap. Returns the address; unmap with munmap(addr, size). Raises OSError. The fd
    stays open (it is the caller's). No other mapping is left behind, even on failure.
    """
    if align <= 0 or align & (align - 1) or align % _PAGE_SIZE:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    if size < align or align == _PAGE_SIZE:
        return _checked(_mmap(None, size, prot, mmap.MAP_SHARED, fd, 0))
    # The reservation keeps other threads' mmaps out of the range until the file is over it, so
    # MAP_FIXED replaces only our own mapping. PROT_NONE private memory costs no commit charge.
    reserved = size + align
    base = _checked(_mmap(None, reserved, _PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0))
    aligned = (base + align - 1) & ~(align - 1)
    addr = _mmap(aligned, size, prot, mmap.MAP_SHARED | _MAP_FIXED, fd, 0)
    if addr is None or addr == _MAP_FAILED:
        err = ctypes.get_errno()
        _munmap(base, reserved)
        raise OSError(err, os.strerror(err))
    end = aligned + (size + _PAGE_SIZE - 1) // _PAGE_SIZE * _PAGE_SIZE
    if aligned > base:
        _munmap(base, aligned - base)
    if base + reserved > end:
        _munmap(end, base + reserved - end)
    return addr
