"""One connection to shmbrokerd: its socket and packets, the queue of releases, the cache of
mapped regions, and the mapping of what create and attach return.

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
import errno
import os
import pwd
import socket as _socket
import stat
import struct
import time
import warnings
import weakref

import numpy as np
from google.protobuf.message import DecodeError

from . import _mem
from ._types import map_info_from_wire, server_from_wire
from ._wire import pb
from .array import Anchor
from .errors import (
    Code,
    Error,
    InternalError,
    InvalidArgumentError,
    ProtocolError,
    UnavailableError,
    error_for,
)

MAX_REQUEST_BYTES = 64 * 1024
MAX_REPLY_BYTES = 96 * 1024
# Requests in flight at once when flushing queued releases: far below what the socket buffers
# hold, so neither side can block on a full buffer while the other waits.
_PIPELINE = 32
# Releases per packet when they ride on a request: ~12 bytes each, well within a packet.
_RIDE = 1024
# Kinds of arrays made ahead (Connection.request_spare), each one spare.
_SPARES = 4
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


SYSTEM_SOCKET = "/run/shmbroker/shmbroker.sock"  # the system service's (shmbroker.socket)


def resolve_socket_path(socket=None):
    """The daemon's socket path, resolved as by every shmbroker client: ``socket`` if given,
    else $SHMBROKER_SOCKET, else the system service's /run/shmbroker/shmbroker.sock for root or
    when it exists, else $XDG_RUNTIME_DIR/shmbroker/shmbroker.sock, else
    /tmp/shmbroker-$UID/shmbroker.sock."""
    if socket:
        return os.fspath(socket)
    env = os.environ.get("SHMBROKER_SOCKET")
    if env:
        return env
    euid = os.geteuid()
    if euid == 0 or _is_socket(SYSTEM_SOCKET):
        return SYSTEM_SOCKET
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return xdg + "/shmbroker/shmbroker.sock"
    return f"/tmp/shmbroker-{euid}/shmbroker.sock"


def _is_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def uid_of(user):
    """The uid of a user name or a uid (an int or a string of digits)."""
    if isinstance(user, str):
        try:
            return pwd.getpwnam(user).pw_uid
        except KeyError:
            if not user.isdigit():
                raise InvalidArgumentError(f"no such user {user!r}") from None
            user = int(user)
    if isinstance(user, bool) or not isinstance(user, int):
        raise TypeError(f"a user is a user name or a uid, not {user!r}")
    if not 0 <= user <= 0xFFFFFFFF:
        raise InvalidArgumentError(f"uid {user} is out of range")
    return user


def resolve_trusted_uid(explicit=None):
    """The uid trusted besides root and this process's own: ``explicit`` (a uid or user name)
    if given, else $SHMBROKER_TRUST_UID, else None."""
    if explicit is not None:
        return uid_of(explicit)
    env = os.environ.get("SHMBROKER_TRUST_UID")
    if not env:
        return None
    try:
        return uid_of(env)
    except InvalidArgumentError:
        raise InvalidArgumentError(
            f"SHMBROKER_TRUST_UID={env!r} is neither a uid nor a user name"
        ) from None


def _describe_uid(uid):
    try:
        return f"{uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return str(uid)


def check_daemon_trusted(sock, path, trusted):
    """Raises UnavailableError unless the daemon at the other end of ``sock`` runs as root, as
    this process's euid or as ``trusted``, or its socket's directory is root's and writable by
    no one else (only root can have put the socket there). The same rule as the C++ client."""
    _pid, uid, _gid = struct.unpack("iII", sock.getsockopt(_SOL_SOCKET, _socket.SO_PEERCRED, 12))
    if uid in (0, os.geteuid()) or uid == trusted:
        return
    try:
        st = os.stat(os.path.dirname(path) or ".")
        if stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022:
            return
    except OSError:
        pass
    raise UnavailableError(
        f"refusing the daemon at '{path}': it runs as uid {_describe_uid(uid)} (not root, not "
        "you) and its socket directory is not root's alone, so anyone could have started it. "
        f"If you trust that user, set SHMBROKER_TRUST_UID={uid}"
    )


# Every open connection of this process, closed in a forked child (see client.py).
connections = weakref.WeakSet()

# Called (no arguments) right after a garbage-collector callback queued a release; as the
# callbacks, they must not block, take a lock or touch a socket. auto_share adds one that wakes
# a thread which sends the releases at once.
release_hooks = []


def _queue_release(append, item):
    append(item)
    for hook in release_hooks:
        hook()


class Connection:
    """One socket to the daemon, its region cache and its queue of releases. Not thread-safe:
    the Client serializes calls."""

    def __init__(self, path, client_name, trusted=None):
        self.path = path
        self.pid = os.getpid()
        self.broken = False
        self.sock = None
        # Filled by garbage-collector callbacks: an int is an attachment id to detach, a
        # (region id, weakref) pair a region that was unmapped.
        self.pending = collections.deque()
        self.anchors = {}  # attachment id -> weakref to its Anchor (keeps the callback alive)
        # region id -> (weakref to the memoryview of its mapping, address, size, and the segment's
        # name for a writable region of its own, else None)
        self.regions = {}
        # Replies still to read for requests sent pipelined (tickets, releases, fast attaches,
        # spare creates), before any other reply; for each, None, ("fast", attachment id, name)
        # or ("spare", kind).
        self.unread = 0
        self.unread_kinds = collections.deque()
        # Arrays made ahead (see request_spare), by kind: what _materialize gave, or None while
        # the reply is still to be read. Oldest first.
        self.spares = {}
        # By kind, the name of each spare that a release alone does not free (lifetime
        # "connection"): unlinked when the spare is dropped.
        self.spare_unlinks = {}
        # A spare's create held back to carry the next ticket (see request_spare): (kind,
        # packet), or None.
        self.held = None
        self.next_client_id = 0  # Attachment ids this client picks (bit 63 set): fast attaches.
        # Shared regions (small segments' blocks) stay mapped while the connection lives: later
        # segments in them need no descriptor and no mmap.
        self.kept = {}  # region id -> its memoryview
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
        except BaseException as e:
            sock.close()
            if not isinstance(e, OSError) or e.errno is None:
                raise
            raise UnavailableError(
                f"no shmbrokerd answers at '{path}': {e.strerror or e} (is the daemon running? "
                "see --socket / $SHMBROKER_SOCKET)"
            ) from None
        try:
            # Before a byte goes out: a daemon run by someone else would learn our name and
            # receive our data.
            check_daemon_trusted(sock, path, trusted)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        connections.add(self)
        try:
            self._hello(client_name)
        except BaseException:
            self.close()
            raise

    def _hello(self, client_name):
        req = pb.Request()
        req.hello.protocol_version = pb.PROTOCOL_VERSION_CURRENT
        req.hello.client_name = client_name.encode("utf-8")[:64].decode("utf-8", "ignore")
        self.server = server_from_wire(self.call(req, "hello").hello)
        if self.server.max_reply_bytes:
            self.bufsize = max(self.bufsize, self.server.max_reply_bytes + 1)
        if self.server.max_request_bytes:
            self.max_request = self.server.max_request_bytes

    def usable(self):
        return not self.broken and self.pid == os.getpid()

    def hang_up(self):
        """Closes, giving back first what this process no longer holds: the daemon keeps a block
        attached at disconnect until the process exits (its arrays stay valid), so the queued
        releases go, and the spares too, one still in flight once its reply is read (due at
        once, or within the second that a received array's attach may wait for its ticket; a
        daemon silent for longer is not waited for)."""
        try:
            if self.usable():
                self.held = None
                # Above the daemon's 1 s wait for a late ticket: giving up on that attach would
                # leave its array, already in use, unheld.
                self.sock.settimeout(3.0)
                if self.unread:
                    self._exchange([])
                self.spares.clear()  # their arrays go: their releases are queued
                self.spare_unlinks.clear()  # a connection's spares go with it anyway
                self.send_releases()
        except Exception:  # noqa: BLE001 (closing whatever happened: a late reply's warning
            pass  # made an error, a daemon that does not answer)
        finally:
            self.close()

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
        self.kept.clear()
        self.spares.clear()
        self.spare_unlinks.clear()
        self.held = None

    def __del__(self):
        sock = getattr(self, "sock", None)
        if sock is None:
            return
        try:
            if self.pid == os.getpid() and not self.broken:
                # Unreachable, so every array of this connection is gone (each holds it; the
                # last may be dying now): all its attachments end. Told without waiting, or the
                # daemon would hold their blocks until the process exits.
                releases = self._take_releases() + [(aid, 0) for aid in self.anchors]
                for packet in self._release_packets(releases):
                    sock.send(packet, _socket.MSG_DONTWAIT | _MSG_NOSIGNAL)
        except Exception:  # noqa: BLE001 (a full socket or a gone daemon: then it holds them)
            pass
        finally:
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
            close_fds(fds)
            self.close()
            raise ProtocolError("a reply from the daemon did not fit")
        if not data:
            close_fds(fds)
            raise self._lost("the daemon closed the connection")
        return data, fds

    def _exchange(self, packets):
        """Sends the packets, then reads one reply per packet: [(bytes, fds)]. Any failure
        leaves the stream out of step, so it ends the connection."""
        sock = self.sock
        replies = []
        late = []  # replies to fast attaches and spare creates, handled once the stream is in step
        try:
            while self.unread:
                # Replies to pipelined tickets: a failed ticket only means that array travels
                # unprotected, as a name.
                data, fds = self._recv()
                self.unread -= 1
                kind = self.unread_kinds.popleft() if self.unread_kinds else None
                if kind is not None and kind[0] == "spare":
                    late.append((kind, data, fds))
                    continue
                close_fds(fds)
                if kind is not None:
                    late.append((kind, data, []))
            for p in packets:
                sock.send(p, _MSG_NOSIGNAL)
            for _ in packets:
                replies.append(self._recv())
        except BaseException as e:
            for _, fds in replies:
                close_fds(fds)
            for _, _, fds in late:
                close_fds(fds)
            if isinstance(e, Error):
                raise
            # Only the socket's own errors (they carry an errno) say the daemon is gone; an
            # OSError without one (a handler's TimeoutError) goes to the caller as it was.
            if isinstance(e, OSError) and e.errno is not None:
                # A daemon that refuses a connection (too many, no descriptors left) says why
                # and closes, maybe before our first request left: read its reason.
                refusal = self._refusal()
                if refusal is not None:
                    self.close()
                    raise refusal from None
                raise self._lost(f"lost the connection to the daemon: {e.strerror or e}") from None
            self.close()  # e.g. KeyboardInterrupt between a request and its reply
            raise
        # Each handled even if one raises (a warning made an error): the spares' descriptors
        # are closed, and the first error is raised after.
        raised = None
        for kind, data, fds in late:
            try:
                if kind[0] == "spare":
                    self._spare_arrived(kind[1], data, fds)
                else:
                    _check_fast_attach(kind[2], data)
            except Exception as e:  # noqa: BLE001
                raised = raised or e
        if raised is not None:
            for _, fds in replies:
                close_fds(fds)
            raise raised
        return replies

    def _refusal(self):
        """The error of a reply already waiting on a failed connection, or None."""
        try:
            data, ancdata, _, _ = self.sock.recvmsg(
                self.bufsize, _CMSG_SPACE, _MSG_CMSG_CLOEXEC | _socket.MSG_DONTWAIT
            )
            reply = pb.Reply.FromString(data)
        except Exception:
            return None
        for level, kind, cdata in ancdata:
            if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
                a = _array.array("i")
                a.frombytes(cdata[: len(cdata) - len(cdata) % a.itemsize])
                close_fds(list(a))
        return error_for(reply.code, reply.message) if reply.code != Code.OK else None

    def _take_releases(self):
        """Empties the release queue: [(attachment id, released region id)], 0 for none."""
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
        # A released region with no detach to ride on (rare): attachment 0 says "only the
        # region".
        n = max(len(attachments), len(regions))
        attachments += [0] * (n - len(attachments))
        regions += [0] * (n - len(regions))
        return list(zip(attachments, regions))

    @staticmethod
    def _releases_field(releases):
        """``releases`` encoded as Request.releases (field 16, DetachRequests): appended to a
        serialized Request, protobuf merges them into it, so one packet carries the request and
        the releases before it. Encoded by hand, as the other hot requests (see _len_field);
        field 16 takes a two-byte key."""
        out = bytearray()
        for aid, rid in releases:
            inner = _uint_field(1, aid) + _uint_field(2, rid)
            out += b"\x82\x01" + _varint(len(inner)) + inner
        return bytes(out)

    def send_releases(self):
        """Sends the queued releases now, pipelined: the daemon learns at once, and nobody
        waits for a round trip."""
        for packet in self._release_packets(self._take_releases()):
            self.send_pipelined(packet)

    def _release_packets(self, releases):
        """Packets of their own for ``releases``: a detach of the first of each _RIDE, the rest
        riding on it."""
        packets = []
        for start in range(0, len(releases), _RIDE):
            chunk = releases[start : start + _RIDE]
            head = pb.Request()
            head.detach.attachment_id, head.detach.released_region_id = chunk[0]
            packets.append(head.SerializeToString() + self._releases_field(chunk[1:]))
        return packets

    def send_pipelined(self, payload, kind=None):
        """Sends ``payload`` (a serialized request) now without waiting for its reply, which the
        next exchange reads: ignored, or handled by ``kind`` (a spare's, a fast attach's). At
        most _PIPELINE are outstanding, so neither side blocks on a full socket buffer."""
        if self.broken:
            return
        if self.unread >= _PIPELINE:
            self._exchange([])
        # Counted first, all inside the try: an exception from a signal handler can come
        # between any two of these lines, and then nobody knows whether the packet left; the
        # stream ends instead.
        try:
            self.unread += 1
            self.unread_kinds.append(kind)
            self.sock.send(payload, _MSG_NOSIGNAL)
        except BaseException as e:
            self.close()
            if isinstance(e, OSError):
                raise self._lost(f"lost the connection to the daemon: {e.strerror or e}") from None
            raise

    def _ride(self, payload, releases):
        """``payload`` with the last of ``releases`` (up to _RIDE) riding in its packet, taken
        out of ``releases``; what is left (a backlog, or all for a request too big to carry
        them) needs packets of their own, sent first."""
        if not releases:
            return payload
        tail = (len(releases) - 1) % _RIDE + 1
        ride = self._releases_field(releases[len(releases) - tail :])
        if len(payload) + len(ride) > self.max_request:
            return payload
        del releases[len(releases) - tail :]
        return payload + ride

    def _with_releases(self, payload):
        """``payload`` with the queued releases riding on it, as on any request (the backlog
        goes first, pipelined), for a request sent pipelined itself."""
        releases = self._take_releases()
        payload = self._ride(payload, releases)
        for packet in self._release_packets(releases):
            self.send_pipelined(packet)
        return payload

    def request_spare(self, key, payload, unlink_name=None, hold=False):
        """Sends ``payload`` (a serialized create) pipelined: read with a later reply, it becomes
        the spare array that the next create of the same ``key`` takes without waiting. At most
        _SPARES kinds; the oldest goes first (released with the next request, and unlinked if
        ``unlink_name`` was given for it: a connection's segment outlives its release).

        ``hold``: the array just made is likely to be pickled next (the last one of its kind
        was), so the create waits to carry its ticket (send_ticket): one packet, one wake-up of
        the daemon, where there were two. Nothing depends on it but its spare: other packets
        pass it; it goes alone when its spare is wanted first, and is forgotten when dropped."""
        if self.broken or key in self.spares:
            return
        while len(self.spares) >= _SPARES:
            self._drop_spare(next(iter(self.spares)))
        if hold and self.server.tickets_ride:
            if self.held is not None:
                self._send_held()
            self.held = (key, payload)
        else:
            self.send_pipelined(self._with_releases(payload), ("spare", key))
        self.spares[key] = None
        if unlink_name is not None:
            self.spare_unlinks[key] = unlink_name

    def drop_spares(self):
        """Gives every spare back, pipelined: before a retry that needs their memory."""
        for key in list(self.spares):
            self._drop_spare(key)

    def _drop_spare(self, key):
        # One still in flight is released when its reply finds no spare waiting; its unlink
        # follows its create on this connection, so the daemon sees them in that order.
        del self.spares[key]
        if self.held is not None and self.held[0] == key:
            self.held = None  # never sent: nothing to give back
            self.spare_unlinks.pop(key, None)
            return
        name = self.spare_unlinks.pop(key, None)
        if name is not None:
            self.send_pipelined(encode_unlink(name))

    def _send_held(self, tickets=b""):
        key, payload = self.held
        self.held = None
        self.send_pipelined(self._with_releases(payload + tickets), ("spare", key))

    def send_ticket(self, aid, ticket):
        """Sends a ticket for attachment ``aid``, pipelined: riding on the held spare create if
        there is one (see request_spare)."""
        if self.held is None:
            self.send_pipelined(encode_ticket(aid, ticket))
        else:
            self._send_held(encode_riding_ticket(aid, ticket))

    def take_spare(self, key):
        """The spare array of ``key`` (as map() returns it), or None."""
        if key not in self.spares:
            return None
        if self.held is not None and self.held[0] == key:
            self._send_held()  # its array was not pickled: no ticket to wait for
        if self.spares[key] is None and self.unread:
            self._exchange([])  # its reply is due: it came long ago, or comes at once
        self.spare_unlinks.pop(key, None)
        return self.spares.pop(key, None)

    def _spare_arrived(self, key, data, fds):
        got = None
        try:
            reply = pb.Reply.FromString(data)
            if reply.code == Code.OK and reply.WhichOneof("body") == "attach":
                got = self._materialize(reply.attach, fds, None)
                if got is None:  # its region was unmapped meanwhile: give it back
                    self.pending.append(reply.attach.attachment_id)
        except Exception:  # noqa: BLE001 (no spare: the next create waits, as without one)
            got = None
        finally:
            close_fds(fds)
        if key in self.spares and self.spares[key] is None:
            if got is None:
                del self.spares[key]
                self.spare_unlinks.pop(key, None)
            else:
                self.spares[key] = got
        # Otherwise it is no longer wanted: dropped here, its attachment is released.

    def fast_attach(self, name, writable, ticket, fast):
        """Unpickling an array that came through multiprocessing: when this connection maps the
        block's shared region, the bytes are readable at once and the attach goes pipelined,
        redeeming the sender's ticket, which holds the segment until it arrives (see the
        README's "Memory"). (anchor, address), or None when only a waited attach will do."""
        try:
            instance, rbase, boff, nbytes, issued, timens = fast
        except (TypeError, ValueError):
            return None
        server = self.server
        if self.broken or server is None or instance != server.instance or not ticket:
            return None
        # Monotonic clocks agree only within one time namespace. Half the timeout: the attach
        # must reach the daemon before the ticket lapses.
        if not timens or timens != time_namespace() or not server.in_flight_timeout:
            return None
        if not 0 <= time.monotonic_ns() - issued < server.in_flight_timeout * 5e8:
            return None
        # An attach the daemon refuses would leave the array unheld: not at the limit.
        if server.max_attachments and len(self.anchors) >= server.max_attachments:
            return None
        rid = rbase * 2 + (1 if writable else 0)
        view = self.kept.get(rid)
        entry = self.regions.get(rid)
        if view is None or entry is None or not 0 <= boff <= len(view) - nbytes or nbytes <= 0:
            return None
        self.next_client_id += 1
        aid = (1 << 63) | self.next_client_id
        # The daemon attaches only the segment at that place: the name may mean another by now.
        payload = encode_attach(name, writable, ticket=ticket, attachment_id=aid, by_ticket=True,
                                expect=(rbase, boff))
        self.send_pipelined(self._with_releases(payload), ("fast", aid, name))
        anchor = np.ndarray.__new__(Anchor, (nbytes,), np.uint8, buffer=view, offset=boff)
        self._bind(anchor, aid, (rbase, boff, nbytes))
        return anchor, entry[1] + boff

    def _bind(self, anchor, aid, fast):
        """Makes ``anchor`` the array of attachment ``aid``: released when it is collected.
        ``fast``: (region id // 2, offset, length) for a block of a shared region, else None."""
        anchor._conn = self
        anchor._aid = aid
        anchor._fast = fast
        append = self.pending.append
        self.anchors[aid] = weakref.ref(anchor, lambda _r, aid=aid: _queue_release(append, aid))

    def remap_readonly(self, name):
        """Before sealing ``name``: this connection's writable mappings of its memory (a region
        of its own) become read-only in place, through a read-only descriptor from the daemon."""
        rids = [rid for rid, e in self.regions.items() if e[3] == name and e[0]() is not None]
        if not rids:
            return
        req = pb.Request()
        req.attach.name = name
        req.attach.access = pb.READ_ONLY
        req.attach.resend_fd = True
        fds = []
        reply = self.call(req, "attach", fds)
        a = reply.attach
        try:
            if not a.mapping.fd_attached or len(fds) != 1:
                raise ProtocolError("the daemon did not send the read-only descriptor")
            for rid in rids:
                entry = self.regions[rid]
                if entry[0]() is not None:
                    try:
                        _mem.remap_readonly(entry[1], entry[2], fds[0])
                    except OSError as e:
                        raise InternalError(
                            f"cannot remap '{name}' read-only: {e.strerror}"
                        ) from None
                self.regions[rid] = entry[:3] + (None,)
        finally:
            close_fds(fds)
            # The attachment was only for the descriptor; the read-only region is not mapped
            # here unless it already was.
            ro = a.mapping.region_id
            d = pb.Request()
            d.detach.attachment_id = a.attachment_id
            d.detach.released_region_id = 0 if ro in self.regions else ro
            self.call(d, "empty")

    def call(self, request, expect, fds_out=None):
        """One round trip, after any queued releases: ``request`` a Request or its serialized
        bytes; None only sends the releases. Returns the Reply; raises the reply's error when it
        is not OK. Descriptors are put in ``fds_out`` (a list) when given and refused
        otherwise."""
        if self.broken:
            raise UnavailableError(f"the connection to shmbrokerd at '{self.path}' was lost")
        if request is not None:
            payload = request if type(request) is bytes else request.SerializeToString()
            if len(payload) > self.max_request:
                raise InvalidArgumentError(
                    f"request of {len(payload)} bytes exceeds the protocol's {self.max_request}"
                )
        releases = self._take_releases()
        if request is None:  # a flush: the releases in packets of their own
            packets = self._release_packets(releases)
            if not packets and self.unread:
                self._exchange([])  # and the replies still unread (a fast attach's may warn)
        else:
            payload = self._ride(payload, releases)
            packets = self._release_packets(releases) + [payload]
        reply = None
        fds = []
        for start in range(0, len(packets), _PIPELINE):
            batch = packets[start : start + _PIPELINE]
            results = self._exchange(batch)
            last = request is not None and start + _PIPELINE >= len(packets)
            if last:
                data, fds = results.pop()
            for _, extra in results:  # detach replies: nothing to learn from them
                close_fds(extra)
            if last:
                try:
                    reply = pb.Reply.FromString(data)
                except BaseException as e:
                    close_fds(fds)
                    self.close()
                    if not isinstance(e, DecodeError):
                        raise  # a handler's, while it parsed
                    raise ProtocolError("the daemon's reply could not be parsed") from None
        if request is None:
            return None  # a release of an attachment the daemon already ended is no error
        try:
            if reply.code != Code.OK:
                raise error_for(reply.code, reply.message)
            # Out of step with the daemon: no later reply could be trusted either.
            if reply.WhichOneof("body") != expect:
                self.close()
                raise ProtocolError("the daemon answered with an unexpected reply")
            if fds and fds_out is None:
                self.close()
                raise ProtocolError("the daemon sent descriptors with a reply that takes none")
        except BaseException:
            close_fds(fds)
            raise
        if fds_out is not None:
            fds_out.extend(fds)
        return reply

    # -- mappings --

    def _region_released(self, rid):
        append = self.pending.append
        return lambda ref: _queue_release(append, (rid, ref))

    def map(self, request, prefault=None):
        """Create or attach: returns (anchor, address, MapInfo, writable). ``prefault`` is
        None, or (start, length) of the bytes about to be used (length None: all of them)."""
        held = []
        try:
            for _ in range(2):
                fds = []
                reply = self.call(request, "attach", fds)
                try:
                    result = self._materialize(reply.attach, fds, prefault)
                finally:
                    close_fds(fds)
                if result is not None:
                    return result
                # The region was unmapped after this request left (collected by another thread
                # or in the middle of the request), so the reply came without its descriptor.
                # Attach again asking for it, and only then give this attachment back: it may
                # be all that keeps a refcount segment alive.
                a = reply.attach
                held.append(a.attachment_id)
                request = pb.Request()
                request.attach.name = a.info.name
                request.attach.access = a.mapping.access
                request.attach.resend_fd = True
        finally:
            self.pending.extend(held)  # released with the next request
        raise ProtocolError("the daemon did not send the descriptor of a region not mapped here")

    def _materialize(self, a, fds, prefault):
        # Each field read once: every read of a protobuf field builds a Python object.
        m = a.mapping
        aid = a.attachment_id
        rid = m.region_id
        writable = m.access == pb.READ_WRITE
        offset, length, size, shared = m.offset, m.length, m.region_size, m.shared
        done = False
        try:
            info = map_info_from_wire(a.info)
            if (
                length != info.nbytes
                or offset > size
                or length > size - offset
                or info.dtype.itemsize * prod(info.shape) != info.nbytes
            ):
                raise ProtocolError(
                    "the daemon described a mapping that does not fit its region"
                )
            if length == 0:
                if fds:
                    raise ProtocolError("unexpected descriptor with the reply")
                anchor = np.ndarray.__new__(Anchor, (0,), np.uint8)
                address = anchor.__array_interface__["data"][0]
            else:
                if m.fd_attached:
                    if len(fds) != 1:
                        raise ProtocolError("expected one descriptor with the reply")
                    fd = fds.pop()
                    try:
                        view, base, ref = _mem.map_fd(
                            fd, size, writable, self._region_released(rid)
                        )
                    except OSError as e:
                        cls = Code.RESOURCE_EXHAUSTED if e.errno == errno.ENOMEM else Code.INTERNAL
                        raise error_for(
                            cls, f"cannot map segment '{info.name}': {e.strerror}"
                        ) from None
                    own = info.name if writable and not shared else None
                    self.regions[rid] = (ref, base, size, own)
                    if shared:
                        self.kept[rid] = view
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
                anchor = np.ndarray.__new__(Anchor, (length,), np.uint8, buffer=view, offset=offset)
                if anchor.base is not view:
                    # The unmap is tied to `view`: it must be what keeps the memory alive.
                    raise InternalError("this NumPy does not keep buffer= objects as base")
                address = base + offset
                if prefault is not None:
                    start, want = prefault
                    if want is None:
                        want = length
                    _mem.prefault(address, start, min(want, length - start), writable)
            self._bind(anchor, aid, (rid >> 1, offset, length) if shared and length else None)
            done = True
            return anchor, address, info, writable
        finally:
            if not done:
                # Give the attachment back with the next request.
                self.pending.append(aid)


def _check_fast_attach(name, data):
    """The late reply to a fast attach: its array is in use already, so a failure can only be
    reported. It means the segment was not held for it (a ticket the daemon refused, or one
    that lapsed while this process stalled for half the in-flight timeout). Warns (with
    RuntimeWarning) unless the reply is OK."""
    if reply_code(data) == Code.OK:
        return
    try:
        reply = pb.Reply.FromString(data)
    except Exception:
        return
    if reply.code != Code.OK:
        warnings.warn(
            f"shmbroker: the attach of '{name}', whose bytes were read before it was "
            f"confirmed, failed ({error_for(reply.code, reply.message)}); that array's memory "
            "may be reused",
            RuntimeWarning,
            stacklevel=2,
        )


_timens = (None, 0)


def time_namespace():
    """This process's time namespace (the inode of /proc/self/ns/time), 0 when unknown."""
    global _timens
    pid = os.getpid()
    if _timens[0] != pid:
        try:
            ino = os.stat("/proc/self/ns/time").st_ino
        except OSError:
            ino = 0
        _timens = (pid, ino)
    return _timens[1]


_BYTES = [bytes((i,)) for i in range(256)]


def _varint(n):
    if n < 0x80:
        return _BYTES[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Hand encoders for the requests of the hot path (create, attach, unlink, releases, a ticket),
# sent for every array made or shared: building a protobuf message costs several times more
# here. tests/test_wire_encoding.py checks that protobuf reads them as it would build them.


def _len_field(number, payload):  # numbers below 16: one-byte keys
    n = len(payload)
    return _BYTES[number << 3 | 2] + (_BYTES[n] if n < 0x80 else _varint(n)) + payload


def _uint_field(number, value):  # numbers below 16: one-byte keys
    return _BYTES[number << 3] + _varint(value) if value else b""


def encode_ticket(attachment_id, ticket):
    """Request{ticket: TicketRequest{attachment_id, ticket}}, serialized."""
    return _len_field(11, _uint_field(1, attachment_id) + _uint_field(2, ticket))


def encode_riding_ticket(attachment_id, ticket):
    """Request.tickets (field 17, a two-byte key) holding one TicketRequest: appended to a
    serialized Request, it rides on it."""
    inner = _uint_field(1, attachment_id) + _uint_field(2, ticket)
    return b"\x8a\x01" + _varint(len(inner)) + inner


def encode_attach(name, writable, owner_uid=None, wait_ms=None, sealed=False, ticket=0,
                  attachment_id=0, by_ticket=False, expect=None):
    """Request{attach: AttachRequest{...}}, serialized (``owner_uid`` and ``wait_ms`` are
    optional fields: None leaves them out; ``expect``: (region id, offset) of the bytes a
    pipelined attach reads, or None)."""
    body = _len_field(1, name.encode("utf-8"))
    if writable:
        body += b"\x10\x01"
    if owner_uid is not None:
        body += b"\x18" + _varint(owner_uid)
    if wait_ms is not None:
        body += b"\x20" + _varint(wait_ms)
    if sealed:
        body += b"\x28\x01"
    body += _uint_field(6, ticket) + _uint_field(8, attachment_id)
    if by_ticket:
        body += b"\x48\x01"
    if expect is not None:
        body += _uint_field(10, expect[0]) + _uint_field(11, expect[1])
    return _len_field(3, body)


def encode_unlink(name):
    """Request{unlink: UnlinkRequest{name}}, serialized."""
    return _len_field(5, _len_field(1, name.encode("utf-8")))


def encode_create_named(name, tail):
    """Request{create: CreateRequest} of ``name`` whose other fields are ``tail`` (create_tail)."""
    return _len_field(2, _len_field(1, name.encode("utf-8")) + tail)


def create_tail(dtype, shape, fortran, mode, lifetime, ttl_ms=None, attrs=None):
    """The serialized fields of a CreateRequest but its name: ``dtype`` a NumPy type string,
    ``shape`` ints in [0, 2^64), ``mode`` (always sent: the field is optional) and
    ``lifetime`` ints, ``ttl_ms`` None or an int, ``attrs`` None or a dict of str to str."""
    out = _len_field(2, dtype.encode("utf-8"))
    if shape:
        out += _len_field(3, b"".join([_varint(d) for d in shape]))  # packed
    if fortran:
        out += b"\x20\x01"
    out += b"\x28" + _varint(mode)
    if attrs:
        for k, v in attrs.items():
            entry = _len_field(1, k.encode("utf-8")) + _len_field(2, v.encode("utf-8"))
            out += _len_field(6, entry)
    if lifetime:
        out += b"\x38" + _varint(lifetime)
    if ttl_ms is not None:
        out += b"\x40" + _varint(ttl_ms)
    return out


def reply_code(data):
    """The code of a serialized Reply without parsing it all (its top-level fields are walked;
    only ``code``, field 1, is read). None when ``data`` is not a well-formed message."""
    i, n = 0, len(data)
    try:
        while i < n:
            key, i = _read_varint(data, i)
            kind = key & 7
            if kind == 0:
                value, i = _read_varint(data, i)
                if key >> 3 == 1:
                    return value
            elif kind == 2:
                length, i = _read_varint(data, i)
                i += length
            elif kind == 1:
                i += 8
            elif kind == 5:
                i += 4
            else:
                return None
    except IndexError:
        return None
    return Code.OK if i == n else None


def _read_varint(data, i):
    value = shift = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def close_fds(fds):
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass
