"""C++ <-> Python: the same bytes, the same values, read by either side (the C++ side is
tests/interop/interop.cc at the top of the repository, built as shmbroker_interop)."""

import os
import subprocess

import numpy as np
import pytest

import shmbroker
from conftest import INTEROP
from sbtest import interop_pattern

CASES = [
    ("|b1", (10,), "C"),
    ("|u1", (300,), "C"),
    ("|i1", (4, 5), "C"),
    ("<i2", (7,), "C"),
    ("<u2", (7,), "C"),
    ("<i4", (3, 4, 5), "C"),
    ("<u4", (10,), "C"),
    ("<i8", (6, 5), "F"),
    ("<u8", (9,), "C"),
    ("<f4", (2, 3, 4), "F"),
    ("<f8", (1000,), "C"),
    ("<f8", (5, 6, 7), "F"),
    ("<c8", (4, 4), "C"),
    ("<c16", (3, 2), "F"),
    (">i4", (11,), "C"),
    (">f8", (3, 3), "C"),
    (">c16", (5,), "C"),
]


@pytest.fixture(scope="module")
def interop():
    if not os.access(INTEROP, os.X_OK):
        pytest.fail(f"no {INTEROP}: build it (ninja -C build shmbroker_interop)", pytrace=False)
    return INTEROP


def run(interop, *args):
    return subprocess.run([interop, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("dtype,shape,order", CASES, ids=lambda x: str(x))
def test_cpp_writes_python_reads(interop, names, dtype, shape, order):
    name = names()
    p = run(interop, "write", name, dtype, order, *map(str, shape))
    assert p.returncode == 0, p.stderr
    a = shmbroker.attach(name)
    assert a.dtype.str == dtype and a.shape == shape
    assert a.flags["F_CONTIGUOUS" if order == "F" else "C_CONTIGUOUS"]
    assert shmbroker.stat(name).attrs == {"writer": "c++"}
    want = interop_pattern(dtype, a.size)
    # The pattern runs in memory order; the stored order says how that maps to indices.
    assert a.tobytes(order="A") == want.tobytes(), "bit for bit"
    np.testing.assert_array_equal(a, want.reshape(shape, order=order))


@pytest.mark.parametrize("dtype,shape,order", CASES, ids=lambda x: str(x))
def test_python_writes_cpp_reads(interop, names, dtype, shape, order):
    name = names()
    a = shmbroker.create(name, shape, dtype, order=order)
    a[...] = interop_pattern(dtype, a.size).reshape(shape, order=order)
    p = run(interop, "check", name)
    assert p.returncode == 0, p.stderr + p.stdout
    assert "all as expected" in p.stdout and f"order {order}" in p.stdout
    # One flipped byte is caught (the check is not vacuous).
    raw = a.reshape(-1, order="A").view(np.uint8)
    raw[-1] ^= 0xFF
    p = run(interop, "check", name)
    assert p.returncode == 1 and f"element {a.size - 1} differs" in p.stderr
