"""Mapping a segment's descriptor, through libc with ctypes.

Why not the mmap module: before Python 3.13 (``trackfd=False``) mmap.mmap keeps a dup() of the
descriptor open for as long as the mapping lives, i.e. one fd per mapped segment, which is how
torch.multiprocessing users run out of descriptors. Here the fd is closed right after mmap(2),
and the mapping is exposed as a memoryview over the raw memory (read-only views for read-only
mappings). munmap(2) runs when that memoryview is garbage-collected; every array built on it
keeps it alive through its ``base`` chain, so no array can outlive its memory.
"""

import ctypes
import mmap
import os
import weakref

_libc = ctypes.CDLL(None, use_errno=True)

_mmap = _libc.mmap
_mmap.restype = ctypes.c_void_p
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long]
_munmap = _libc.munmap
_munmap.restype = ctypes.c_int
_munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_madvise = _libc.madvise
_madvise.restype = ctypes.c_int
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

_memoryview_from_memory = ctypes.pythonapi.PyMemoryView_FromMemory
_memoryview_from_memory.restype = ctypes.py_object
_memoryview_from_memory.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
_PyBUF_READ = 0x100
_PyBUF_WRITE = 0x200

_MAP_FAILED = ctypes.c_void_p(-1).value
_MAP_FIXED = 0x10  # the same on every Linux architecture; the mmap module does not export it
# Linux 5.14; older kernels answer EINVAL, which is fine: the pages are reserved already.
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
PAGE_SIZE = mmap.PAGESIZE
# Below this a syscall costs more than the few page faults it saves.
PREFAULT_MIN_BYTES = 256 * 1024

# The weak references whose callbacks unmap: they must outlive any connection object.
_live = {}


def map_fd(fd, size, writable, on_unmap):
    """Maps ``size`` bytes of ``fd`` shared, closes ``fd`` (always, even on failure) and
    returns ``(view, address, ref)``.

    ``view`` is a memoryview of the mapping, read-only unless ``writable``. When ``view`` is
    garbage-collected the mapping is removed and ``on_unmap(ref)`` is called, ``ref`` being the
    weak reference to ``view`` returned here. ``on_unmap`` runs inside the garbage collector: it
    must only record the fact.
    """
    try:
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        # 2 MiB-aligned: where the daemon backed the region with 2 MiB pages, the kernel maps
        # them whole only at such an address.
        addr = mmap_aligned(fd, size, prot)
    finally:
        os.close(fd)
    try:
        view = _memoryview_from_memory(addr, size, _PyBUF_WRITE if writable else _PyBUF_READ)
    except BaseException:
        _munmap(addr, size)
        raise
    ref = _track(view, addr, size, on_unmap)
    return view, addr, ref


def remap_readonly(addr, size, fd):
    """Replaces the mapping at [addr, addr+size) by a read-only shared mapping of ``fd`` (the
    same memory, read-only descriptor) in place: arrays on it stay valid, and no writable
    mapping of the memory is left (so the daemon can seal it)."""
    got = _mmap(addr, size, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED, fd, 0)
    if got is None or got == _MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _track(view, addr, size, on_unmap, _munmap=_munmap, _live=_live):
    # Defaults bind what the callback needs: it may run while the interpreter shuts down.
    def unmapped(ref):
        _live.pop(id(ref), None)
        _munmap(addr, size)
        on_unmap(ref)

    ref = weakref.ref(view, unmapped)
    _live[id(ref)] = ref
    return ref


def prefault(addr, start, length, writable):
    """Fills the page tables of [start, start+length) of a mapping at ``addr`` at once: far
    cheaper than one page fault per 4 KiB when the data is then read or written whole."""
    if start < 0 or length < PREFAULT_MIN_BYTES:
        return
    begin = (addr + start) & ~(PAGE_SIZE - 1)
    end = addr + start + length
    _madvise(begin, end - begin, MADV_POPULATE_WRITE if writable else MADV_POPULATE_READ)


# Last: _hugemap takes _mmap and _munmap from this module.
from ._hugemap import mmap_aligned  # noqa: E402


def live_mappings():
    """How many mappings this module holds (for tests)."""
    return len(_live)
