"""Pickling sends a reference: views of every kind come back on the same bytes."""

import pickle

import numpy as np
import pytest

import shmbroker


def roundtrip(x, protocol=pickle.HIGHEST_PROTOCOL):
    data = pickle.dumps(x, protocol=protocol)
    return pickle.loads(data), len(data)


def test_100mb_array_pickles_under_1kib(names):
    a = shmbroker.create(names(), (100 * 1024 * 1024 // 8,), "f8")
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        b, size = roundtrip(a, protocol)
        assert size < 1024, f"protocol {protocol}: {size} bytes"
        assert isinstance(b, shmbroker.SharedArray) and b.shape == a.shape
    a[-1] = 42.0
    assert b[-1] == 42.0, "unpickled onto the same memory"
    b[0] = 7.0
    assert a[0] == 7.0


VIEWS = {
    "whole": lambda a: a,
    "slice": lambda a: a[2:5],
    "step": lambda a: a[1::3, ::2],
    "negative": lambda a: a[::-1, ::-2],
    "reshape": lambda a: a.reshape(4, 3, 6)[1:],
    "transpose": lambda a: a.T,
    "swap": lambda a: a.transpose(1, 0)[3:, 1:4],
    "row": lambda a: a[5],
    "element": lambda a: a[3, 4, ...],
    "empty": lambda a: a[4:4],
    "dtype-view": lambda a: a.view("<i8")[:, 1:],
    "newaxis": lambda a: a[None, 2:4, :, None],
    "diagonal": lambda a: a.diagonal(),
}


@pytest.mark.parametrize("kind", list(VIEWS))
def test_views_unpickle_to_the_same_memory(names, kind):
    a = shmbroker.create(names(), (12, 6), "f8")
    a[...] = np.arange(72).reshape(12, 6)
    v = VIEWS[kind](a)
    if kind == "diagonal":
        v = v.copy() if v.flags.owndata else v  # diagonal() is a read-only view
    b, size = roundtrip(v)
    assert size < 1024
    assert isinstance(b, shmbroker.SharedArray)
    assert b.shape == v.shape and b.strides == v.strides and b.dtype == v.dtype
    assert b.flags.writeable == v.flags.writeable
    assert b.shm_name == a.shm_name
    np.testing.assert_array_equal(b, v)
    if b.size and b.flags.writeable:
        b.flat[0] = -1
        assert v.flat[0] == -1, "a write through the copy shows through the original"
        v.flat[-1] = -2
        assert b.flat[-1] == -2


def test_f_order_views(names):
    a = shmbroker.create(names(), (5, 7), "<i4", order="F")
    a[...] = np.arange(35).reshape(5, 7)
    for v in (a, a[1:4, 2:], a.T, a[:, 3]):
        b, _ = roundtrip(v)
        assert b.strides == v.strides
        np.testing.assert_array_equal(b, v)
        b[...] = b + 100
        np.testing.assert_array_equal(v, b)


def test_computed_arrays_pickle_as_data(names):
    a = shmbroker.create(names(), 1000, "f8")
    a[:] = 1.0
    for computed in (a + 1, a * a, np.sqrt(a), a.copy(), a[[1, 2, 3]], a.astype(np.float32),
                     np.sum(a.reshape(10, 100), axis=0), a[a > 0]):
        assert not isinstance(computed, shmbroker.SharedArray) or computed.shm_name is None
        data = pickle.dumps(computed)
        assert len(data) >= computed.nbytes, "the data itself travels"
        back = pickle.loads(data)
        assert type(back) is np.ndarray
        np.testing.assert_array_equal(back, computed)
    assert type(a + 1) is np.ndarray, "ufunc results are plain arrays"
    # Copies are plain arrays too (the README says so), however they are made.
    import copy

    for c in (a.copy(), a.copy(order="F"), copy.copy(a), copy.deepcopy(a), a.astype("f4"),
              a.reshape(10, 100).T.flatten(), np.copy(a)):
        assert type(c) is np.ndarray, type(c)
        assert not np.shares_memory(c, a)
    assert type(a.astype("f8", copy=False)) is shmbroker.SharedArray, "no copy: the segment"
    # In-place operations stay on the segment.
    a += 1
    assert isinstance(a, shmbroker.SharedArray) and a.shm_name is not None
    np.add(a, 1, out=a)
    assert shmbroker.attach(a.shm_name)[0] == 3.0


def test_each_unpickle_is_an_attachment(names):
    name = names()
    a = shmbroker.create(name, 10, "u1")
    copies = [pickle.loads(pickle.dumps(a[i:])) for i in range(5)]
    assert shmbroker.stat(name).attachments == 6
    del copies
    assert shmbroker.stat(name).attachments == 1


def test_unpickle_after_unlink_fails_at_first_use(names):
    # Not while unpickling: see test_multiprocessing.py for why (multiprocessing.Pool).
    name = names()
    a = shmbroker.create(name, 10, "u1")
    data = pickle.dumps(a)
    shmbroker.unlink(name)
    b = pickle.loads(data)
    with pytest.raises(shmbroker.NotFoundError):
        b.sum()


def test_explicit_client_pickles_its_socket(names, daemon):
    with shmbroker.connect(daemon.socket) as c:
        a = c.create(names(), 4, "f8")
        a[:] = 2
        data = pickle.dumps(a[1:])
        assert daemon.socket.encode() in data and len(data) < 1024
        assert pickle.loads(data).sum() == 6
