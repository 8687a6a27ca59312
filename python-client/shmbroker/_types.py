"""What the daemon reports, as Python values: the result dataclasses, and their conversion from
the wire's messages (proto/shmbroker.proto)."""

import collections
import dataclasses
import datetime

import numpy as np

from ._wire import pb
from .errors import ProtocolError

__all__ = ["DaemonStats", "Holder", "PurgeResult", "SegmentInfo", "ServerInfo"]


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
    # stat() and list(unlinked=True) only: the connections holding it, at most 100 (one that may
    # still map an unlinked segment without an attachment shows 0 attachments)
    holders: tuple = ()
    unlinked: bool = False  # from list(unlinked=True): lost its name, still in use
    holders_truncated: bool = False  # more holders than ``holders`` lists
    lifetime: str = "persistent"  # "persistent", "connection" or "refcount"
    expires: datetime.datetime = None  # UTC, when its ttl unlinks it; None: never
    sealed: bool = False  # immutable (seal)
    in_flight: int = 0  # references of arrays pickled to another process, not attached yet

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
    in_flight_timeout: float = 0.0  # seconds: when an unredeemed ticket lapses (0: not said)
    instance: int = 0  # random per daemon start: whose region ids a pickled array names
    max_attachments: int = 0  # per connection (0: not said)
    tickets_ride: bool = False  # the daemon applies tickets riding on another request


@dataclasses.dataclass(frozen=True)
class DaemonLimits:
    """The daemon's limits, each with its option in shmbrokerd(8); 0 means none where it says so."""

    max_memory_per_user: int = 0
    max_segments_per_user: int = 0
    max_connections: int = 0
    max_connections_per_user: int = 0
    max_attachments_per_connection: int = 0
    handshake_timeout: float = 0.0  # seconds
    fd_limit: int = 0
    fd_reserve: int = 0  # of fd_limit, kept for existing clients and root


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
    # Unlinked but still attached or mapped somewhere: counted in bytes_held (and against every
    # cap) until released.
    unlinked_segments: int = 0
    unlinked_bytes: int = 0
    limits: DaemonLimits = DaemonLimits()
    log_lines_dropped: int = 0
    # Shared regions (small segments are blocks of them): how many, the memory they hold, and of
    # it what is in no block (kept zeroed for reuse): their overhead beyond bytes_held.
    shared_regions: int = 0
    shared_region_resident_bytes: int = 0
    shared_region_free_bytes: int = 0
    huge_page_bytes: int = 0  # segment memory backed by 2 MiB pages
    # Segments the daemon unlinked by itself, by cause: "connection", "refcount", "ttl".
    auto_unlinked: dict = dataclasses.field(default_factory=dict)
    tickets_in_flight: int = 0  # refcount arrays pickled and not yet unpickled
    tickets_lapsed: int = 0  # of those, given up after --in-flight-timeout, since start
    waiters: int = 0  # attaches waiting for a segment (attach wait=)
    # Requests and connections refused at a limit, by limit: "memory_per_user", ...
    refusals: dict = dataclasses.field(default_factory=dict)
    # The warm pool (--warm-pool, --prealloc): released large segments' memory kept, zeroed, for
    # later creates; not in bytes_held, but counted with it against max_memory.
    pool_bytes: int = 0
    pool_segments: int = 0
    pool_max_bytes: int = 0  # 0: no pool
    pool_reused: int = 0  # creates served from the pool since start
    pool_released_bytes: int = 0  # given back: caps, memory pressure, trim


@dataclasses.dataclass(frozen=True)
class PurgeResult:
    removed: list  # (name, nbytes, uid) in name order; may be cut short, see truncated
    truncated: bool
    removed_count: int
    bytes_freed: int
    skipped_not_owner: int


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def utc(ns):
    # Exact, floored to datetime's microseconds: a float of ns / 1e9 rounds, and may cross the
    # millisecond that shmctl shows.
    return _EPOCH + datetime.timedelta(microseconds=ns // 1000)


_dtypes = {}


def dtype_of(name, text):
    dt = _dtypes.get(text)
    if dt is None:
        try:
            dt = np.dtype(text)
        except TypeError:
            raise ProtocolError(f"segment {name!r} has dtype {text!r}, unknown to NumPy") from None
        if len(_dtypes) < 1024:
            _dtypes[text] = dt
    return dt


LIFETIMES = {"persistent": pb.PERSISTENT, "connection": pb.CONNECTION, "refcount": pb.REFCOUNT}
LIFETIME_NAMES = {v: k for k, v in LIFETIMES.items()}


def info_from_wire(w):
    dtype = dtype_of(w.name, w.dtype)
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
        created=utc(w.created_unix_ns),
        attachments=w.attachments,
        attrs=dict(w.attrs),
        creator_connected=w.creator_connected,
        holders=tuple(
            Holder(h.pid, h.uid, h.client_name, h.attachments, h.writable) for h in w.holders
        ),
        unlinked=w.unlinked,
        holders_truncated=w.holders_truncated,
        lifetime=LIFETIME_NAMES.get(w.lifetime, str(w.lifetime)),
        expires=utc(w.expires_unix_ns) if w.expires_unix_ns else None,
        sealed=w.sealed,
        in_flight=w.in_flight,
    )


# What mapping a create or attach needs of its SegmentInfo: building the whole SegmentInfo
# (holders, attrs, times) was a sixth of the Python client's cost.
MapInfo = collections.namedtuple("MapInfo", "name dtype shape order nbytes lifetime")


def map_info_from_wire(w):
    name = w.name
    return MapInfo(
        name,
        dtype_of(name, w.dtype),
        tuple(w.shape),
        "F" if w.order == pb.ORDER_F else "C",
        w.nbytes,
        LIFETIME_NAMES.get(w.lifetime, str(w.lifetime)),
    )


def server_from_wire(h):
    """ServerInfo of a HelloReply."""
    lim = h.limits
    return ServerInfo(
        protocol_version=h.protocol_version,
        version=h.server_version,
        pid=h.server_pid,
        max_memory=lim.max_memory,
        max_name_bytes=lim.max_name_bytes,
        max_dims=lim.max_dims,
        max_attrs=lim.max_attrs,
        max_request_bytes=lim.max_request_bytes,
        max_reply_bytes=lim.max_reply_bytes,
        in_flight_timeout=lim.in_flight_timeout_ms / 1000,
        instance=h.instance,
        max_attachments=lim.max_attachments_per_connection,
        tickets_ride=h.tickets_ride,
    )


def stats_from_wire(s):
    """DaemonStats of a StatsReply."""
    return DaemonStats(
        version=s.server_version,
        pid=s.server_pid,
        started=utc(s.started_unix_ns),
        socket_path=s.socket_path,
        segments=s.segments,
        bytes_held=s.bytes_held,
        max_memory=s.max_memory,
        clients=s.clients,
        requests={c.name: c.value for c in s.requests},
        errors={c.name: c.value for c in s.errors},
        unlinked_segments=s.unlinked_segments,
        unlinked_bytes=s.unlinked_bytes,
        limits=DaemonLimits(
            max_memory_per_user=s.limits.max_memory_per_user,
            max_segments_per_user=s.limits.max_segments_per_user,
            max_connections=s.limits.max_connections,
            max_connections_per_user=s.limits.max_connections_per_user,
            max_attachments_per_connection=s.limits.max_attachments_per_connection,
            handshake_timeout=s.limits.handshake_timeout_ms / 1000,
            fd_limit=s.limits.fd_limit,
            fd_reserve=s.limits.fd_reserve,
        ),
        log_lines_dropped=s.log_lines_dropped,
        shared_regions=s.shared_regions,
        shared_region_resident_bytes=s.shared_region_resident_bytes,
        shared_region_free_bytes=s.shared_region_free_bytes,
        huge_page_bytes=s.huge_page_bytes,
        auto_unlinked={c.name: c.value for c in s.auto_unlinked},
        tickets_in_flight=s.tickets_in_flight,
        tickets_lapsed=s.tickets_lapsed,
        waiters=s.waiters,
        refusals={c.name: c.value for c in s.refusals},
        pool_bytes=s.pool_bytes,
        pool_segments=s.pool_segments,
        pool_max_bytes=s.pool_max_bytes,
        pool_reused=s.pool_reused,
        pool_released_bytes=s.pool_released_bytes,
    )


def purge_from_wire(replies):
    """PurgeResult of the PurgeReplies of one purge's slices."""
    return PurgeResult(
        removed=[(x.name, x.nbytes, x.uid) for r in replies for x in r.removed],
        truncated=any(r.truncated for r in replies),
        removed_count=sum(r.removed_count for r in replies),
        bytes_freed=sum(r.bytes_freed for r in replies),
        skipped_not_owner=sum(r.skipped_not_owner for r in replies),
    )
