"""Many create/attach/unlink cycles leak nothing: descriptors, mappings, attachments, segments,
neither here nor in the daemon."""

import gc
import os
import time

import shmbroker
from sbtest import fd_count, maps, segment_maps


def daemon_fds(daemon):
    return len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))


def test_10000_cycles_leave_counts_unchanged(names, daemon):
    def cycles(n, tag):
        for i in range(n):
            name = names(f"{tag}{i}")
            a = shmbroker.create(name, 16, "f8")
            a[:] = i
            b = shmbroker.attach(name)
            assert b[15] == i
            shmbroker.unlink(name)

    cycles(200, "warm")  # lazily allocated interpreter and NumPy state
    gc.collect()
    shmbroker.flush()
    fds, nmaps, segs = fd_count(), len(maps()), len(segment_maps())
    d_segments, d_fds = shmbroker.stats().segments, daemon_fds(daemon)

    t0 = time.monotonic()
    cycles(10_000, "c")
    elapsed = time.monotonic() - t0
    gc.collect()
    shmbroker.flush()

    assert fd_count() == fds
    assert len(segment_maps()) == segs
    assert len(maps()) == nmaps, "the process's mapping count is where it started"
    assert shmbroker.stats().segments == d_segments
    assert shmbroker.list(names.prefix + "*") == []
    assert daemon_fds(daemon) == d_fds, "the daemon closed every segment's descriptors"
    print(f"10,000 create/attach/unlink cycles: {elapsed:.2f} s")
