"""The Client API: one connection to shmbrokerd per Client, the per-process default client
used by the module-level functions (and its fresh start in a forked child), and the entry point
that turns a pickled array back into an attached one.

The connection itself (socket, packets, release queue, region cache) is _connection.py; the
result types are _types.py; the arrays are array.py.
"""

import datetime
import itertools
import math
import operator
import os
import secrets
import sys
import threading
import time
import weakref
from multiprocessing.reduction import ForkingPickler

import numpy as np

from ._connection import (
    _SPARES,
    Connection,
    connections,
    create_tail,
    encode_attach,
    encode_create_named,
    encode_unlink,
    resolve_socket_path,
    resolve_trusted_uid,
    time_namespace,
    uid_of,
)
from ._types import (
    LIFETIMES,
    DaemonLimits,
    DaemonStats,
    Holder,
    MapInfo,
    PurgeResult,
    SegmentInfo,
    ServerInfo,
    info_from_wire,
    purge_from_wire,
    stats_from_wire,
)
from ._wire import pb
from .array import (
    SegmentRef,
    SharedArray,
    UnavailableArray,
    _reduce_for_transport,
    set_unpickler,
)
from .errors import (
    Error,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)

__all__ = [
    "Client",
    "SegmentInfo",
    "DaemonStats",
    "DaemonLimits",
    "Holder",
    "PurgeResult",
    "ServerInfo",
    "connect",
    "default_client",
    "resolve_socket_path",
    "scope",
]


# --- Argument checks ----------------------------------------------------------------------------


def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"segment names are str, not {type(name).__name__}")
    return name


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise InvalidArgumentError(f"dtype {dtype!r}: {e}") from None
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        raise InvalidArgumentError(
            f"dtype {dt} cannot be shared: only plain NumPy types (no objects, no structured "
            "or sub-array dtypes)"
        )
    if np.dtype(dt.str) != dt:
        raise InvalidArgumentError(f"dtype {dt} has no exact NumPy type string")
    return dt


def _check_shape(shape):
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(operator.index(d) for d in shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a sequence of ints, not {shape!r}") from None
    for d in shape:
        if d < 0:
            raise InvalidArgumentError(f"shape {shape} has a negative dimension")
        if d >> 64:
            raise InvalidArgumentError(f"shape {shape} has a dimension out of range")
    return shape


def _check_lifetime(lifetime):
    try:
        return LIFETIMES[lifetime]
    except (KeyError, TypeError):
        raise InvalidArgumentError(
            f"lifetime must be 'persistent', 'connection' or 'refcount', not {lifetime!r}"
        ) from None


_TEN_YEARS = 10 * 365 * 86400
_DAY = 86400


def _milliseconds(value, what, most):
    """Whole milliseconds (rounded up) of ``value`` seconds, in (0, most] seconds."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} is a number of seconds or a timedelta, not {value!r}")
    if not (value > 0 and value <= most):  # also refuses NaN
        raise InvalidArgumentError(
            f"{what} {value!r} is out of range: more than 0 and at most {most} seconds"
        )
    return max(1, math.ceil(value * 1000))


_names = itertools.count(1)


def _check_order(order):
    if order not in ("C", "F"):
        raise InvalidArgumentError(f"order must be 'C' or 'F', not {order!r}")
    return order


# --- Client -------------------------------------------------------------------------------------

_clients = weakref.WeakSet()


def _program_name():
    argv0 = sys.argv[0] if getattr(sys, "argv", None) else ""
    return "python:" + (os.path.basename(argv0) or "python")



class Client:
    """A connection to shmbrokerd.

    Thread-safe (requests are serialized on one socket). In a forked child, or after the
    connection was lost, it connects again by itself on the next call: a child never uses its
    parent's socket. Arrays it returned stay valid whatever happens to the client.

    ``socket``: the daemon's socket path (default: :func:`resolve_socket_path`).
    ``prefault``: fill page tables when mapping (much faster first touch of large arrays);
    the default of ``create`` and ``attach``, which can also choose per call.
    ``trusted_uid``: a daemon is trusted when it runs as root or as this user, or when only root
    can have put its socket where it is; this (a uid or user name) also trusts a daemon run by
    that user, for deliberate cross-user setups. Default: $SHMBROKER_TRUST_UID if set.
    ``ahead``: make small refcount and connection arrays with generated names ahead, so that
    such creates wait on no round trip (see :meth:`create`); off by default, because each kind
    then keeps one spare segment, named, listed and charged, until the client closes.
    """

    def __init__(
        self, socket=None, *, client_name=None, prefault=True, trusted_uid=None, ahead=False,
        _lazy=False,
    ):
        self._socket = os.fspath(socket) if socket else None
        self._trusted_uid = trusted_uid
        self._client_name = client_name
        self._prefault = prefault
        self._ahead = bool(ahead)
        self._spare_tails = {}  # kind of spare -> its create serialized without the name
        self._lent = set()  # kinds whose last array made ahead was pickled (see request_spare)
        self._last_ahead = None  # (kind, weakref to the anchor) of the last array made ahead
        # scope() makes clients whose segments are connection-lifetime by default.
        self._lifetime = "persistent"
        self._prefix = "auto/"
        # Re-entrant only so that a call made from a signal handler or finalizer during a call on
        # the same thread can be told (see _check_reentry) and refused, not deadlock.
        self._lock = threading.RLock()
        self._conn = None
        self._closed = False
        _clients.add(self)
        if not _lazy:
            self._check_reentry()
            with self._lock:
                self._connection()

    # -- plumbing --

    def _check_reentry(self):
        # Before taking the lock (a C lock taken by `with`, so that no exception can leave it
        # held): this thread holding it already means a signal handler or finalizer calls in
        # the middle of a call, which would interleave with it.
        if self._lock._is_owned():
            raise FailedPreconditionError(
                "a shmbroker call was made from a signal handler or finalizer while this thread "
                "was in a call on the same client; make it after that call returns, or from "
                "another client"
            )

    def _connection(self):
        # With self._lock held.
        conn = self._conn
        if conn is not None and conn.usable():
            return conn
        if self._closed:
            raise UnavailableError("this shmbroker client was closed")
        if conn is not None:
            conn.close()
            self._conn = None
        conn = Connection(
            resolve_socket_path(self._socket),
            self._client_name or _program_name(),
            resolve_trusted_uid(self._trusted_uid),
        )
        self._conn = conn
        return conn

    def _call(self, request, expect):
        self._check_reentry()
        with self._lock:
            return self._connection().call(request, expect)

    def _map(self, request, prefault, want=None):
        # `prefault`: the byte range to prefault; `want`: this call's choice (None: the
        # client's).
        if want is None:
            want = self._prefault
        self._check_reentry()
        with self._lock:
            conn = self._connection()
            return conn.map(request, prefault if want else None)

    def _array(self, mapped, shape, dtype, order="C", offset=0, strides=None):
        anchor, address, info, writable = mapped
        arr = np.ndarray.__new__(
            SharedArray, shape, dtype, buffer=anchor, offset=offset, strides=strides, order=order
        )
        arr._shm = SegmentRef(
            info.name, self._socket, weakref.ref(anchor), address, info.nbytes,
            weakref.ref(self), info.lifetime == "refcount",
        )
        return arr

    def _generate_name(self):
        # pid and counter make it unique here; the random part makes it unguessable, so nobody
        # can take the name first.
        return f"{self._prefix}{os.getpid()}-{next(_names)}-{secrets.token_hex(6)}"

    def _lend(self, anchor, transport=False):
        """A ticket for an array about to be pickled: the daemon holds its segment until the
        receiver attaches (or --in-flight-timeout). Sent pipelined, before the pickled bytes
        leave. (ticket, fast): ticket 0 when the array's connection is gone (the receiver then
        attaches by name); with `transport` (multiprocessing delivers the pickle once) and a
        block of a shared region, `fast` says where the bytes are, so that a receiver that maps
        the region can read them at once: (daemon instance, region, offset, length, the
        monotonic clock now, time namespace). Else None."""
        self._check_reentry()
        with self._lock:
            conn = self._conn
            if conn is None or conn is not getattr(anchor, "_conn", None) or not conn.usable():
                return 0, None
            ticket = secrets.randbits(64) or 1
            last = self._last_ahead
            if last is not None and last[1]() is anchor:
                self._lent.add(last[0])  # its kind's next spare waits for the next ticket
            conn.send_ticket(anchor._aid, ticket)
            where = getattr(anchor, "_fast", None) if transport else None
            if where is None or not conn.server.instance:
                return ticket, None
            return ticket, (conn.server.instance,) + where + (time.monotonic_ns(), time_namespace())

    def _release_now(self):
        """Sends the releases queued so far, pipelined (no round trip)."""
        self._check_reentry()
        with self._lock:
            conn = self._conn
            if conn is not None and conn.usable():
                conn.send_releases()

    @property
    def socket_path(self):
        """The path this client connects to."""
        conn = self._conn
        return conn.path if conn is not None else resolve_socket_path(self._socket)

    @property
    def server(self):
        """:class:`ServerInfo` from the handshake (connects if needed)."""
        self._check_reentry()
        with self._lock:
            return self._connection().server

    def close(self):
        """Closes the connection, after sending the releases still queued. Arrays stay valid;
        the daemon forgets this connection's attachments. Further calls raise
        UnavailableError."""
        self._check_reentry()
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.hang_up()
                self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def flush(self):
        """Tells the daemon now about attachments released since the last request (this is
        otherwise done with the next request), and reads the replies still due to requests sent
        without waiting (a fast attach that failed warns then)."""
        self._check_reentry()
        with self._lock:
            conn = self._conn
            if conn is not None and conn.usable():
                conn.call(None, None)

    # -- API --

    def create(self, name, shape, dtype=np.float64, *, order="C", mode=0o600, attrs=None,
               prefault=None, lifetime=None, ttl=None):
        """Creates segment ``name`` holding an array of ``shape`` and ``dtype`` and returns it
        mapped read-write (zero-filled). AlreadyExistsError if the name is taken,
        ResourceExhaustedError when the memory cannot be reserved.

        ``name`` None: a unique name is generated (``auto/<pid>-<n>-<random>``; see
        :func:`segment_name`).

        ``lifetime``: when the daemon unlinks it by itself. ``"persistent"`` (the default):
        never, until unlinked. ``"connection"``: when this client's connection closes (close(),
        exit, crash or SIGKILL). ``"refcount"``: when its last reference anywhere goes (every
        array on it in every process released; an array pickled to another process counts
        until it is unpickled there). ``ttl``: unlinked that many seconds after creation
        (a number or a timedelta), whatever the lifetime.

        ``prefault``: fill the page tables at once (arrays of 256 KiB and up), which pays when
        the whole array is written next; False leaves it to page faults (a sparse fill, or a
        huge array touched in parts). None: the client's default.

        With ``connect(ahead=True)``: a small array (a block of a shared region) with a generated
        name, lifetime ``"refcount"`` or ``"connection"`` and no ttl or attrs is followed,
        without waiting, by the create of the next one of the same shape, dtype, order and mode,
        which the next such call takes at once. One spare of each kind, four kinds at most,
        named, listed and charged as any segment until taken or the client closes (a refcount
        spare counts as this client's reference); given back before a create is refused for
        memory, or when a fifth kind pushes it out (a connection's spare is then unlinked too,
        since its release alone would keep it until the connection closes). Once an array of a
        kind has been pickled, the next spare's create of that kind waits to carry the next
        ticket: one packet to the daemon instead of two."""
        generated = name is None
        if not generated:
            name = _check_name(name)
        shape = _check_shape(shape)
        dt = _check_dtype(dtype)
        order = _check_order(order)
        if not isinstance(mode, int) or isinstance(mode, bool):
            raise TypeError("mode must be an int such as 0o600")
        if not 0 <= mode <= 0xFFFFFFFF:
            raise InvalidArgumentError(f"mode {mode:#o} is out of range")
        life = _check_lifetime(self._lifetime if lifetime is None else lifetime)
        ttl_ms = None if ttl is None else _milliseconds(ttl, "ttl", _TEN_YEARS)
        if attrs:
            attrs = dict(attrs)
            for k, v in attrs.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise TypeError("attrs must map str to str")
        key = None
        if self._ahead and generated and life != pb.PERSISTENT and ttl is None and not attrs:
            key = (shape, dt.str, order, mode, life)
            tail = self._spare_tails.get(key)
            if tail is None:
                if len(self._spare_tails) >= 4 * _SPARES:  # bounded, as the spares
                    self._spare_tails.clear()
                tail = self._spare_tails[key] = create_tail(dt.str, shape, order == "F", mode, life)
        else:
            tail = create_tail(dt.str, shape, order == "F", mode, life, ttl_ms, attrs)
        pf = (0, None) if (self._prefault if prefault is None else prefault) else None
        self._check_reentry()
        with self._lock:
            conn = self._connection()
            if key is not None and conn.held is not None and conn.held[0] == key:
                self._lent.discard(key)  # the last array of this kind was not pickled
            mapped = conn.take_spare(key) if key is not None else None
            if mapped is None:
                # A generated name is made only here: a spare taken has its own.
                req = encode_create_named(name or self._generate_name(), tail)
                try:
                    mapped = conn.map(req, pf)
                except ResourceExhaustedError:
                    if not conn.spares:
                        raise
                    # The spares' memory goes back with the retry (their releases ride on it),
                    # those still in flight once their replies are read.
                    conn.drop_spares()
                    if conn.unread:
                        conn._exchange([])
                    mapped = conn.map(req, pf)
            if key is not None and getattr(mapped[0], "_fast", None) is not None:
                spare = self._generate_name()
                conn.request_spare(
                    key,
                    encode_create_named(spare, tail),
                    spare if life == pb.CONNECTION else None,
                    key in self._lent,
                )
                self._last_ahead = (key, weakref.ref(mapped[0]))
        return self._array(mapped, shape, dt, order)

    def attach(self, name, *, writable=False, prefault=None, owner=None, wait=None,
               sealed=False):
        """Maps segment ``name`` and returns it as an array with its stored shape, dtype and
        order. NotFoundError (also a KeyError and FileNotFoundError) if there is no such
        segment.

        Read-only by default: the mapping itself is read-only, ``arr.flags.writeable`` is False
        and cannot be set, and a write fails with NumPy's "ValueError: assignment destination
        is read-only". To write, attach with ``attach(name, writable=True)`` (the segment's
        mode must grant you write access).

        ``prefault``: as for :meth:`create` (pays when the whole array is read next).

        ``owner`` (a user name or uid): fail with PermissionDeniedError unless the segment
        belongs to that user. Any user may create a name outside ``~USER/`` first; a consumer
        that knows who its producer is says so (or uses names under ``~producer/``).

        ``wait`` (seconds, at most a day): if there is no such segment yet, wait for it in the
        daemon (no polling) instead of failing; DeadlineExceededError (also a TimeoutError)
        when the time runs out. ``sealed=True``: only a sealed segment will do (see
        :meth:`seal`): with ``wait``, wait for the seal too; without, FailedPreconditionError
        if it is not sealed."""
        req = encode_attach(
            _check_name(name),
            writable,
            None if owner is None else uid_of(owner),
            None if wait is None else _milliseconds(wait, "wait", _DAY),
            sealed,
        )
        mapped = self._map(req, (0, None), prefault)
        info = mapped[2]
        return self._array(mapped, info.shape, info.dtype, info.order)

    def share(self, arr, name=None, *, mode=0o600, attrs=None, lifetime=None, ttl=None):
        """Copies ``arr`` into a new segment ``name`` (generated when None) and returns the
        shared copy (in Fortran order when ``arr`` is Fortran-contiguous, else C order).
        ``lifetime`` and ``ttl`` as for :meth:`create`."""
        arr = np.asanyarray(arr)
        order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
        out = self.create(name, arr.shape, arr.dtype, order=order, mode=mode, attrs=attrs,
                          lifetime=lifetime, ttl=ttl)
        try:
            np.copyto(out, arr, casting="no")
        except BaseException:
            self.unlink(out.shm_name)
            raise
        return out

    def seal(self, name):
        """Makes segment ``name`` immutable, enforced by the kernel: once this returns, nobody
        can change a byte of it (this process, a writable attachment, root reopening its
        descriptor). Returns its :class:`SegmentInfo`.

        This client's own writable mappings of it become read-only (writing through an array
        made before then kills the process with SIGSEGV, as the kernel enforces it; use
        :meth:`SharedArray.seal` to also mark the array read-only). FailedPreconditionError
        while other processes hold writable attachments (the message says how many) or
        inherited a writable mapping; PermissionDeniedError without write access. A small
        segment is moved to memory of its own: arrays attached before keep the old copy."""
        name = _check_name(name)
        req = pb.Request()
        req.seal.name = name
        self._check_reentry()
        with self._lock:
            conn = self._connection()
            conn.remap_readonly(name)
            return info_from_wire(conn.call(req, "stat").stat)

    def _view(self, name, writable, offset, shape, strides, dtype, ticket=0, fast=None):
        # Unpickling: attach and rebuild the exact view that was pickled (redeeming the
        # sender's ticket, if it took one).
        lo, hi = _extent(offset, shape, strides, dtype.itemsize)
        if fast is not None:
            arr = self._fast_view(name, writable, offset, shape, strides, dtype, ticket, fast, hi)
            if arr is not None:
                return arr
        req = encode_attach(name, writable, ticket=ticket)
        mapped = self._map(req, (lo, hi - lo))
        try:
            return self._array(mapped, shape, dtype, offset=offset, strides=strides)
        except (ValueError, TypeError) as e:
            raise FailedPreconditionError(
                f"segment '{name}' no longer holds the pickled view ({e})"
            ) from None

    def _fast_view(self, name, writable, offset, shape, strides, dtype, ticket, fast, hi):
        # See Connection.fast_attach; None: attach the usual way.
        if len(fast) != 7 or hi > fast[3]:
            return None
        self._check_reentry()
        with self._lock:
            conn = self._conn
            if conn is None or not conn.usable():
                return None  # A new connection maps no region yet.
            got = conn.fast_attach(name, writable, ticket, fast[:6])
        if got is None:
            return None
        anchor, address = got
        # The segment's dtype and shape did not travel (only the view's): _array needs neither.
        info = MapInfo(name, None, None, None, fast[3], "refcount" if fast[6] else "persistent")
        return self._array((anchor, address, info, writable), shape, dtype, offset=offset,
                           strides=strides)

    def unlink(self, name):
        """Removes the name at once (owner or root). Processes that have it mapped keep their
        memory until they let go of it."""
        self._call(encode_unlink(_check_name(name)), "empty")

    def stat(self, name):
        """:class:`SegmentInfo` of segment ``name``."""
        req = pb.Request()
        req.stat.name = _check_name(name)
        return info_from_wire(self._call(req, "stat").stat)

    def list(self, pattern=None, *, unlinked=False):
        """Segments whose names match the glob ``pattern`` (fnmatch; '*' also matches '/'),
        sorted by name; all of them when ``pattern`` is None.

        ``unlinked=True``: instead, the unlinked segments whose memory is still in use (attached
        or mapped somewhere), with ``holders`` saying who holds each, in the order of their ids
        (unlinked names need not be unique)."""
        out = []
        req = pb.Request()
        req.list.pattern = pattern or ""
        if unlinked:
            req.list.unlinked = True
            while True:
                r = self._call(req, "list").list
                out.extend(info_from_wire(s) for s in r.segments)
                # Ids only grow: a daemon that does not move on ends the loop.
                if not r.truncated or r.next_after_id <= req.list.start_after_id:
                    return out
                req.list.start_after_id = r.next_after_id
        while True:
            r = self._call(req, "list").list
            out.extend(info_from_wire(s) for s in r.segments)
            if not r.truncated:
                return out
            # A page stops when full or when the daemon's scan budget is spent; it moves on.
            after = r.next_after or (out[-1].name if out else "")
            if not after or after <= req.list.start_after:
                return out
            req.list.start_after = after

    def stats(self):
        """The daemon's counters (:class:`DaemonStats`)."""
        req = pb.Request()
        req.stats.SetInParent()
        return stats_from_wire(self._call(req, "stats").stats)

    def purge(self, patterns=(), *, orphans=False, older_than=None, owner=None,
              unattached=False, all=False, dry_run=False, owner_uid=None):
        """Unlinks every segment matching ALL the selectors given (in slices the daemon keeps to a
        few milliseconds, each atomic), as
        ``shmctl purge`` does. At least one selector is required (InvalidArgumentError).

        - ``patterns``: a glob or a list of globs; a name matching any counts ('*' also
          matches '/').
        - ``orphans``: no live attachments and the connection that created it has closed.
        - ``older_than``: created at least this long ago: "90s", "10m", "2h", "7d", "1w",
          a number of seconds, or a ``datetime.timedelta``.
        - ``owner``: owned by this user, a name ("alice") or a uid (``owner_uid`` is the
          same, for a uid).
        - ``unattached``: no live attachments.
        - ``all``: every segment.
        - ``dry_run``: report what would be removed; remove nothing.

        Non-root callers remove only their own segments; ``skipped_not_owner`` of the
        :class:`PurgeResult` counts the others that matched."""
        if isinstance(patterns, str):
            patterns = (patterns,)
        if owner is None:
            owner = owner_uid
        req = pb.Request()
        p = req.purge
        p.patterns.extend(patterns)
        p.orphans = orphans
        if older_than is not None:
            p.older_than_seconds = _duration_seconds(older_than)
        if owner is not None:
            p.owner_uid = uid_of(owner)
        p.unattached = unattached
        p.all = all
        p.dry_run = dry_run
        # Long purges come in slices, each atomic; the daemon says where to go on.
        replies = []
        while True:
            r = self._call(req, "purge").purge
            replies.append(r)
            if not r.next_after or r.next_after <= p.start_after:
                return purge_from_wire(replies)
            p.start_after = r.next_after


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration_seconds(value):
    """Whole seconds of "90s", "10m", "2h", "7d", "1w", a number or a timedelta (as shmctl
    reads --older-than: a string needs its unit)."""
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        text = value.strip()
        unit = _DURATION_UNITS.get(text[-1:])
        if unit is None or not text[:-1].isdigit():
            raise InvalidArgumentError(
                f"duration {value!r} is not like 90s, 10m, 2h, 7d or 1w (a unit is required)"
            )
        seconds = int(text[:-1]) * unit
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value
    else:
        raise TypeError(f"a duration is a str like '2h', a number or a timedelta, not {value!r}")
    if not 0 <= seconds < 1 << 40:
        raise InvalidArgumentError(f"duration {value!r} is out of range")
    return int(seconds)


def _extent(offset, shape, strides, itemsize):
    """[lo, hi) byte range a view touches."""
    if any(d == 0 for d in shape):
        return offset, offset
    lo = hi = offset
    for d, s in zip(shape, strides):
        if s < 0:
            lo += (d - 1) * s
        else:
            hi += (d - 1) * s
    return lo, hi + itemsize


# --- Per-process clients ------------------------------------------------------------------------

_default = None
_by_socket = {}
_default_lock = threading.Lock()


def scope(prefix=None, *, socket=None, client_name=None):
    """A new client whose segments are connection-lifetime: everything made through it
    (``create``, ``share``; names generated when None, under ``prefix``, default ``auto/``) is
    unlinked when it is closed, when the ``with`` block ends, or when the process dies however
    it dies. Arrays pickled to other processes while it is open attach normally; arrays keep
    their memory after it closes, only the names go::

        with shmbroker.scope() as s:
            a = s.share(data)             # auto/<pid>-<n>-<random>
            pool.map(work, [a[i::4] for i in range(4)])
        # every segment made in the block is unlinked here
    """
    if prefix is not None and not isinstance(prefix, str):
        raise TypeError(f"prefix is a str, not {prefix!r}")
    c = Client(socket, client_name=client_name)
    c._lifetime = "connection"
    if prefix is not None:
        c._prefix = prefix
    return c


def connect(socket=None, *, client_name=None, prefault=True, trusted_uid=None, ahead=False):
    """Connects to the daemon now and returns a new :class:`Client`. UnavailableError, naming
    the path tried, when no daemon answers or the one that does is not trusted (see
    :class:`Client`)."""
    return Client(
        socket, client_name=client_name, prefault=prefault, trusted_uid=trusted_uid, ahead=ahead
    )


def default_client():
    """This process's default client, used by the module-level functions. It connects on first
    use, and again by itself in a forked child or after the connection was lost."""
    global _default
    c = _default
    if c is None:
        with _default_lock:
            c = _default
            if c is None:
                c = _default = Client(_lazy=True)
    return c


def _client_for_socket(socket):
    if socket is None:
        return default_client()
    c = _by_socket.get(socket)
    if c is None:
        with _default_lock:
            c = _by_socket.get(socket)
            if c is None:
                c = _by_socket[socket] = Client(socket, _lazy=True)
    return c


def _unpickle(name, writable, offset, shape, strides, dtype, socket, ticket=0, fast=None):
    # The unpickling entry point (array._rebuild calls it). A failure is deferred to the first use
    # of the result: see UnavailableArray for why.
    try:
        return _client_for_socket(socket)._view(
            name, writable, offset, shape, strides, dtype, ticket, fast
        )
    except Error as e:
        return UnavailableArray(name, e)


set_unpickler(_unpickle)
# multiprocessing pickles with ForkingPickler and delivers each pickle once: arrays sent that way
# may be read before their attach is confirmed (SharedArray._reduce).
ForkingPickler.register(SharedArray, _reduce_for_transport)


def _after_fork_in_child():
    # The parent's sockets are closed here so the daemon sees exactly the parent's connection
    # close when the parent's closes; locks held by the parent's other threads are replaced.
    global _default_lock
    _default_lock = threading.Lock()
    for conn in list(connections):
        try:
            conn.close()
        except Exception:
            pass
    for c in list(_clients):
        c._lock = threading.RLock()
        c._conn = None


os.register_at_fork(after_in_child=_after_fork_in_child)
