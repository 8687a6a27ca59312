"""Lifetimes against the real daemon: connection, refcount (with arrays in flight), ttl,
generated names, scope(), seal and attach(wait=...), crashes included."""

import contextlib
import gc
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import shmbroker
from shmbroker import _testing
from conftest import DAEMON
from sbtest import eventually, run_python

BIG = 200_000  # float64: 1.6 MB, a region of its own (above --shared-max)


def exists(name, client=None):
    try:
        (client or shmbroker).stat(name)
        return True
    except shmbroker.NotFoundError:
        return False


@contextlib.contextmanager
def private_daemon(*args):
    """A daemon of its own, for options the session's daemon does not have."""
    tmp = tempfile.mkdtemp(prefix="shmbroker-lt-")
    sock = os.path.join(tmp, "d.sock")
    proc = subprocess.Popen([DAEMON, "--socket", sock, "--log-level", "warn", *args])
    try:
        assert eventually(lambda: os.path.exists(sock))
        with shmbroker.connect(sock) as c:
            yield c
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


# --- lifetime="connection" ------------------------------------------------------------------


def test_connection_segments_go_when_the_client_closes(names):
    c = shmbroker.connect()
    a = c.create(names("c"), 10, lifetime="connection")
    a[:] = 7
    assert shmbroker.stat(names("c")).lifetime == "connection"
    b = shmbroker.attach(names("c"))
    c.close()
    assert eventually(lambda: not exists(names("c")))
    assert b[3] == 7 and a[3] == 7  # memory outlives the name while arrays hold it


def test_connection_segments_go_when_the_creator_is_sigkilled(names):
    code = (
        "import shmbroker, sys, time\n"
        "a = shmbroker.create(sys.argv[1], 1000, lifetime='connection')\n"
        "b = shmbroker.create(sys.argv[2], 10, lifetime='persistent')\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, names("k"), names("p")],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        assert exists(names("k"))
        p.send_signal(signal.SIGKILL)
        p.wait()
    finally:
        p.kill()
    assert eventually(lambda: not exists(names("k")))
    assert exists(names("p"))  # persistent ones stay


# --- lifetime="refcount" --------------------------------------------------------------------


def test_refcount_segment_goes_with_its_last_attachment(names):
    name = names("s")
    before = shmbroker.stats().auto_unlinked["refcount"]
    a = shmbroker.create(name, BIG, lifetime="refcount")
    other = shmbroker.connect()
    b = other.attach(name)
    assert shmbroker.stat(name).attachments == 2
    del a
    gc.collect()
    shmbroker.flush()
    assert exists(name)  # b still holds it
    del b
    gc.collect()
    other.flush()
    assert not exists(name)
    assert shmbroker.stats().auto_unlinked["refcount"] == before + 1
    other.close()


def _make_refcount(q, n):
    a = shmbroker.create(None, n, lifetime="refcount")
    a[:] = np.arange(n)
    q.put(a)
    # The parent unpickles only after this process and its connection are gone: the ticket
    # taken when the array was pickled holds the segment meanwhile.


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("n", [100, BIG])
def test_refcount_array_returned_by_an_exited_process(method, n):
    ctx = mp.get_context(method)
    q = ctx.Queue()
    p = ctx.Process(target=_make_refcount, args=(q, n))
    p.start()
    p.join(timeout=60)
    assert p.exitcode == 0
    time.sleep(0.2)  # the child's connection is closed by now
    a = q.get(timeout=30)
    assert isinstance(a, shmbroker.SharedArray), a
    np.testing.assert_array_equal(a, np.arange(n))
    name = shmbroker.segment_name(a)
    info = shmbroker.stat(name)
    assert info.lifetime == "refcount" and info.in_flight == 0 and info.attachments == 1
    del a
    gc.collect()
    shmbroker.flush()
    assert not exists(name)


def _return_refcount(i):
    a = shmbroker.create(None, 1000, lifetime="refcount")
    a[:] = i
    return a


def test_pool_workers_return_refcount_arrays():
    with mp.get_context("spawn").Pool(2, maxtasksperchild=1) as pool:
        arrays = pool.map(_return_refcount, range(6))
    names = [shmbroker.segment_name(a) for a in arrays]
    for i, a in enumerate(arrays):
        assert a[0] == i and a[-1] == i
    del a, arrays
    gc.collect()
    shmbroker.flush()
    assert eventually(lambda: not any(exists(n) for n in names))


def test_unredeemed_ticket_lapses():
    with private_daemon("--in-flight-timeout", "300ms") as c:
        a = c.create(None, 10, lifetime="refcount")
        name = shmbroker.segment_name(a)
        blob = pickle.dumps(a)  # a ticket: in flight, never unpickled
        del a
        gc.collect()
        c.flush()
        info = c.stat(name)
        assert info.attachments == 0 and info.in_flight == 1
        assert eventually(lambda: not exists(name, c), timeout=5)
        assert blob


def test_unpickling_twice_attaches_twice(names):
    a = shmbroker.create(names("s"), 10, lifetime="refcount")
    a[:] = 3
    blob = pickle.dumps(a)
    b, c = pickle.loads(blob), pickle.loads(blob)  # the second finds no ticket: a plain attach
    assert b[0] == c[0] == 3
    assert shmbroker.stat(names("s")).in_flight == 0
    del a, b, c
    gc.collect()
    shmbroker.flush()
    assert not exists(names("s"))


def _waited_round_trips(client):
    """A list that grows by one for each waited exchange with the daemon on ``client``'s
    connection (pipelined requests ride in front of the next one and do not count), and the
    context that counts."""
    calls = []

    def count(exchange, packets):
        calls.append(len(packets))
        return exchange(packets)

    return calls, _testing.interpose_exchange(count, client)


@pytest.mark.parametrize("n", [100, BIG])
def test_refcount_adds_no_waited_round_trip(n):
    # A producer's cycle: create, fill, pickle to a consumer (here the default client, its own
    # connection), the consumer attaches and reads, both let go. Persistent needs an unlink on
    # top; refcount needs nothing: the ticket and both releases are pipelined.
    producer = shmbroker.connect()
    shmbroker.list()  # the default client's connection exists, so it can be counted
    producer.list()
    waited = {}
    for lifetime in ("persistent", "refcount"):
        made, made_ctx = _waited_round_trips(producer)
        used, used_ctx = _waited_round_trips(None)
        with made_ctx, used_ctx:
            a = producer.create(None, n, lifetime=lifetime)
            a[:] = 2
            name = shmbroker.segment_name(a)
            b = pickle.loads(pickle.dumps(a))
            assert isinstance(b, shmbroker.SharedArray) and b.sum() == 2 * n
            del a, b
            gc.collect()
            if lifetime == "persistent":
                producer.unlink(name)
        waited[lifetime] = (len(made), len(used))
        producer.flush()
        shmbroker.flush()
        assert not exists(name)
    assert waited["refcount"] == (1, 1), waited  # the create; the attach
    assert waited["persistent"] == (2, 1), waited  # the create and the unlink; the attach
    producer.close()


def test_refcount_survives_its_region_collected_during_the_attach(names):
    # The receiver had the region mapped, and it was unmapped while the attach was on its way,
    # so the reply came without the descriptor. Getting it must not drop the only reference.
    name = names("s")
    producer = shmbroker.connect()
    a = producer.create(name, BIG, lifetime="refcount")
    a[:] = 4
    blob = pickle.dumps(a)  # the ticket holds it from now on
    del a
    gc.collect()
    producer.flush()
    held = [shmbroker.attach(name, writable=True)]  # the pickled view is writable too

    def exchange(original, packets):
        if held:
            held.clear()  # unmapped now; the daemon hears of it with the next request
            gc.collect()
        return original(packets)

    with _testing.interpose_exchange(exchange):
        b = pickle.loads(blob)
    assert b.sum() == 4 * BIG
    shmbroker.flush()
    assert shmbroker.stat(name).attachments == 1
    del b
    gc.collect()
    shmbroker.flush()
    assert not exists(name)
    producer.close()


# --- ttl ------------------------------------------------------------------------------------


def test_ttl_unlinks_on_time(names):
    a = shmbroker.create(names("s"), 10, ttl=0.3)
    info = shmbroker.stat(names("s"))
    assert info.expires is not None
    assert 0.1 < (info.expires - info.created).total_seconds() < 0.5
    assert eventually(lambda: not exists(names("s")), timeout=5)
    a[0] = 1  # the memory stays while mapped


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lifetime": "forever"},
        {"lifetime": 3},
        {"ttl": -1},
        {"ttl": 0},
        {"ttl": float("nan")},
        {"ttl": 1e12},
    ],
)
def test_bad_lifetimes_are_refused(names, kwargs):
    with pytest.raises(shmbroker.InvalidArgumentError):
        shmbroker.create(names("s"), 10, **kwargs)
    assert not exists(names("s"))


# --- generated names and scope() ------------------------------------------------------------


def test_generated_names_are_unique(names):
    a = shmbroker.create(None, 10)
    b = shmbroker.share(np.ones(3))
    na, nb = shmbroker.segment_name(a), shmbroker.segment_name(b)
    try:
        assert na.startswith(f"auto/{os.getpid()}-") and nb.startswith(f"auto/{os.getpid()}-")
        assert na != nb
        assert shmbroker.segment_name(np.ones(3)) is None
    finally:
        shmbroker.unlink(na)
        shmbroker.unlink(nb)


def _total(a):
    return float(a.sum())


def test_scope_frees_everything_at_exit(names):
    prefix = names("scope/")
    with shmbroker.scope(prefix=prefix) as s:
        a = s.share(np.arange(1000.0))
        b = s.create(None, BIG)
        made = [shmbroker.segment_name(a), shmbroker.segment_name(b)]
        assert all(n.startswith(prefix) for n in made)
        with mp.get_context("spawn").Pool(2) as pool:
            assert pool.map(_total, [a, a[::2]]) == [a.sum(), a[::2].sum()]
        assert all(shmbroker.stat(n).lifetime == "connection" for n in made)
    assert eventually(lambda: not any(exists(n) for n in made))
    assert a[999] == 999.0  # arrays outlive the names


def test_scope_of_a_killed_process_is_freed(names):
    prefix = names("killed/")
    code = (
        "import shmbroker, sys, time\n"
        "s = shmbroker.scope(prefix=sys.argv[1])\n"
        "s.create(None, 100); s.create(None, 300_000)\n"
        "print('ready', flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, prefix], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        assert len(shmbroker.list(prefix + "*")) == 2
        p.kill()
        p.wait()
    finally:
        p.kill()
    assert eventually(lambda: not shmbroker.list(prefix + "*"))


# --- seal -----------------------------------------------------------------------------------


def _map_files_path(arr):
    addr = arr.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return f"/proc/self/map_files/{line.split()[0]}"
    raise AssertionError("no mapping")


@pytest.mark.parametrize("n", [100, BIG])
def test_seal_is_kernel_enforced(names, n):
    a = shmbroker.create(names("s"), n)
    a[:] = np.arange(n)
    info = a.seal()
    assert info.sealed and shmbroker.stat(names("s")).sealed
    assert not a.flags.writeable
    with pytest.raises(shmbroker.FailedPreconditionError):
        shmbroker.attach(names("s"), writable=True)
    r = shmbroker.attach(names("s"))
    np.testing.assert_array_equal(r, np.arange(n))
    # Root reopening the memory read-write: the kernel refuses writes and writable mappings.
    if os.geteuid() == 0:
        fd = os.open(_map_files_path(r), os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                os.pwrite(fd, b"x", 0)
            import mmap

            with pytest.raises(PermissionError):
                mmap.mmap(fd, r.nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
    assert shmbroker.seal(names("s")).sealed  # sealing twice is no error


def test_writing_through_an_old_view_after_seal_kills_the_writer(names):
    code = (
        "import shmbroker, sys\n"
        "a = shmbroker.create(sys.argv[1], 200_000)\n"
        "v = a[10:]\n"
        "shmbroker.seal(sys.argv[1])\n"
        "print('sealed', flush=True)\n"
        "v[0] = 1.0\n"
        "print('wrote', flush=True)\n"
    )
    p = run_python(code, names("s"), check=False)
    assert "sealed" in p.stdout and "wrote" not in p.stdout
    assert p.returncode == -signal.SIGSEGV
    assert shmbroker.attach(names("s"))[10] == 0.0


def test_seal_refused_while_another_process_can_write(names):
    a = shmbroker.create(names("s"), 100)
    code = (
        "import shmbroker, sys, time\n"
        "w = shmbroker.attach(sys.argv[1], writable=True)\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, names("s")], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        with pytest.raises(shmbroker.FailedPreconditionError, match="1 other connection"):
            shmbroker.seal(names("s"))
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(timeout=30)
    finally:
        p.kill()
    assert eventually(lambda: shmbroker.stat(names("s")).attachments == 1)
    assert shmbroker.seal(names("s")).sealed
    assert a.flags.writeable  # the module-level seal leaves the array's flag alone


def test_seal_needs_write_access(names):
    shmbroker.create(names("s"), 10, mode=0o644)
    code = "import shmbroker, sys\nshmbroker.seal(sys.argv[1])\n"
    p = run_python(code, names("s"), check=False, user=65534)
    assert "PermissionDeniedError" in p.stderr
    assert not shmbroker.stat(names("s")).sealed


# --- attach(wait=...) -----------------------------------------------------------------------


def test_attach_waits_for_the_producer(names):
    got = {}

    def consumer():
        got["a"] = shmbroker.connect().attach(names("s"), wait=20, sealed=True)

    t = threading.Thread(target=consumer)
    t.start()
    time.sleep(0.3)
    assert t.is_alive()
    a = shmbroker.create(names("s"), BIG)
    a[:] = 5
    time.sleep(0.2)
    assert t.is_alive()  # created but not sealed yet
    a.seal()
    t.join(timeout=20)
    assert got["a"][123] == 5 and shmbroker.stat(names("s")).sealed


def test_attach_wait_runs_out(names):
    t0 = time.monotonic()
    with pytest.raises(shmbroker.DeadlineExceededError) as e:
        shmbroker.attach(names("s"), wait=0.3)
    assert isinstance(e.value, TimeoutError)
    assert 0.25 < time.monotonic() - t0 < 5
    shmbroker.create(names("s"), 10)
    with pytest.raises(shmbroker.FailedPreconditionError):
        shmbroker.attach(names("s"), sealed=True)
    with pytest.raises(shmbroker.DeadlineExceededError, match="not sealed"):
        shmbroker.attach(names("s"), sealed=True, wait=0.2)


@pytest.mark.parametrize("name,wait", [("bad name", 1), ("ok", -1), ("ok", 1e9)])
def test_bad_waits_are_refused(name, wait):
    with pytest.raises(shmbroker.InvalidArgumentError):
        shmbroker.attach(name, wait=wait)


def test_a_killed_waiter_costs_nothing(names):
    code = "import shmbroker, sys\nprint('go', flush=True)\nshmbroker.attach(sys.argv[1], wait=60)\n"
    p = subprocess.Popen([sys.executable, "-c", code, names("s")], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "go"
        time.sleep(0.3)
        p.kill()
        p.wait()
    finally:
        p.kill()
    before = shmbroker.stats().clients
    a = shmbroker.create(names("s"), 10)
    a[0] = 1
    assert shmbroker.attach(names("s"))[0] == 1
    assert shmbroker.stats().clients <= before
