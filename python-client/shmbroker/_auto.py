"""auto_share(): plain NumPy arrays that multiprocessing pickles travel through shared memory.

How it hooks in. multiprocessing pickles everything it sends (Process arguments under spawn and
forkserver, Pool tasks and results, Queue, Pipe, ProcessPoolExecutor) with
multiprocessing.reduction.ForkingPickler, whose reducers are looked up by exact type. While
auto_share is on, the reducer for ``numpy.ndarray`` copies an array of at least ``min_bytes``
into a new refcount segment and pickles a reference to it (with a ticket, so the segment lives
until the receiver attaches: see Client._lend); anything else is reduced as NumPy does.
Subclasses (SharedArray, np.memmap, ...) never reach it.

How children inherit it. A forked child inherits this module's state. A spawn or forkserver child
starts from scratch, and the results it sends back must be shared too, so it has to switch
auto_share on before its target runs. The child unpickles its Process object first; each Process
copies ``current_process()._config`` when it is made, and that dict travels with it. So while
auto_share is on, ``_config`` holds a small token whose unpickling switches it on in the child
(and stays in the child's own ``_config``, for grandchildren). Why not a reducer registered for
the Process classes: the lookup is by exact type, and it would miss user subclasses of Process
and loky's LokyProcess, which all inherit ``_config``. ``_config`` is private, but it has been
there since Python 3.4 and it is what multiprocessing itself uses to pass the authkey on.
"""

import operator
import os
import threading
import warnings
from multiprocessing import process as _mp_process
from multiprocessing.reduction import ForkingPickler

import numpy as np

from . import _connection
from .array import _dtype_token, _rebuild
from .client import _check_dtype, _clients, default_client
from .errors import Error, InvalidArgumentError

__all__ = ["AutoShare", "auto_share"]

_CONFIG_KEY = "shmbroker.auto_share"

# Handles in force, oldest first; the newest decides. _min_bytes is its setting (None: off),
# read without the lock by the reducer.
_stack = []
_min_bytes = None
_lock = threading.Lock()
# Reducer for np.ndarray registered by someone else before us: restored when we go off, and
# used meanwhile for the arrays we do not share.
_previous = None
_warned = set()

# The releaser: a thread that sends releases as soon as arrays are collected, instead of with
# the next request. A Pool worker that is done with a 100 MB argument may make no request for a
# long time; the segment would stay until then. Started in a process once auto_share is on in
# it or an auto-shared array arrives; the garbage collector's callbacks wake it through a pipe.
_releaser_pid = None
_pipe = (-1, -1)
_woken = False
_releaser_lock = threading.Lock()


class AutoShare:
    """What :func:`auto_share` returns: on from the call until :meth:`stop` (or the end of
    the ``with`` block)."""

    __slots__ = ("min_bytes",)

    def __init__(self, min_bytes):
        self.min_bytes = min_bytes  # None: auto_share(False), off while this is in force

    @property
    def active(self):
        """Whether this call is still in force (not stopped)."""
        return any(h is self for h in _stack)

    def stop(self):
        """Ends this call: the setting in force before it (or a later call still in force)
        applies again. Stopping twice is no error."""
        with _lock:
            for i, h in enumerate(_stack):
                if h is self:
                    del _stack[i]
                    break
            _apply()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        what = "off" if self.min_bytes is None else f"min_bytes={self.min_bytes}"
        state = "active" if self.active else "stopped"
        return f"<shmbroker.AutoShare {what}, {state}>"


def auto_share(min_bytes=1 << 20):
    """Moves every plain NumPy array of at least ``min_bytes`` bytes that multiprocessing
    pickles into shared memory, so it travels by reference: ``Pool`` and ``Process``
    arguments and results, ``Queue``, ``Pipe``, ``ProcessPoolExecutor``, with fork, spawn or
    forkserver. Smaller arrays, subclasses, object and structured dtypes pickle as usual.

    On from this call. As a context manager, off again when the block ends; otherwise until
    ``.stop()`` on the returned :class:`AutoShare`. ``auto_share(False)`` turns it off (for the
    block, or until stopped); the newest call still in force decides. Processes started while
    it is on keep it on for their whole life, so their results are shared too.

    Each pickling copies the array once into a new refcount segment (the receiver gets its own
    writable copy, as with pickle); the segment is freed when the receiver's last array on it
    goes, or after the daemon's ``--in-flight-timeout`` if it is never unpickled. When no
    daemon answers, arrays pickle as usual and a RuntimeWarning says so once per process."""
    if min_bytes is False:
        handle = AutoShare(None)
    else:
        if isinstance(min_bytes, bool):
            raise TypeError("min_bytes is a number of bytes (or False: off), not True")
        try:
            min_bytes = int(operator.index(min_bytes))
        except TypeError:
            raise TypeError(f"min_bytes is an int number of bytes, not {min_bytes!r}") from None
        if min_bytes < 0:
            raise InvalidArgumentError(f"min_bytes {min_bytes} is negative")
        handle = AutoShare(min_bytes)
    with _lock:
        _stack.append(handle)
        _apply()
    return handle


def _apply():
    """Brings the reducer and the token for children in line with the newest handle (with
    _lock held)."""
    global _min_bytes, _previous
    setting = _stack[-1].min_bytes if _stack else None
    _min_bytes = setting
    reducers = ForkingPickler._extra_reducers
    config = _mp_process.current_process()._config
    if setting is not None:
        current = reducers.get(np.ndarray)
        if current is not _reduce_ndarray:
            _previous = current
            ForkingPickler.register(np.ndarray, _reduce_ndarray)
        config[_CONFIG_KEY] = _Inherit(setting)
        _start_releaser()
    else:
        if reducers.get(np.ndarray) is _reduce_ndarray:
            if _previous is None:
                del reducers[np.ndarray]
            else:
                reducers[np.ndarray] = _previous
            _previous = None
        config.pop(_CONFIG_KEY, None)


class _Inherit:
    """The token in ``_config``: unpickled in a spawn or forkserver child, it switches
    auto_share on there."""

    __slots__ = ("min_bytes",)

    def __init__(self, min_bytes):
        self.min_bytes = min_bytes

    def __reduce__(self):
        return (_inherit, (self.min_bytes,))


def _inherit(min_bytes):
    # Runs while the child unpickles its Process object, before the target. Never raises: a
    # failure here would kill the worker before it could report anything.
    try:
        with _lock:
            if not _stack:
                _stack.append(AutoShare(min_bytes))
                _apply()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"shmbroker.auto_share could not be switched on in this process: {e}",
                      RuntimeWarning, stacklevel=2)
    return _Inherit(min_bytes)


def _reduce_ndarray(arr):
    limit = _min_bytes
    if limit is not None and arr.nbytes >= limit and arr.size:
        reduced = _move(arr)
        if reduced is not None:
            return reduced
    if _previous is not None:
        return _previous(arr)
    # What ndarray.__reduce_ex__ gives up to protocol 4, and valid at any protocol (a reducer
    # here cannot know the pickler's).
    return arr.__reduce__()


def _shareable(dtype):
    if dtype.metadata is not None:  # a segment stores no dtype metadata
        return False
    try:
        _check_dtype(dtype)
    except (InvalidArgumentError, TypeError):
        return False
    return True


def _move(arr):
    """Copies ``arr`` into a new refcount segment and returns the reduction of a reference to
    it, holding a ticket; None when it cannot (the caller pickles the data)."""
    if not _shareable(arr.dtype):
        return None
    client = default_client()
    try:
        shared = client.share(arr, lifetime="refcount")
        ref = shared._shm
        # Pickled by multiprocessing, delivered once: a small one may be read at once.
        ticket, fast = client._lend(ref.anchor(), True)
        if not ticket:
            # No ticket, nothing would hold the segment once our array goes.
            return None
        # Writable in the receiver, as an unpickled copy is.
        args = (ref.name, True, 0, shared.shape, shared.strides, _dtype_token(shared.dtype),
                ref.socket, ticket)
        if fast is not None:
            args += (fast + (True,),)
        del shared, ref
        # This process is done with the segment: tell the daemon now.
        client._release_now()
        return (_receive, args)
    except InvalidArgumentError:
        return None  # something about this array the daemon refuses: nothing to warn about
    except Error as e:
        _warn_once(e)
        return None


def _receive(*args):
    # Unpickling an auto-shared array: a receiver may never make another request (a Pool worker
    # waiting for its next task), so its releases go out by themselves.
    _start_releaser()
    return _rebuild(*args)


def _start_releaser():
    global _releaser_pid, _pipe
    if _releaser_pid == os.getpid():
        return
    with _releaser_lock:
        if _releaser_pid == os.getpid():
            return
        rfd, wfd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(rfd, True)
        t = threading.Thread(target=_release_loop, args=(rfd,), name="shmbroker-releaser",
                             daemon=True)
        t.start()
        _pipe = (rfd, wfd)
        _releaser_pid = os.getpid()
        if _wake not in _connection.release_hooks:
            _connection.release_hooks.append(_wake)


def _wake():
    # From garbage-collector callbacks: one write, no lock; nothing when a wake is pending.
    global _woken
    if not _woken and _releaser_pid == os.getpid():
        _woken = True
        try:
            os.write(_pipe[1], b"\0")
        except OSError:
            pass


def _release_loop(rfd):
    global _woken
    while True:
        try:
            if not os.read(rfd, 4096):
                return
        except InterruptedError:
            continue
        except OSError:
            return
        _woken = False  # before sending: a release queued from now on wakes us again
        _release_all()


def _release_all():
    # A function of its own: its list of clients must not outlive the pass (kept in the loop's
    # frame while it waits, it kept every client alive, and their connections open).
    try:
        clients = list(_clients)
    except RuntimeError:  # the set changed meanwhile
        clients = []
        _wake()
    for c in clients:
        conn = c._conn
        if conn is not None and conn.pending:
            try:
                c._release_now()
            except Exception:  # noqa: BLE001  (a lost connection: the daemon lets go anyway)
                pass


def _warn_once(e):
    kind = type(e).__name__
    if kind in _warned:
        return
    _warned.add(kind)
    warnings.warn(
        f"shmbroker.auto_share: cannot move arrays into shared memory ({kind}: {e}); "
        "pickling them as usual",
        RuntimeWarning,
        stacklevel=2,
    )


def _after_fork_in_child():
    # The parent's releaser thread is not in the child; one starts when needed.
    global _lock, _releaser_lock, _releaser_pid, _pipe, _woken
    _lock = threading.Lock()
    _releaser_lock = threading.Lock()
    for fd in _pipe:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    _releaser_pid, _pipe, _woken = None, (-1, -1), False


os.register_at_fork(after_in_child=_after_fork_in_child)
