"""multiprocessing with fork and spawn: Process, Pool, results returned by workers, and the
per-process default client."""

import multiprocessing as mp
import os
import pickle
import re

import numpy as np
import pytest

import shmbroker
import sbtest
from shmbroker import _testing

METHODS = ["fork", "spawn"]
TIMEOUT = 120  # seconds: a hung worker fails the test instead of hanging the suite


@pytest.mark.parametrize("method", METHODS)
def test_process_attaches_by_name(names, method):
    # The tutorial workflow: the child attaches by name and writes, the parent sees it.
    name = names()
    a = shmbroker.create(name, 100_000, "f8")
    p = mp.get_context(method).Process(target=sbtest.attach_and_set, args=(name, 42.0))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert (a == 42.0).all()


@pytest.mark.parametrize("method", METHODS)
def test_process_gets_a_pickled_view(names, method):
    a = shmbroker.create(names(), (100, 10), "f8")
    p = mp.get_context(method).Process(target=sbtest.set_everywhere, args=(a[10:20, ::2], 7.0))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert (a[10:20, ::2] == 7.0).all() and a.sum() == 7.0 * 50


@pytest.mark.parametrize("method", METHODS)
def test_pool_writes_chunks_in_place(names, method):
    n, chunks = 200_000, 8
    a = shmbroker.create(names(), (n,), "f8")
    bounds = np.linspace(0, n, chunks + 1, dtype=int)
    tasks = [(a[lo:hi], lo) for lo, hi in zip(bounds[:-1], bounds[1:])]
    assert all(len(pickle.dumps(t)) < 1024 for t in tasks)
    with mp.get_context(method).Pool(2) as pool:
        results = pool.map_async(sbtest.fill_chunk, tasks).get(TIMEOUT)
    np.testing.assert_array_equal(a, np.arange(n, dtype="f8"))
    assert {r[1] for r in results} == {a.shm_name}
    assert all(pid != os.getpid() for pid, _ in results)
    # Read-only views go to workers read-only.
    r = shmbroker.attach(a.shm_name)
    with mp.get_context(method).Pool(2) as pool:
        views = [r[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
        sums = pool.map_async(sbtest.sum_view, views).get(TIMEOUT)
    assert sum(s for s, _, _ in sums) == a.sum()
    assert all(not w and t == "SharedArray" for _, w, t in sums)


@pytest.mark.parametrize("method", METHODS)
def test_worker_returns_a_shared_array(names, method):
    # Each worker exits right after its task: the segment outlives it (the daemon holds it until
    # it is unlinked), and the parent attaches zero-copy.
    tasks = [(names(f"r{i}"), float(i)) for i in range(4)]
    with mp.get_context(method).Pool(2, maxtasksperchild=1) as pool:
        arrays = pool.map_async(sbtest.make_array, tasks).get(TIMEOUT)
    for (name, value), arr in zip(tasks, arrays):
        assert isinstance(arr, shmbroker.SharedArray) and arr.shm_name == name
        assert (arr == value).all()
        assert sbtest.eventually(lambda: not shmbroker.stat(name).creator_connected)
        # Zero-copy: the parent's array is the segment.
        shmbroker.attach(name, writable=True)[0] = -1.0
        assert arr[0] == -1.0


def test_forked_child_uses_its_own_connection(names):
    name = names()
    a = shmbroker.create(name, 10, "i8")
    parent_conn = _testing.connection()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery from here on
        code = 1
        try:
            assert not _testing.connection_is_open(parent_conn), "closed in the child"
            a[:] = 5  # the inherited mapping works
            b = shmbroker.attach(name, writable=True)
            conn = _testing.connection()
            assert conn is not parent_conn and _testing.connection_pid(conn) == os.getpid()
            b[0] = 6
            os.write(w, b"ok")
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    msg = os.read(r, 16)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert msg == b"ok" and os.waitstatus_to_exitcode(status) == 0
    # The parent's connection was not disturbed by the child.
    assert _testing.connection() is parent_conn
    assert a[0] == 6 and a[1] == 5
    assert sbtest.eventually(lambda: shmbroker.stat(name).attachments == 1)


@pytest.mark.parametrize("method", METHODS)
def test_pool_reports_an_array_that_cannot_be_attached(names, method):
    # CPython's pool worker drops a task whose unpickling raises (any exception: an OSError makes
    # it exit quietly, others kill it) and map() then never returns. The failure must come from
    # the task instead, and reach the parent.
    name = names()
    a = shmbroker.create(name, 1000, "f8")
    shmbroker.unlink(name)  # `a` stays valid here; a worker can no longer attach it by name
    with mp.get_context(method).Pool(2) as pool:
        result = pool.map_async(sbtest.sum_view, [a[10:20]])
        with pytest.raises(shmbroker.NotFoundError, match=re.escape(name)):
            result.get(TIMEOUT)
        # The pool still works.
        assert pool.map_async(abs, [-1, -2]).get(TIMEOUT) == [1, 2]


def test_unattachable_array_raises_on_first_use(names):
    name = names()
    a = shmbroker.create(name, 1000, "f8")
    data = pickle.dumps(a)
    del a
    shmbroker.unlink(name)
    x = pickle.loads(data)  # does not raise: a Pool worker would lose the task
    assert isinstance(x, shmbroker.UnavailableArray)
    assert name in repr(x)
    for use in (lambda: x.sum(), lambda: x[0], lambda: len(x), lambda: np.asarray(x),
                lambda: x + 1, lambda: x.shape):
        with pytest.raises(shmbroker.NotFoundError, match=re.escape(name)):
            use()
    assert isinstance(x.error, shmbroker.NotFoundError)
