"""Every NumPy dtype kind round-trips through a segment, 0-d to 5-d, C and F order."""

import pickle

import numpy as np
import pytest

import shmbroker

DTYPES = [
    "|b1",
    "|i1", "<i2", "<i4", "<i8",
    "|u1", "<u2", "<u4", "<u8",
    "<f2", "<f4", "<f8", np.dtype(np.longdouble).str,
    "<c8", "<c16",
    "<M8[ns]", "<M8[D]", "<M8[s]", "<m8[us]",
    "|S7", "<U5", "|V16",
    ">i4", ">u2", ">f8", ">c16", ">M8[ms]", ">U3",
]
SHAPES = [(), (7,), (3, 4), (2, 3, 4), (2, 1, 3, 2), (2, 3, 1, 2, 3)]


def sample(dtype, shape, seed):
    """Deterministic, non-trivial values of any dtype."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=n * dt.itemsize, dtype=np.uint8)
    if dt.kind in "fc":
        vals = rng.standard_normal(n * (2 if dt.kind == "c" else 1)) * 1000
        if dt.kind == "c":
            vals = vals[0::2] + 1j * vals[1::2]
        return vals.astype(dt).reshape(shape)
    if dt.kind == "b":
        return (raw[:n] & 1).astype(bool).reshape(shape)
    if dt.kind in "Mm":
        return rng.integers(-(10**12), 10**12, size=n).astype(dt.newbyteorder("=")).astype(
            dt).reshape(shape)
    if dt.kind == "S":
        return np.array([bytes(raw[i * 7:(i + 1) * 7] % 90 + 33) for i in range(n)],
                        dtype=dt).reshape(shape)
    if dt.kind == "U":
        letters = "aäbßc€d😀"
        return np.array(["".join(letters[(i + j) % len(letters)] for j in range(i % 6))
                         for i in range(n)], dtype=dt).reshape(shape)
    return raw.view(dt).reshape(shape)  # integers and void: any bytes are valid


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtype_roundtrip(names, dtype, order):
    for ndim, shape in enumerate(SHAPES):
        name = names(str(ndim))
        want = sample(dtype, shape, seed=ndim)
        a = shmbroker.create(name, shape, dtype, order=order)
        a[...] = want
        info = shmbroker.stat(name)
        assert info.dtype.str == np.dtype(dtype).str, "the exact type string is stored"
        assert info.shape == shape and info.order == order
        b = shmbroker.attach(name)
        assert b.dtype == np.dtype(dtype) and b.dtype.str == np.dtype(dtype).str
        assert b.shape == shape
        if ndim > 1:
            assert b.flags["F_CONTIGUOUS" if order == "F" else "C_CONTIGUOUS"]
            assert not b.flags["C_CONTIGUOUS" if order == "F" else "F_CONTIGUOUS"]
        assert b.tobytes(order="A") == want.tobytes(order=order)
        np.testing.assert_array_equal(b, want)
        # And through pickle, in this process.
        c = pickle.loads(pickle.dumps(b))
        assert c.dtype.str == b.dtype.str and c.strides == b.strides
        np.testing.assert_array_equal(c, want)
