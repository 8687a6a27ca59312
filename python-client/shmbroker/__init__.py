"""shmbroker: NumPy arrays in shared memory, by name, between processes.

    import shmbroker
    a = shmbroker.create("job/weights", (1000, 1000), "float32")   # writable, zero-filled
    b = shmbroker.attach("job/weights")                             # read-only view, any process
    shmbroker.unlink("job/weights")                                 # memory freed when unused

Arrays keep their mapping alive (views and slices too) and pickle by reference, so passing one
to a multiprocessing worker costs a few hundred bytes whatever its size; under
:func:`auto_share`, so do the plain NumPy arrays that multiprocessing pickles. Module-level
functions use a per-process default client that connects on first use (see :func:`connect`).
"""

from ._auto import AutoShare, auto_share
from .array import SharedArray, UnavailableArray, segment_name
from .client import (
    Client,
    DaemonLimits,
    DaemonStats,
    Holder,
    PurgeResult,
    SegmentInfo,
    ServerInfo,
    connect,
    default_client,
    resolve_socket_path,
    scope,
)
from .errors import (
    AlreadyExistsError,
    Code,
    DeadlineExceededError,
    Error,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    ResourceExhaustedError,
    UnavailableError,
)

__version__ = "0.1.0"


def create(name, shape, dtype="float64", *, order="C", mode=0o600, attrs=None, prefault=None,
           lifetime=None, ttl=None):
    """Creates segment ``name`` (generated when None) and returns it as a writable, zero-filled
    array; ``lifetime`` "persistent" (default), "connection" or "refcount", ``ttl`` seconds.
    See :meth:`Client.create`."""
    return default_client().create(
        name, shape, dtype, order=order, mode=mode, attrs=attrs, prefault=prefault,
        lifetime=lifetime, ttl=ttl,
    )


def attach(name, *, writable=False, prefault=None, owner=None, wait=None, sealed=False):
    """Maps segment ``name``: read-only by default; to write, ``attach(name, writable=True)``;
    ``owner=`` (user name or uid) refuses a segment of anyone else; ``wait=`` seconds waits for
    it to appear (``sealed=True``: to be sealed). See :meth:`Client.attach`."""
    return default_client().attach(
        name, writable=writable, prefault=prefault, owner=owner, wait=wait, sealed=sealed
    )


def share(arr, name=None, *, mode=0o600, attrs=None, lifetime=None, ttl=None):
    """Copies ``arr`` into a new segment (name generated when None) and returns the shared
    copy."""
    return default_client().share(arr, name, mode=mode, attrs=attrs, lifetime=lifetime, ttl=ttl)


def seal(name):
    """Makes segment ``name`` immutable (kernel-enforced). See :meth:`Client.seal`."""
    return default_client().seal(name)


def unlink(name):
    """Removes segment ``name``; mappings in use stay valid."""
    default_client().unlink(name)


def stat(name):
    """:class:`SegmentInfo` of segment ``name``."""
    return default_client().stat(name)


# Named like the builtin on purpose (shmbroker.list() reads as shmctl list), so it is left out of
# __all__: `from shmbroker import *` must not replace the builtin list.
def list(pattern=None, *, unlinked=False):  # noqa: A001
    """Segments whose names match the glob ``pattern`` (all when None), sorted by name;
    ``unlinked=True``: the unlinked ones still in use, with their holders."""
    return default_client().list(pattern, unlinked=unlinked)


def stats():
    """The daemon's counters."""
    return default_client().stats()


def purge(patterns=(), *, orphans=False, older_than=None, owner=None, unattached=False,
          all=False, dry_run=False):
    """Unlinks every segment matching ALL the selectors given (at least one), as
    ``shmctl purge``: ``patterns`` (globs), ``orphans``, ``older_than`` ("90s", "10m", "2h",
    "7d", "1w", seconds or a timedelta), ``owner`` (user name or uid), ``unattached``,
    ``all``, and ``dry_run``. See :meth:`Client.purge`."""
    return default_client().purge(
        patterns, orphans=orphans, older_than=older_than, owner=owner, unattached=unattached,
        all=all, dry_run=dry_run,
    )


def flush():
    """Tells the daemon now about attachments released since the last request."""
    default_client().flush()


__all__ = [
    "AlreadyExistsError",
    "AutoShare",
    "Client",
    "Code",
    "DaemonStats",
    "DeadlineExceededError",
    "DaemonLimits",
    "Error",
    "FailedPreconditionError",
    "Holder",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "PurgeResult",
    "ResourceExhaustedError",
    "SegmentInfo",
    "ServerInfo",
    "SharedArray",
    "UnavailableArray",
    "UnavailableError",
    "attach",
    "auto_share",
    "connect",
    "create",
    "default_client",
    "flush",
    "purge",
    "resolve_socket_path",
    "scope",
    "seal",
    "segment_name",
    "share",
    "stat",
    "stats",
    "unlink",
]
