"""Mappings live exactly as long as the arrays on them; the daemon hears about every release,
and never from inside the garbage collector."""

import collections
import gc
import queue
import threading

import numpy as np
import pytest

import shmbroker
from sbtest import eventually, fd_count, region_maps, segment_maps
from shmbroker import _testing


def attachments(name):
    return shmbroker.stat(name).attachments  # the request also sends queued releases


# Segments above --shared-max (1 MiB) have regions of their own, mapped and unmapped with them.
BIG = 200_000  # float64: 1.6 MB


def test_views_keep_the_mapping_alive(names):
    name = names()
    a = shmbroker.create(name, BIG, "f8")
    a[:] = np.arange(BIG)
    s = a[10:20]
    t = a[:1000].reshape(10, 100).T[3]
    p = np.asarray(a[500:])  # a plain-ndarray view keeps it alive too
    del a
    gc.collect()
    assert len(segment_maps(name)) == 1 and attachments(name) == 1
    np.testing.assert_array_equal(s, np.arange(10, 20))
    np.testing.assert_array_equal(t, np.arange(3, 1000, 100))
    del s, t
    gc.collect()
    assert len(segment_maps(name)) == 1 and attachments(name) == 1
    assert p[0] == 500
    del p
    assert segment_maps(name) == [], "unmapped as soon as the last view went"
    assert attachments(name) == 0


def test_regions_are_shared_and_released(names):
    name = names()
    kept = _testing.live_region_mappings()  # shared regions of earlier tests stay mapped
    shmbroker.create(name, 2 << 20, "u1")[:] = 1
    gc.collect()
    assert attachments(name) == 0 and segment_maps(name) == []
    r1 = shmbroker.attach(name)
    r2 = shmbroker.attach(name)
    assert attachments(name) == 2
    # One read-only mapping serves both attachments (the daemon sent the fd once).
    assert len(segment_maps(name)) == 1
    assert r1.__array_interface__["data"] == r2.__array_interface__["data"]
    del r1
    assert attachments(name) == 1 and len(segment_maps(name)) == 1
    del r2
    assert attachments(name) == 0 and segment_maps(name) == []
    assert _testing.live_region_mappings() == kept
    # Released region: the next attach brings the fd again.
    r3 = shmbroker.attach(name)
    assert r3.sum() == 2 << 20 and len(segment_maps(name)) == 1


def test_no_descriptor_is_kept(names):
    before = fd_count()
    arrays = [shmbroker.create(names(), BIG, "f8") for _ in range(20)]
    arrays += [shmbroker.attach(a.shm_name) for a in arrays]
    assert fd_count() == before, "each fd is closed right after mmap"
    assert len(segment_maps()) >= 40


def test_small_segments_share_a_region_kept_mapped_for_the_connection(names):
    before = fd_count()
    regions = len(region_maps())
    arrays = [shmbroker.create(names(), 100 + i, "f8") for i in range(200)]
    arrays += [shmbroker.attach(a.shm_name) for a in arrays]
    for i, a in enumerate(arrays[:200]):
        a[:] = i
    assert fd_count() == before
    assert len(region_maps()) <= regions + 2, "one read-write and one read-only mapping"
    for i, a in enumerate(arrays[200:]):
        assert (a == i).all(), "segments in one region overlap"
    del arrays
    gc.collect()
    assert len(region_maps()) <= regions + 2, "kept for later segments"


def test_release_from_other_threads(names):
    name = names()
    shmbroker.create(name, 100, "i4")
    q = queue.Queue()
    errors = []

    def producer():
        try:
            for i in range(300):
                q.put(shmbroker.attach(name)[i % 10:])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        q.put(None)

    def consumer():
        while q.get() is not None:
            pass  # the array is dropped here, in this thread

    threads = [threading.Thread(target=producer) for _ in range(3)]
    threads += [threading.Thread(target=consumer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    gc.collect()
    assert attachments(name) == 0


class _Cycle:
    def __init__(self, arr):
        self.arr = arr
        self.me = self  # only the cyclic collector can free this, at any allocation


class _RecordingDeque(collections.deque):
    """Counts the releases queued while a request was on the wire."""

    during_request = 0

    def append(self, item):
        if _GcSocket.inside:
            _RecordingDeque.during_request += 1
        super().append(item)


class _GcSocket:
    """Wraps the client's socket: runs the cyclic garbage collector between a request and its
    reply, and counts re-entrant uses of the socket (from a collector callback, where an
    exception would only be printed)."""

    inside = False
    reentered = 0

    def __init__(self, sock):
        self._sock = sock

    def _collecting(self, method, *args):
        _GcSocket.reentered += _GcSocket.inside
        _GcSocket.inside = True
        try:
            gc.collect(1)  # the young generations: where the garbage below is
            return method(*args)
        finally:
            _GcSocket.inside = False

    def send(self, *args):
        return self._collecting(self._sock.send, *args)

    def recvmsg(self, *args):
        return self._collecting(self._sock.recvmsg, *args)

    def close(self):
        self._sock.close()


def test_gc_during_requests_only_queues(names):
    name = names()
    shmbroker.create(name, 64, "u1")
    shmbroker.stat(name)  # connected
    with _testing.interpose_release_queue(_RecordingDeque()), _testing.interpose_socket(_GcSocket):
        for i in range(300):
            _Cycle(shmbroker.attach(name)[i % 7:])  # garbage, freed inside the next request
        old = gc.get_threshold()
        gc.set_threshold(1, 1, 1)  # and collections at nearly every allocation
        try:
            for i in range(300):
                _Cycle(shmbroker.attach(name)[i % 7:])
        finally:
            gc.set_threshold(*old)
        gc.collect()
        assert _RecordingDeque.during_request >= 250, _RecordingDeque.during_request
        assert _GcSocket.reentered == 0
        assert attachments(name) == 0


def test_region_collected_during_the_request(names):
    # The last array of a region dies after the queued releases were sent but before the
    # attach reply (which then carries no fd): the client must recover, not fail.
    name = names()
    w = shmbroker.create(name, BIG, "i8")
    w[:] = 5
    held = [shmbroker.attach(name)]

    def exchange(original, packets):
        if held:
            held.clear()  # read-only region unmapped now, the daemon does not know yet
            gc.collect()
        return original(packets)

    with _testing.interpose_exchange(exchange):
        r = shmbroker.attach(name)
    assert r.sum() == 5 * BIG and not r.flags.writeable
    assert len(segment_maps(name)) == 2  # the writable and the new read-only mapping
    assert attachments(name) == 2


def test_arrays_keep_an_explicit_client_connection(names, daemon):
    name = names()
    shmbroker.create(name, 8, "u1")
    gc.collect()
    c = shmbroker.connect(daemon.socket)
    a = c.attach(name)
    del c
    gc.collect()
    assert attachments(name) == 1, "the array keeps its connection and attachment"
    del a
    gc.collect()
    assert eventually(lambda: attachments(name) == 0)


def test_closing_a_client_leaves_arrays_valid(names, daemon):
    name = names()
    with shmbroker.connect(daemon.socket) as c:
        a = c.create(name, 1000, "f4")
        a[:] = 2
    a[0] = 3
    assert a.sum() == 2 * 999 + 3
    assert eventually(lambda: attachments(name) == 0)
    del a
    gc.collect()


def test_failed_request_keeps_queued_releases(names):
    name = names()
    w = shmbroker.create(name, 8, "u1")
    r = shmbroker.attach(name)
    assert attachments(name) == 2
    del w, r
    gc.collect()
    with pytest.raises(shmbroker.InvalidArgumentError):
        shmbroker.stat("x" * 70000)  # refused before anything is sent
    assert attachments(name) == 0


def test_blocks_of_a_closed_connection_wait_for_its_process_to_exit(names):
    # A process that closed its connection may still map its small arrays: their blocks must not
    # be zeroed or handed out again before it exits.
    import os
    import subprocess
    import sys

    name = names("closed")
    code = f"""
import sys, shmbroker
c = shmbroker.connect()
a = c.create({name!r}, 512, "u1")
a[:] = 7
c.unlink({name!r})
c.close()
print("closed", flush=True)
sys.stdin.readline()
print("intact" if (a == 7).all() else "overwritten", flush=True)
"""
    before = shmbroker.stats().unlinked_segments
    child = subprocess.Popen([sys.executable, "-c", code], text=True, env=os.environ,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline() == "closed\n"
    assert shmbroker.stats().unlinked_segments == before + 1, "held for the process"
    others = [shmbroker.create(names(), 512, "u1") for _ in range(200)]
    for o in others:
        o[:] = 0x55
    out, _ = child.communicate("check\n", timeout=30)
    assert out.strip() == "intact"
    assert eventually(lambda: shmbroker.stats().unlinked_segments == before), "freed at exit"


def test_a_backlog_of_releases_goes_in_several_packets(names):
    # More releases than ride in one packet (1024): the rest go first, each in a packet of
    # their own, and every one is applied before the request.
    name = names()
    keep = shmbroker.create(name, 8, "u1")
    views = [shmbroker.attach(name) for _ in range(2500)]
    assert attachments(name) == 2501
    del views
    gc.collect()
    assert attachments(name) == 1
    del keep
