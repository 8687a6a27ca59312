"""NumPy arrays backed by shmbroker segments, and how they pickle.

Ownership chain, from the user's array down to the memory:

    SharedArray (and every view of it)  --base-->  Anchor  --base-->  memoryview of the mapping

One Anchor per attachment: when the last array on it is collected, the attachment is handed
back to the daemon (queued; see _connection.py). The memoryview belongs to the mapped region
(shared by every attachment of the same region in this connection) and munmap() runs when it is
collected (see _mem.py).

This module is the bottom of the package: it knows NumPy, not the daemon. Unpickling needs a
client, so client.py registers the function that attaches (set_unpickler).
"""

import numpy as np

__all__ = ["SharedArray", "UnavailableArray", "segment_name"]


class Anchor(np.ndarray):
    """The bytes of one attachment, as uint8. Internal to the package."""

    # The connection, kept open while the attachment is in use (as the C++ Segment does), the
    # attachment's id on it, and for a block of a shared region (region id // 2, offset, length).
    __slots__ = ("_conn", "_aid", "_fast")

    def __reduce_ex__(self, protocol):
        return np.asarray(self).__reduce_ex__(protocol)


class SegmentRef:
    """What a SharedArray knows about the segment its memory belongs to. Internal to the
    package."""

    __slots__ = ("name", "socket", "anchor", "address", "nbytes", "client", "refcount")

    def __init__(self, name, socket, anchor, address, nbytes, client=None, refcount=False):
        self.name = name
        self.socket = socket  # None: the default socket path resolution finds the daemon.
        self.anchor = anchor  # weakref: copies of an array must not keep the mapping alive
        self.address = address
        self.nbytes = nbytes
        self.client = client  # weakref to the Client that mapped it
        self.refcount = refcount  # a refcount segment: pickling takes a ticket

    def locate(self, arr):
        """Byte offset of ``arr``'s data in the segment, or None when ``arr`` does not use the
        segment's memory (a copy, an array computed from it)."""
        anchor = self.anchor()
        if anchor is None:
            return None
        a = arr
        # NumPy collapses view chains, so this is a step or two.
        while a is not anchor:
            a = a.base
            if not isinstance(a, np.ndarray):
                return None
        if arr.size == 0:
            return 0
        offset = arr.__array_interface__["data"][0] - self.address
        if not 0 <= offset <= self.nbytes:
            return None
        return offset


def _dtype_token(dtype):
    # The short type string when it says everything, else the dtype object itself.
    s = dtype.str
    try:
        if np.dtype(s) == dtype and dtype.fields is None and dtype.metadata is None:
            return s
    except TypeError:
        pass
    return dtype


class SharedArray(np.ndarray):
    """A NumPy array in shared memory. Views, slices, reshapes and transposes of it are
    SharedArrays too, and all of them keep the mapping alive.

    Pickling one (plain ``pickle``, ``multiprocessing`` with fork, spawn or forkserver) sends only
    a reference to the segment: the receiving process attaches to the same bytes, with the same
    offset, shape, strides, dtype and writeability. Arrays computed from it (``a + 1``,
    ``a.copy()``) are ordinary arrays and pickle their data.
    """

    __slots__ = ("_shm",)

    def __array_finalize__(self, obj):
        self._shm = getattr(obj, "_shm", None)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        # Compute on plain views so results are plain ndarrays, not tied to any segment;
        # arrays passed as out= (in-place operations) are handed back as they are.
        args = [x.view(np.ndarray) if isinstance(x, SharedArray) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(
                o.view(np.ndarray) if isinstance(o, SharedArray) else o for o in out
            )
        result = getattr(ufunc, method)(*args, **kwargs)
        if out is None or method == "at":
            return result
        if isinstance(result, tuple):
            return tuple(o if o is not None else r for o, r in zip(out, result))
        return out[0] if out[0] is not None else result

    # Copies own their memory: they are plain arrays, tied to no segment.
    def copy(self, order="C"):
        return self.view(np.ndarray).copy(order)

    def __copy__(self):
        return self.view(np.ndarray).copy("K")

    def __deepcopy__(self, memo):
        return self.view(np.ndarray).copy("K")

    def flatten(self, order="C"):
        return self.view(np.ndarray).flatten(order)

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        plain = self.view(np.ndarray)
        out = plain.astype(dtype, order=order, casting=casting, copy=copy)
        return self if out is plain else out  # no copy was needed: still the segment

    @property
    def shm_name(self):
        """The name of the segment this array's memory belongs to, or None for an array that
        does not use a segment's memory (e.g. a copy)."""
        ref = self._shm
        if ref is None or ref.locate(self) is None:
            return None
        return ref.name

    def __reduce_ex__(self, protocol):
        return self._reduce(protocol, False)

    def _reduce(self, protocol, transport):
        # `transport`: pickled by multiprocessing (ForkingPickler), which delivers each pickle
        # once, to one process: only then may the receiver read the bytes before its attach is
        # confirmed (bytes pickled by plain pickle can be unpickled any number of times).
        ref = self._shm
        if ref is not None:
            offset = ref.locate(self)
            if offset is not None:
                args = (
                    ref.name,
                    bool(self.flags.writeable),
                    offset,
                    self.shape,
                    self.strides,
                    _dtype_token(self.dtype),
                )
                ticket, fast = 0, None
                if ref.refcount or transport:
                    # The receiver may attach after every array here is gone: the daemon holds
                    # the segment for the array in flight until it does.
                    client = ref.client() if ref.client is not None else None
                    anchor = ref.anchor()
                    if client is not None and anchor is not None:
                        ticket, fast = client._lend(anchor, transport)
                if fast is not None:
                    args += (ref.socket, ticket, fast + (ref.refcount,))
                elif ticket:
                    args += (ref.socket, ticket)
                elif ref.socket is not None:
                    args += (ref.socket,)
                return (_rebuild, args)
        return np.asarray(self).__reduce_ex__(protocol)

    def __reduce__(self):
        return self.__reduce_ex__(2)

    def seal(self):
        """Seals this array's segment (see :meth:`Client.seal`) and makes this array read-only.
        Returns the segment's :class:`SegmentInfo`."""
        ref = self._shm
        client = ref.client() if ref is not None and ref.client is not None else None
        if client is None or ref.locate(self) is None:
            raise ValueError("this array's memory is not a segment this process mapped")
        info = client.seal(ref.name)
        self.flags.writeable = False
        return info


class UnavailableArray:
    """What unpickling gives for a shared array that could not be attached (its segment was
    unlinked or purged, the daemon restarted, permission was refused, ...). Any use of it raises
    that error, kept in ``error``.

    Why not raise while unpickling: CPython's ``multiprocessing.Pool`` loses a task whose
    arguments fail to unpickle in the worker, and ``map()`` then waits forever. Failing at first
    use raises inside the task, and the pool hands the error to the caller.
    """

    __slots__ = ("error", "name")

    def __init__(self, name, error):
        self.name = name
        self.error = error

    def _fail(self, *args, **kwargs):
        raise self.error

    def __getattr__(self, attr):
        raise self.error

    def __repr__(self):
        return f"<shmbroker.UnavailableArray {self.name!r}: {type(self.error).__name__}: {self.error}>"

    def __reduce__(self):
        return (UnavailableArray, (self.name, self.error))

    # Special methods are looked up on the type, not through __getattr__.
    __array__ = __len__ = __iter__ = __getitem__ = __setitem__ = __contains__ = _fail
    __bool__ = __index__ = __int__ = __float__ = __complex__ = _fail
    __array_ufunc__ = __array_function__ = _fail
    for _op in ("add", "sub", "mul", "matmul", "truediv", "floordiv", "mod", "pow", "and", "or",
                "xor", "lshift", "rshift", "lt", "le", "gt", "ge"):
        for _form in ("__{}__", "__r{}__", "__i{}__"):
            locals()[_form.format(_op)] = _fail
    del _op, _form
    __neg__ = __pos__ = __abs__ = __invert__ = _fail


def segment_name(arr):
    """The name of the segment whose memory ``arr`` uses, or None."""
    return arr.shm_name if isinstance(arr, SharedArray) else None


# Set by client.py: (name, writable, offset, shape, strides, dtype, socket, ticket, fast) -> array.
_unpickler = None


def set_unpickler(fn):
    global _unpickler
    _unpickler = fn


def _rebuild(name, writable, offset, shape, strides, dtype, socket=None, ticket=0, fast=None):
    # Unpickling (this function is what pickles name): attach in this process.
    return _unpickler(
        name, writable, offset, tuple(shape), tuple(strides), np.dtype(dtype), socket, ticket,
        fast,
    )


def _reduce_for_transport(arr):
    return arr._reduce(2, True)
