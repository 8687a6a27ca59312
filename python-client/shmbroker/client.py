"""The connection to shmbrokerd and the Client API.

Protocol (proto/shmbroker.proto): AF_UNIX SOCK_SEQPACKET, one Request per packet, one Reply per
packet in order, descriptors only as SCM_RIGHTS on replies. A region's fd is sent the first time
a connection needs it; the client caches mappings by region id and says when it unmapped one
(DetachRequest.released_region_id) so the daemon sends the fd again next time.

Releases and the garbage collector: an attachment ends when the last array on it is collected,
which can happen at any allocation, in any thread, including in the middle of a request on this
very socket. So the weakref callbacks only append to a deque (atomic, no lock, no I/O); the
queue is sent, pipelined, in front of the next request, under the client's lock.
"""

import array as _array
import collections
import dataclasses
import datetime
import errno
import operator
import os
import socket as _socket
import sys
import threading
import weakref

import numpy as np

from . import _mem
from ._wire import pb
from .array import SharedArray, _Anchor, _SegmentRef
from .errors import (
    Code,
    Error,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    ProtocolError,
    UnavailableError,
    error_for,
)

__all__ = [
    "Client",
    "SegmentInfo",
    "DaemonStats",
    "Holder",
    "PurgeResult",
    "ServerInfo",
    "connect",
    "default_client",
    "resolve_socket_path",
]

MAX_REQUEST_BYTES = 64 * 1024
MAX_REPLY_BYTES = 96 * 1024
# Requests in flight at once when flushing queued releases: far below what the socket buffers
# hold, so neither side can block on a full buffer while the other waits.
_PIPELINE = 32
# Room for a few descriptors: enough to see that the daemon sent more than expected (the kernel
# closes what does not fit and sets MSG_CTRUNC).
_CMSG_SPACE = _socket.CMSG_SPACE(16 * _array.array("i").itemsize)
_SUN_PATH_MAX = 107
# Plain ints: enum flag arithmetic costs microseconds per packet.
_MSG_NOSIGNAL = int(_socket.MSG_NOSIGNAL)
_MSG_CMSG_CLOEXEC = int(_socket.MSG_CMSG_CLOEXEC)
_MSG_TRUNCATED = int(_socket.MSG_TRUNC | _socket.MSG_CTRUNC)
_SOL_SOCKET = int(_socket.SOL_SOCKET)
_SCM_RIGHTS = int(_socket.SCM_RIGHTS)


def resolve_socket_path(socket=None):
    """The daemon's socket path, resolved as by every shmbroker program: ``socket`` if given,
    else $SHMBROKER_SOCKET, else /run/shmbroker/shmbroker.sock for root, else
    $XDG_RUNTIME_DIR/shmbroker/shmbroker.sock, else /tmp/shmbroker-$UID/shmbroker.sock."""
    if socket:
        return os.fspath(socket)
    env = os.environ.get("SHMBROKER_SOCKET")
    if env:
        return env
    euid = os.geteuid()
    if euid == 0:
        return "/run/shmbroker/shmbroker.sock"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return xdg + "/shmbroker/shmbroker.sock"
    return f"/tmp/shmbroker-{euid}/shmbroker.sock"


# --- Results ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Holder:
    """A connection holding attachments of a segment (see :attr:`SegmentInfo.holders`)."""

    pid: int  # of the process that opened the connection
    uid: int
    client_name: str  # as the client named itself, e.g. "python:train.py"
    attachments: int  # of this segment on that connection
    writable: int  # of them, read-write


@dataclasses.dataclass(frozen=True)
class SegmentInfo:
    """Everything the daemon knows about a segment (a snapshot)."""

    name: str
    dtype: np.dtype
    shape: tuple
    order: str  # "C" or "F"
    nbytes: int
    uid: int  # owner: the creator's uid
    gid: int
    creator_pid: int
    mode: int
    created: datetime.datetime  # UTC
    attachments: int  # live attachments over all clients
    attrs: dict
    creator_connected: bool  # the creating connection is still open
    # stat() only (empty from list()): the connections holding it, at most 100
    holders: tuple = ()

    @property
    def owner(self):
        """The owner's user name (the uid as text when it has none)."""
        try:
            import pwd

            return pwd.getpwuid(self.uid).pw_name
        except (KeyError, ImportError):
            return str(self.uid)

    @property
    def itemsize(self):
        return self.dtype.itemsize


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """What the daemon said in the handshake."""

    protocol_version: int
    version: str
    pid: int
    max_memory: int  # 0: no cap
    max_name_bytes: int
    max_dims: int
    max_attrs: int
    max_request_bytes: int
    max_reply_bytes: int


@dataclasses.dataclass(frozen=True)
class DaemonStats:
    version: str
    pid: int
    started: datetime.datetime
    socket_path: str
    segments: int
    bytes_held: int
    max_memory: int
    clients: int
    requests: dict  # by operation: "create", "attach", ...
    errors: dict  # by code name: "NOT_FOUND", ...


@dataclasses.dataclass(frozen=True)
class PurgeResult:
    removed: list  # (name, nbytes, uid) in name order; may be cut short, see truncated
    truncated: bool
    removed_count: int
    bytes_freed: int
    skipped_not_owner: int


def _utc(ns):
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.timezone.utc)


_dtypes = {}


def _dtype_of(name, text):
    dt = _dtypes.get(text)
    if dt is None:
        try:
            dt = np.dtype(text)
        except TypeError:
            raise ProtocolError(f"segment {name!r} has dtype {text!r}, unknown to NumPy") from None
        if len(_dtypes) < 1024:
            _dtypes[text] = dt
    return dt


def _info_from_wire(w):
    dtype = _dtype_of(w.name, w.dtype)
    return SegmentInfo(
        name=w.name,
        dtype=dtype,
        shape=tuple(w.shape),
        order="F" if w.order == pb.ORDER_F else "C",
        nbytes=w.nbytes,
        uid=w.uid,
        gid=w.gid,
        creator_pid=w.creator_pid,
        mode=w.mode,
        created=_utc(w.created_unix_ns),
        attachments=w.attachments,
        attrs=dict(w.attrs),
        creator_connected=w.creator_connected,
        holders=tuple(
            Holder(h.pid, h.uid, h.client_name, h.attachments, h.writable) for h in w.holders
        ),
    )


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
    if any(d < 0 for d in shape):
        raise InvalidArgumentError(f"shape {shape} has a negative dimension")
    return shape


def _check_order(order):
    if order not in ("C", "F"):
        raise InvalidArgumentError(f"order must be 'C' or 'F', not {order!r}")
    return order


# --- The connection -----------------------------------------------------------------------------

_connections = weakref.WeakSet()


class _Connection:
    """One socket to the daemon, its region cache and its queue of releases. Not thread-safe:
    the Client serializes calls."""

    def __init__(self, path, client_name):
        self.path = path
        self.pid = os.getpid()
        self.broken = False
        self.sock = None
        # Filled by garbage-collector callbacks: an int is an attachment id to detach, a
        # (region id, weakref) pair a region that was unmapped.
        self.pending = collections.deque()
        self.anchors = {}  # attachment id -> weakref to its _Anchor (keeps the callback alive)
        self.regions = {}  # region id -> (weakref to the memoryview of its mapping, address)
        self.bufsize = MAX_REPLY_BYTES + 1
        self.max_request = MAX_REQUEST_BYTES
        self.server = None
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise InvalidArgumentError(
                f"socket path '{path}' is longer than {_SUN_PATH_MAX} bytes"
            )
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)  # close-on-exec
        try:
            sock.connect(path)
        except OSError as e:
            sock.close()
            raise UnavailableError(
                f"no shmbrokerd answers at '{path}': {e.strerror or e} (is the daemon running? "
                "see --socket / $SHMBROKER_SOCKET)"
            ) from None
        self.sock = sock
        _connections.add(self)
        try:
            self._hello(client_name)
        except BaseException:
            self.close()
            raise

    def _hello(self, client_name):
        req = pb.Request()
        req.hello.protocol_version = pb.PROTOCOL_VERSION_CURRENT
        req.hello.client_name = client_name.encode("utf-8")[:64].decode("utf-8", "ignore")
        h = self.call(req, "hello").hello
        lim = h.limits
        self.server = ServerInfo(
            protocol_version=h.protocol_version,
            version=h.server_version,
            pid=h.server_pid,
            max_memory=lim.max_memory,
            max_name_bytes=lim.max_name_bytes,
            max_dims=lim.max_dims,
            max_attrs=lim.max_attrs,
            max_request_bytes=lim.max_request_bytes,
            max_reply_bytes=lim.max_reply_bytes,
        )
        if lim.max_reply_bytes:
            self.bufsize = max(self.bufsize, lim.max_reply_bytes + 1)
        if lim.max_request_bytes:
            self.max_request = lim.max_request_bytes

    def usable(self):
        return not self.broken and self.pid == os.getpid()

    def close(self):
        self.broken = True
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        # The daemon releases the connection's attachments when it closes; mappings in use
        # stay valid.
        self.pending.clear()
        self.anchors.clear()
        self.regions.clear()

    def __del__(self):
        sock = self.sock
        if sock is not None:
            sock.close()

    def _lost(self, what):
        self.close()
        return UnavailableError(f"{what} (shmbrokerd at '{self.path}')")

    # -- packets --

    def _recv(self):
        sock = self.sock
        data, ancdata, flags, _ = sock.recvmsg(self.bufsize, _CMSG_SPACE, _MSG_CMSG_CLOEXEC)
        fds = []
        for level, kind, cdata in ancdata:
            if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
                a = _array.array("i")
                a.frombytes(cdata[: len(cdata) - len(cdata) % a.itemsize])
                fds.extend(a)
        if flags & _MSG_TRUNCATED:
            _close_fds(fds)
            self.close()
            raise ProtocolError("a reply from the daemon did not fit")
        if not data:
            _close_fds(fds)
            raise self._lost("the daemon closed the connection")
        return data, fds

    def _exchange(self, packets):
        """Sends the packets, then reads one reply per packet: [(bytes, fds)]. Any failure
        leaves the stream out of step, so it ends the connection."""
        sock = self.sock
        replies = []
        try:
            for p in packets:
                sock.send(p, _MSG_NOSIGNAL)
            for _ in packets:
                replies.append(self._recv())
        except BaseException as e:
            for _, fds in replies:
                _close_fds(fds)
            if isinstance(e, Error):
                raise
            if isinstance(e, OSError):
                raise self._lost(f"lost the connection to the daemon: {e.strerror or e}") from None
            self.close()  # e.g. KeyboardInterrupt between a request and its reply
            raise
        return replies

    def _take_releases(self):
        """Empties the release queue into DetachRequest packets."""
        q = self.pending
        if not q:
            return []
        attachments = []
        regions = []
        while q:
            try:
                item = q.popleft()
            except IndexError:
                break
            if type(item) is int:
                self.anchors.pop(item, None)
                attachments.append(item)
            else:
                rid, ref = item
                # Only the mapping currently cached for the id counts (an older one may have
                # been replaced when the fd was sent again).
                entry = self.regions.get(rid)
                if entry is not None and entry[0] is ref:
                    del self.regions[rid]
                    regions.append(rid)
        packets = []
        req = pb.Request()
        d = req.detach
        for i, aid in enumerate(attachments):
            d.attachment_id = aid
            d.released_region_id = regions[i] if i < len(regions) else 0
            packets.append(req.SerializeToString())
        # A released region with no detach to ride on (rare); the daemon forgets the region
        # first, then answers NOT_FOUND for attachment 0, which is ignored.
        for rid in regions[len(attachments):]:
            d.attachment_id = 0
            d.released_region_id = rid
            packets.append(req.SerializeToString())
        return packets

    def call(self, request, expect, fds_out=None):
        """One round trip, after any queued releases. Returns the Reply; raises the reply's
        error when it is not OK. Descriptors are put in ``fds_out`` (a list) when given and
        refused otherwise."""
        if self.broken:
            raise UnavailableError(f"the connection to shmbrokerd at '{self.path}' was lost")
        if request is not None:
            payload = request.SerializeToString()
            if len(payload) > self.max_request:
                raise InvalidArgumentError(
                    f"request of {len(payload)} bytes exceeds the protocol's {self.max_request}"
                )
        packets = self._take_releases()
        if request is not None:
            packets.append(payload)
        reply = None
        fds = []
        for start in range(0, len(packets), _PIPELINE):
            batch = packets[start : start + _PIPELINE]
            results = self._exchange(batch)
            last = request is not None and start + _PIPELINE >= len(packets)
            if last:
                data, fds = results.pop()
            for _, extra in results:  # detach replies: nothing to learn from them
                _close_fds(extra)
            if last:
                try:
                    reply = pb.Reply.FromString(data)
                except Exception:
                    _close_fds(fds)
                    self.close()
                    raise ProtocolError("the daemon's reply could not be parsed") from None
        if request is None:
            return None
        try:
            if reply.code != Code.OK:
                raise error_for(reply.code, reply.message)
            if reply.WhichOneof("body") != expect:
                raise ProtocolError("the daemon answered with an unexpected reply")
            if fds and fds_out is None:
                raise ProtocolError("the daemon sent descriptors with a reply that takes none")
        except BaseException:
            _close_fds(fds)
            raise
        if fds_out is not None:
            fds_out.extend(fds)
        return reply

    # -- mappings --

    def _region_released(self, rid):
        append = self.pending.append
        return lambda ref: append((rid, ref))

    def map(self, request, prefault=None):
        """Create or attach: returns (anchor, address, SegmentInfo, writable). ``prefault`` is
        None, or (start, length) of the bytes about to be used (length None: all of them)."""
        for _ in range(2):
            fds = []
            reply = self.call(request, "attach", fds)
            try:
                result = self._materialize(reply.attach, fds, prefault)
            finally:
                _close_fds(fds)
            if result is not None:
                return result
            # The region was unmapped after this request left (collected by another thread or
            # in the middle of the request): give the attachment back, say the region is gone,
            # and attach again, which brings the fd.
            a = reply.attach
            req = pb.Request()
            req.detach.attachment_id = a.attachment_id
            req.detach.released_region_id = a.mapping.region_id
            try:
                self.call(req, "empty")
            except Error as e:
                if e.code != Code.NOT_FOUND:
                    raise
            request = pb.Request()
            request.attach.name = a.info.name
            request.attach.access = a.mapping.access
        raise ProtocolError("the daemon did not send the descriptor of a region not mapped here")

    def _materialize(self, a, fds, prefault):
        m = a.mapping
        aid = a.attachment_id
        rid = m.region_id
        writable = m.access == pb.READ_WRITE
        done = False
        try:
            info = _info_from_wire(a.info)
            if (
                m.length != info.nbytes
                or m.offset > m.region_size
                or m.length > m.region_size - m.offset
                or info.dtype.itemsize * _prod(info.shape) != info.nbytes
            ):
                raise ProtocolError(
                    "the daemon described a mapping that does not fit its region"
                )
            if m.length == 0:
                if fds:
                    raise ProtocolError("unexpected descriptor with the reply")
                anchor = np.ndarray.__new__(_Anchor, (0,), np.uint8)
                address = anchor.__array_interface__["data"][0]
            else:
                if m.fd_attached:
                    if len(fds) != 1:
                        raise ProtocolError("expected one descriptor with the reply")
                    fd = fds.pop()
                    try:
                        view, base, ref = _mem.map_fd(
                            fd, m.region_size, writable, self._region_released(rid)
                        )
                    except OSError as e:
                        cls = Code.RESOURCE_EXHAUSTED if e.errno == errno.ENOMEM else Code.INTERNAL
                        raise error_for(
                            cls, f"cannot map segment '{info.name}': {e.strerror}"
                        ) from None
                    self.regions[rid] = (ref, base)
                else:
                    if fds:
                        raise ProtocolError("unexpected descriptor with the reply")
                    entry = self.regions.get(rid)
                    view = entry[0]() if entry is not None else None
                    if view is None:
                        if entry is not None:
                            del self.regions[rid]
                        done = True  # the caller gives the attachment back itself
                        return None
                    base = entry[1]
                anchor = np.ndarray.__new__(
                    _Anchor, (m.length,), np.uint8, buffer=view, offset=m.offset
                )
                if anchor.base is not view:
                    # The unmap is tied to `view`: it must be what keeps the memory alive.
                    raise InternalError("this NumPy does not keep buffer= objects as base")
                address = base + m.offset
                if prefault is not None:
                    start, length = prefault
                    if length is None:
                        length = m.length
                    _mem.prefault(address, start, min(length, m.length - start), writable)
            anchor._conn = self
            append = self.pending.append
            self.anchors[aid] = weakref.ref(anchor, lambda _r, aid=aid: append(aid))
            done = True
            return anchor, address, info, writable
        finally:
            if not done:
                # Give the attachment back with the next request.
                self.pending.append(aid)


def _prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _close_fds(fds):
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass


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
    """

    def __init__(self, socket=None, *, client_name=None, prefault=True, _lazy=False):
        self._socket = os.fspath(socket) if socket else None
        self._client_name = client_name
        self._prefault = prefault
        self._lock = threading.Lock()
        self._conn = None
        self._closed = False
        _clients.add(self)
        if not _lazy:
            with self._lock:
                self._connection()

    # -- plumbing --

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
        conn = _Connection(resolve_socket_path(self._socket), self._client_name or _program_name())
        self._conn = conn
        return conn

    def _call(self, request, expect):
        with self._lock:
            return self._connection().call(request, expect)

    def _map(self, request, prefault, want=None):
        # `prefault`: the byte range to prefault; `want`: this call's choice (None: the
        # client's).
        if want is None:
            want = self._prefault
        with self._lock:
            conn = self._connection()
            return conn.map(request, prefault if want else None)

    def _array(self, mapped, shape, dtype, order="C", offset=0, strides=None):
        anchor, address, info, writable = mapped
        arr = np.ndarray.__new__(
            SharedArray, shape, dtype, buffer=anchor, offset=offset, strides=strides, order=order
        )
        arr._shm = _SegmentRef(info.name, self._socket, weakref.ref(anchor), address, info.nbytes)
        return arr

    @property
    def socket_path(self):
        """The path this client connects to."""
        conn = self._conn
        return conn.path if conn is not None else resolve_socket_path(self._socket)

    @property
    def server(self):
        """:class:`ServerInfo` from the handshake (connects if needed)."""
        with self._lock:
            return self._connection().server

    def close(self):
        """Closes the connection. Arrays stay valid; the daemon forgets this connection's
        attachments. Further calls raise UnavailableError."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def flush(self):
        """Tells the daemon now about attachments released since the last request (this is
        otherwise done with the next request)."""
        with self._lock:
            conn = self._conn
            if conn is not None and conn.usable():
                conn.call(None, None)

    # -- API --

    def create(self, name, shape, dtype=np.float64, *, order="C", mode=0o600, attrs=None,
               prefault=None):
        """Creates segment ``name`` holding an array of ``shape`` and ``dtype`` and returns it
        mapped read-write (zero-filled). AlreadyExistsError if the name is taken,
        ResourceExhaustedError when the memory cannot be reserved.

        ``prefault``: fill the page tables at once (arrays of 256 KiB and up), which pays when
        the whole array is written next; False leaves it to page faults (a sparse fill, or a
        huge array touched in parts). None: the client's default."""
        name = _check_name(name)
        shape = _check_shape(shape)
        dt = _check_dtype(dtype)
        order = _check_order(order)
        if not isinstance(mode, int) or isinstance(mode, bool):
            raise TypeError("mode must be an int such as 0o600")
        req = pb.Request()
        c = req.create
        c.name = name
        c.dtype = dt.str
        try:
            c.shape.extend(shape)
        except ValueError:
            raise InvalidArgumentError(f"shape {shape} has a dimension out of range") from None
        c.order = pb.ORDER_F if order == "F" else pb.ORDER_C
        if not 0 <= mode <= 0xFFFFFFFF:
            raise InvalidArgumentError(f"mode {mode:#o} is out of range")
        c.mode = mode
        if attrs:
            for k, v in dict(attrs).items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise TypeError("attrs must map str to str")
                c.attrs[k] = v
        mapped = self._map(req, (0, None), prefault)
        return self._array(mapped, shape, dt, order)

    def attach(self, name, *, writable=False, prefault=None):
        """Maps segment ``name`` and returns it as an array with its stored shape, dtype and
        order. NotFoundError (also a KeyError and FileNotFoundError) if there is no such
        segment.

        Read-only by default: the mapping itself is read-only, ``arr.flags.writeable`` is False
        and cannot be set, and a write fails with NumPy's "ValueError: assignment destination
        is read-only". To write, attach with ``attach(name, writable=True)`` (the segment's
        mode must grant you write access).

        ``prefault``: as for :meth:`create` (pays when the whole array is read next)."""
        req = pb.Request()
        req.attach.name = _check_name(name)
        req.attach.access = pb.READ_WRITE if writable else pb.READ_ONLY
        mapped = self._map(req, (0, None), prefault)
        info = mapped[2]
        return self._array(mapped, info.shape, info.dtype, info.order)

    def share(self, arr, name, *, mode=0o600, attrs=None):
        """Copies ``arr`` into a new segment ``name`` and returns the shared copy (in Fortran
        order when ``arr`` is Fortran-contiguous, else C order)."""
        arr = np.asanyarray(arr)
        order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
        out = self.create(name, arr.shape, arr.dtype, order=order, mode=mode, attrs=attrs)
        try:
            np.copyto(out, arr, casting="no")
        except BaseException:
            self.unlink(name)
            raise
        return out

    def _view(self, name, writable, offset, shape, strides, dtype):
        # Unpickling: attach and rebuild the exact view that was pickled.
        req = pb.Request()
        req.attach.name = name
        req.attach.access = pb.READ_WRITE if writable else pb.READ_ONLY
        lo, hi = _extent(offset, shape, strides, dtype.itemsize)
        mapped = self._map(req, (lo, hi - lo))
        try:
            return self._array(mapped, shape, dtype, offset=offset, strides=strides)
        except (ValueError, TypeError) as e:
            raise FailedPreconditionError(
                f"segment '{name}' no longer holds the pickled view ({e})"
            ) from None

    def unlink(self, name):
        """Removes the name at once (owner or root). Processes that have it mapped keep their
        memory until they let go of it."""
        req = pb.Request()
        req.unlink.name = _check_name(name)
        self._call(req, "empty")

    def stat(self, name):
        """:class:`SegmentInfo` of segment ``name``."""
        req = pb.Request()
        req.stat.name = _check_name(name)
        return _info_from_wire(self._call(req, "stat").stat)

    def list(self, pattern=None):
        """Segments whose names match the glob ``pattern`` (fnmatch; '*' also matches '/'),
        sorted by name; all of them when ``pattern`` is None."""
        out = []
        req = pb.Request()
        req.list.pattern = pattern or ""
        while True:
            r = self._call(req, "list").list
            out.extend(_info_from_wire(s) for s in r.segments)
            if not r.truncated or not r.segments:
                return out
            req.list.start_after = out[-1].name

    def stats(self):
        """The daemon's counters (:class:`DaemonStats`)."""
        req = pb.Request()
        req.stats.SetInParent()
        s = self._call(req, "stats").stats
        return DaemonStats(
            version=s.server_version,
            pid=s.server_pid,
            started=_utc(s.started_unix_ns),
            socket_path=s.socket_path,
            segments=s.segments,
            bytes_held=s.bytes_held,
            max_memory=s.max_memory,
            clients=s.clients,
            requests={c.name: c.value for c in s.requests},
            errors={c.name: c.value for c in s.errors},
        )

    def purge(self, patterns=(), *, orphans=False, older_than=None, owner=None,
              unattached=False, all=False, dry_run=False, owner_uid=None):
        """Unlinks, in one request, every segment matching ALL the selectors given, as
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
            p.owner_uid = _uid_of(owner)
        p.unattached = unattached
        p.all = all
        p.dry_run = dry_run
        r = self._call(req, "purge").purge
        return PurgeResult(
            removed=[(x.name, x.nbytes, x.uid) for x in r.removed],
            truncated=r.truncated,
            removed_count=r.removed_count,
            bytes_freed=r.bytes_freed,
            skipped_not_owner=r.skipped_not_owner,
        )


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


def _uid_of(owner):
    """The uid of a user name or a uid."""
    if isinstance(owner, str):
        import pwd

        try:
            return pwd.getpwnam(owner).pw_uid
        except KeyError:
            if not owner.isdigit():
                raise InvalidArgumentError(f"no such user {owner!r}") from None
            owner = int(owner)
    if isinstance(owner, bool) or not isinstance(owner, int):
        raise TypeError(f"owner is a user name or a uid, not {owner!r}")
    if not 0 <= owner <= 0xFFFFFFFF:
        raise InvalidArgumentError(f"uid {owner} is out of range")
    return owner


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


def connect(socket=None, *, client_name=None, prefault=True):
    """Connects to the daemon now and returns a new :class:`Client`. UnavailableError, naming
    the path tried, when no daemon answers."""
    return Client(socket, client_name=client_name, prefault=prefault)


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


def _after_fork_in_child():
    # The parent's sockets are closed here so the daemon sees exactly the parent's connection
    # close when the parent's closes; locks held by the parent's other threads are replaced.
    global _default_lock
    _default_lock = threading.Lock()
    for conn in list(_connections):
        try:
            conn.close()
        except Exception:
            pass
    for c in list(_clients):
        c._lock = threading.Lock()
        c._conn = None


os.register_at_fork(after_in_child=_after_fork_in_child)
