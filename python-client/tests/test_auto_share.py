"""auto_share(): plain arrays that multiprocessing pickles travel through refcount segments, with
fork, spawn and forkserver; the segments go when nobody uses them; joblib with SharedArrays."""

import concurrent.futures
import contextlib
import gc
import importlib.util
import multiprocessing as mp
import os
import pickle
import signal
import subprocess
import tempfile
import time
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shmbroker
from conftest import DAEMON
from sbtest import eventually, run_python
from shmbroker import _testing

METHODS = ["fork", "spawn", "forkserver"]
TIMEOUT = 120  # seconds: a hung worker fails the test instead of hanging the suite
N = 200_000  # float64: 1.6 MB, above the default min_bytes (1 MiB)


def auto_segments():
    return {i.name for i in shmbroker.list("auto/*")}


def released():
    """Lets this process's arrays go and tells the daemon now."""
    gc.collect()
    shmbroker.flush()


@pytest.fixture(autouse=True)
def no_leftovers():
    """Each test starts and ends with auto_share off, and leaves no segment of its own."""
    assert _testing.auto_share_setting() is None
    before = auto_segments()
    yield
    on = _testing.auto_share_setting()
    _testing.reset_auto_share()
    assert on is None, "the test left auto_share on"
    released()
    assert eventually(lambda: auto_segments() <= before), auto_segments() - before


def pickled(x):
    return ForkingPickler.loads(ForkingPickler.dumps(x))


# --- Worker functions (module level: spawn and forkserver import them) ------------------------


def _inspect_and_make(args):
    """Pool task: what arrived, the segment as the daemon has it, and a big array of our own."""
    a, value = args
    name = shmbroker.segment_name(a)
    lifetime = shmbroker.stat(name).lifetime if name else None
    return type(a).__name__, name, lifetime, float(a.sum()), np.full(N, value)


def _make_and_put(q, n):
    q.put(np.arange(n, dtype="f8"))  # the parent unpickles it after this process exited


def _pipe_echo(conn):
    a = conn.recv()
    conn.send((type(a).__name__, shmbroker.segment_name(a), a * 2))
    conn.close()


def _queue_echo(inq, outq):
    a = inq.get()
    outq.put((type(a).__name__, shmbroker.segment_name(a), a + 1))


def _describe(a):
    return type(a).__name__, shmbroker.segment_name(a), float(np.sum(a))


def _describe_into(a, q):
    q.put(_describe(a))


def _hold_until_killed(conn):
    a = conn.recv()
    conn.send(shmbroker.segment_name(a))
    time.sleep(60)


def _sleep_then_recv(conn):
    time.sleep(60)
    conn.recv()


def _roundtrip_values(arrays):
    return arrays, [type(a).__name__ for a in arrays]


def _write_through(a, i):
    a[i] = i + 1
    return type(a).__name__, shmbroker.segment_name(a)


# --- Through ForkingPickler, in this process --------------------------------------------------


def test_big_array_becomes_a_reference_in_flight():
    a = np.arange(N, dtype="f8")
    before = auto_segments()
    with shmbroker.auto_share():
        blob = ForkingPickler.dumps(a)
    assert len(blob) < 1024, "a reference, not the data"
    (name,) = auto_segments() - before
    info = shmbroker.stat(name)
    # The sender let go at once; the ticket holds the segment until the receiver attaches.
    assert info.lifetime == "refcount" and info.attachments == 0 and info.in_flight == 1
    b = ForkingPickler.loads(blob)
    assert isinstance(b, shmbroker.SharedArray) and b.shm_name == name
    assert b.flags.writeable and b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(b, a)
    info = shmbroker.stat(name)
    assert info.attachments == 1 and info.in_flight == 0
    del b
    released()
    assert name not in auto_segments()


def test_each_pickling_is_a_copy_of_its_own():
    a = np.zeros(N)
    with shmbroker.auto_share():
        b, c = pickled(a), pickled(a)
    assert b.shm_name != c.shm_name
    b[0] = 1.0
    assert c[0] == 0.0 and a[0] == 0.0, "the receiver owns its copy, as with pickle"


def test_below_min_bytes_pickles_as_usual():
    small = np.arange(N // 2, dtype="f8")  # 800 KB < 1 MiB
    with shmbroker.auto_share():
        blob = ForkingPickler.dumps(small)
        assert len(blob) > small.nbytes
        b = ForkingPickler.loads(blob)
        assert type(b) is np.ndarray
        np.testing.assert_array_equal(b, small)
        with shmbroker.auto_share(min_bytes=small.nbytes):  # the threshold is inclusive
            assert isinstance(pickled(small), shmbroker.SharedArray)
            assert type(pickled(small[1:])) is np.ndarray


def test_plain_pickle_is_untouched():
    with shmbroker.auto_share(min_bytes=0):
        b = pickle.loads(pickle.dumps(np.arange(N, dtype="f8")))
    assert type(b) is np.ndarray


class _Sub(np.ndarray):
    pass


def _cases():
    rng = np.random.default_rng(7)
    big2d = rng.standard_normal((600, 500))
    rec = np.zeros(4, dtype=[("x", "<f8"), ("y", "<i4")])
    rec["x"], rec["y"] = [1.5, 2.5, 3.5, 4.5], [1, 2, 3, 4]
    objs = np.empty(3, dtype=object)
    objs[:] = [{"a": 1}, "two", 3.0]
    return {
        # name: (array, shared?)
        "contiguous": (big2d, True),
        "strided": (big2d[::2, ::3], True),
        "transposed": (big2d.T, True),
        "fortran": (np.asfortranarray(big2d), True),
        "negative-strides": (big2d[::-1, ::-1], True),
        "0-d": (np.array(3.25), True),
        "big-endian": (big2d.astype(">f8"), True),
        "bool": (big2d > 0, True),
        "datetime": (np.arange(1000).astype("M8[s]"), True),
        "unicode": (np.array(["a", "äß", "😀x"]), True),
        "read-only": (np.frombuffer(big2d.tobytes(), "f8"), True),
        "empty": (np.zeros((0, 5)), False),
        "object": (objs, False),
        "structured": (rec, False),
        "subclass": (big2d.view(_Sub), False),
    }


def _check_same(got, want, shared, label):
    assert got.dtype == want.dtype, label
    assert got.shape == want.shape, label
    if want.dtype.hasobject:
        assert list(got) == list(want), label
    else:
        assert got.tobytes() == want.tobytes(), label
    if want.flags.f_contiguous and not want.flags.c_contiguous:
        assert got.flags.f_contiguous, label
    if shared:
        assert isinstance(got, shmbroker.SharedArray), label
        assert got.flags.writeable, f"{label}: writable, as an unpickled copy is"
    else:
        assert type(got) is type(want), label


def test_layouts_and_dtypes_round_trip_exactly():
    cases = _cases()
    with shmbroker.auto_share(min_bytes=0):
        for label, (a, shared) in cases.items():
            _check_same(pickled(a), a, shared, label)


def test_layouts_and_dtypes_through_a_spawn_pool():
    cases = _cases()
    arrays = [a for a, _ in cases.values()]
    with shmbroker.auto_share(min_bytes=0):
        with mp.get_context("spawn").Pool(1) as pool:
            back, kinds = pool.apply_async(_roundtrip_values, (arrays,)).get(TIMEOUT)
    for (label, (a, shared)), got, kind in zip(cases.items(), back, kinds):
        assert kind == ("SharedArray" if shared else type(a).__name__), label
        _check_same(got, a, shared, label)
    del back
    released()


def test_threads_pickle_at_once():
    # Queue and ProcessPoolExecutor pickle in feeder threads while other threads use the client.
    def work(i):
        a = np.full(N, float(i))
        b = pickled(a)
        shmbroker.stats()
        return isinstance(b, shmbroker.SharedArray) and b[0] == i and b[-1] == i

    with shmbroker.auto_share():
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            assert all(ex.map(work, range(32)))


# --- Switching it on and off --------------------------------------------------------------------


def _reducer():
    return ForkingPickler._extra_reducers.get(np.ndarray)


def test_context_manager_restores_on_exit_and_on_exception():
    a = np.ones(N)
    with shmbroker.auto_share() as s:
        assert s.active and _testing.auto_share_setting() == 1 << 20
        assert "shmbroker.auto_share" in mp.current_process()._config
    assert not s.active and _reducer() is None
    assert "shmbroker.auto_share" not in mp.current_process()._config
    assert type(pickled(a)) is np.ndarray
    with pytest.raises(KeyError):
        with shmbroker.auto_share():
            assert isinstance(pickled(a), shmbroker.SharedArray)
            raise KeyError("boom")
    assert _reducer() is None and type(pickled(a)) is np.ndarray


def test_a_reducer_registered_before_is_kept_and_restored():
    seen = []

    def theirs(arr):
        seen.append(arr.nbytes)
        return arr.__reduce__()

    ForkingPickler.register(np.ndarray, theirs)
    try:
        with shmbroker.auto_share():
            assert isinstance(pickled(np.ones(N)), shmbroker.SharedArray)
            assert type(pickled(np.ones(10))) is np.ndarray
            assert seen == [80], "the arrays not shared go through their reducer"
        assert _reducer() is theirs
    finally:
        del ForkingPickler._extra_reducers[np.ndarray]


def test_plain_call_and_its_off_switches():
    a = np.ones(N)
    s = shmbroker.auto_share(min_bytes=1000)
    try:
        assert isinstance(pickled(a), shmbroker.SharedArray)
        with shmbroker.auto_share(False):  # off inside the block only
            assert type(pickled(a)) is np.ndarray and _reducer() is None
        assert isinstance(pickled(a), shmbroker.SharedArray)
        inner = shmbroker.auto_share(min_bytes=10 * a.nbytes)  # the newest call decides
        assert type(pickled(a)) is np.ndarray
        s.stop()  # stopping an older call leaves the newest in force
        assert _testing.auto_share_setting() == 10 * a.nbytes
        inner.stop()
        inner.stop()  # twice: no error
        assert _testing.auto_share_setting() is None and type(pickled(a)) is np.ndarray
        off = shmbroker.auto_share()
        shmbroker.auto_share(False)  # as a plain call: off until stopped
        assert type(pickled(a)) is np.ndarray
        assert "off" in repr(shmbroker.auto_share(False))
    finally:
        _testing.reset_auto_share()
    assert not off.active and "stopped" in repr(off)


@pytest.mark.parametrize("bad", [-1, -(1 << 40)])
def test_negative_min_bytes_is_refused(bad):
    with pytest.raises(ValueError, match="negative"):
        shmbroker.auto_share(bad)
    assert _reducer() is None


@pytest.mark.parametrize("bad", [1.5, "1M", None, True, [1]])
def test_non_int_min_bytes_is_refused(bad):
    with pytest.raises(TypeError, match="min_bytes"):
        shmbroker.auto_share(bad)
    assert _reducer() is None


def test_numpy_integers_are_ints():
    with shmbroker.auto_share(np.int64(5)) as s:
        assert s.min_bytes == 5 and type(s.min_bytes) is int


def test_no_daemon_pickles_as_usual_with_one_warning(tmp_path):
    code = (
        "import warnings, numpy as np, shmbroker\n"
        "from multiprocessing.reduction import ForkingPickler\n"
        "shmbroker.auto_share()\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    for i in range(3):\n"
        "        b = ForkingPickler.loads(ForkingPickler.dumps(np.full(200_000, float(i))))\n"
        "        assert type(b) is np.ndarray and b[0] == i\n"
        "print(len(w), w[0].category.__name__, w[0].message)\n"
    )
    env = dict(os.environ, SHMBROKER_SOCKET=str(tmp_path / "nobody.sock"))
    p = run_python(code, env=env)
    count, category, message = p.stdout.split(" ", 2)
    assert count == "1" and category == "RuntimeWarning", p.stdout
    assert "pickling them as usual" in message and "nobody.sock" in message


# --- Pool, Process, Queue, Pipe, ProcessPoolExecutor --------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_pool_arguments_and_results(method):
    before = auto_segments()
    tasks = [(np.full(N, float(i)), i + 10) for i in range(4)]
    with shmbroker.auto_share():
        with mp.get_context(method).Pool(2) as pool:
            results = pool.map_async(_inspect_and_make, tasks).get(TIMEOUT)
    for (a, value), (kind, name, lifetime, total, made) in zip(tasks, results):
        assert kind == "SharedArray" and name.startswith("auto/"), (kind, name)
        assert lifetime == "refcount" and total == a.sum()
        assert isinstance(made, shmbroker.SharedArray), "the worker's own result is shared"
        assert made.shm_name not in before and (made == value).all()
        assert shmbroker.stat(made.shm_name).lifetime == "refcount"
    # Only the results' segments are left: the arguments' went with the workers' arrays.
    assert eventually(lambda: len(auto_segments() - before) == len(tasks))
    del results, made
    released()
    assert eventually(lambda: auto_segments() <= before)


def test_pool_started_before_shares_arguments_only():
    # Documented limit: workers started before auto_share do not share what they send back.
    with mp.get_context("spawn").Pool(1) as pool:
        with shmbroker.auto_share():
            kind, _, _, _, made = pool.apply_async(
                _inspect_and_make, ((np.ones(N), 1),)).get(TIMEOUT)
    assert kind == "SharedArray" and type(made) is np.ndarray


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_an_idle_worker_lets_go_of_its_last_argument(method):
    before = auto_segments()
    with shmbroker.auto_share():
        with mp.get_context(method).Pool(2) as pool:
            sums = pool.map_async(_describe, [np.ones(N)] * 4, chunksize=1).get(TIMEOUT)
            assert all(kind == "SharedArray" for kind, _, _ in sums)
            # The workers make no more requests: their releases go out by themselves.
            assert eventually(lambda: auto_segments() <= before), auto_segments() - before


@pytest.mark.parametrize("method", METHODS)
def test_array_made_by_an_exited_process(method):
    ctx = mp.get_context(method)
    with shmbroker.auto_share():
        q = ctx.Queue()
        p = ctx.Process(target=_make_and_put, args=(q, N))
        p.start()
        p.join(TIMEOUT)
    assert p.exitcode == 0
    a = q.get(timeout=TIMEOUT)  # the sender is gone: its ticket held the segment
    assert isinstance(a, shmbroker.SharedArray), type(a)
    np.testing.assert_array_equal(a, np.arange(N, dtype="f8"))
    name = a.shm_name
    del a
    released()
    assert name not in auto_segments()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pipe_both_ways(method):
    ctx = mp.get_context(method)
    a = np.arange(N, dtype="f8")
    with shmbroker.auto_share():
        here, there = ctx.Pipe()
        p = ctx.Process(target=_pipe_echo, args=(there,))
        p.start()
        here.send(a)
        kind, name, doubled = here.recv()
        p.join(TIMEOUT)
    assert kind == "SharedArray" and name.startswith("auto/")
    assert isinstance(doubled, shmbroker.SharedArray) and doubled.shm_name != name
    np.testing.assert_array_equal(doubled, a * 2)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_queue_both_ways(method):
    ctx = mp.get_context(method)
    a = np.arange(N, dtype="f8")
    with shmbroker.auto_share():
        inq, outq = ctx.Queue(), ctx.Queue()
        p = ctx.Process(target=_queue_echo, args=(inq, outq))
        p.start()
        inq.put(a)  # pickled by the Queue's feeder thread
        kind, name, plus = outq.get(timeout=TIMEOUT)
        p.join(TIMEOUT)
    assert kind == "SharedArray" and isinstance(plus, shmbroker.SharedArray)
    np.testing.assert_array_equal(plus, a + 1)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_process_pool_executor(method):
    with shmbroker.auto_share():
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=mp.get_context(method)) as ex:
            futures = [ex.submit(_inspect_and_make, (np.full(N, float(i)), i)) for i in range(3)]
            results = [f.result(TIMEOUT) for f in futures]
    for i, (kind, name, lifetime, total, made) in enumerate(results):
        assert kind == "SharedArray" and lifetime == "refcount" and total == i * N
        assert isinstance(made, shmbroker.SharedArray) and made[0] == i


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_process_arguments(method):
    # The argument goes in the Process object's own pickle.
    ctx = mp.get_context(method)
    a = np.arange(N, dtype="f8")
    with shmbroker.auto_share():
        q = ctx.Queue()
        p = ctx.Process(target=_describe_into, args=(a, q))
        p.start()
        kind, name, total = q.get(timeout=TIMEOUT)
        p.join(TIMEOUT)
    assert kind == "SharedArray" and name.startswith("auto/") and total == a.sum()


# --- Crashes ----------------------------------------------------------------------------------


def test_a_receiver_killed_after_receiving_lets_go():
    ctx = mp.get_context("spawn")
    before = auto_segments()
    with shmbroker.auto_share():
        here, there = ctx.Pipe()
        p = ctx.Process(target=_hold_until_killed, args=(there,))
        p.start()
        try:
            here.send(np.ones(N))
            name = here.recv()
            info = shmbroker.stat(name)
            assert info.attachments == 1 and info.in_flight == 0, "the receiver holds it"
        finally:
            p.kill()
            p.join(TIMEOUT)
    assert eventually(lambda: auto_segments() <= before)


@contextlib.contextmanager
def default_daemon(*args):
    """For the block, a private daemon is this process's (and its children's) default."""
    tmp = tempfile.mkdtemp(prefix="shmbroker-as-")
    sock = os.path.join(tmp, "d.sock")
    proc = subprocess.Popen([DAEMON, "--socket", sock, "--log-level", "warn", *args])
    old = os.environ["SHMBROKER_SOCKET"]
    try:
        assert eventually(lambda: os.path.exists(sock))
        os.environ["SHMBROKER_SOCKET"] = sock
        _testing.reset_default_client()
        yield
    finally:
        os.environ["SHMBROKER_SOCKET"] = old
        _testing.reset_default_client()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_a_receiver_killed_before_unpickling_costs_only_the_in_flight_timeout():
    with default_daemon("--in-flight-timeout", "500ms"):
        ctx = mp.get_context("spawn")
        with shmbroker.auto_share():
            here, there = ctx.Pipe()
            p = ctx.Process(target=_sleep_then_recv, args=(there,))
            p.start()
            try:
                here.send(np.ones(N))  # a ticket, never redeemed
                (name,) = auto_segments()
                info = shmbroker.stat(name)
                assert info.in_flight == 1 and info.attachments == 0
            finally:
                p.kill()
                p.join(TIMEOUT)
        assert eventually(lambda: not auto_segments(), timeout=10)


# --- joblib (loky) ------------------------------------------------------------------------------
# In a child interpreter each: joblib imports distutils, which setuptools (test_packaging) then
# warns about, and its worker processes outlive the calls.

JOBLIB_BY_REFERENCE = """
import sys, joblib, numpy as np, shmbroker
from test_auto_share import N, _describe, _write_through
a = shmbroker.create(sys.argv[1], N, "f8")  # 1.6 MB: above joblib's max_nbytes
out = joblib.Parallel(n_jobs=2)(joblib.delayed(_write_through)(a, i) for i in range(8))
# The workers wrote into this very memory: no copy, no joblib memmap.
assert out == [("SharedArray", sys.argv[1])] * 8, out
np.testing.assert_array_equal(a[:8], np.arange(1, 9))
assert a[8:].sum() == 0
# The same call with a plain array goes through joblib's own memmap: the checks above tell the
# two apart.
kinds = joblib.Parallel(n_jobs=2)(joblib.delayed(_describe)(np.zeros(N)) for _ in range(2))
assert {k for k, _, _ in kinds} == {"memmap"}, kinds
print("ok")
"""

JOBLIB_UNDER_AUTO_SHARE = """
import joblib, numpy as np, shmbroker
from test_auto_share import N, _describe
with shmbroker.auto_share():
    out = joblib.Parallel(n_jobs=2)(
        joblib.delayed(_describe)(np.full(N, float(i))) for i in range(4))
# joblib's own reducers come first for plain arrays: its memmaps, not segments.
assert [(k, s) for k, _, s in out] == [("memmap", i * N) for i in range(4)], out
print("ok")
"""


def need_joblib():
    if importlib.util.find_spec("joblib") is None:
        pytest.skip("joblib is not installed (Debian: python3-joblib; ./dev installs it)")


def test_joblib_passes_shared_arrays_by_reference(names):
    need_joblib()
    assert run_python(JOBLIB_BY_REFERENCE, names("j"), timeout=TIMEOUT).stdout == "ok\n"


def test_joblib_is_unchanged_under_auto_share():
    need_joblib()
    assert run_python(JOBLIB_UNDER_AUTO_SHARE, timeout=TIMEOUT).stdout == "ok\n"
