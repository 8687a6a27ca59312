"""With connect(ahead=True), create(None) of small refcount or connection arrays makes the next one
ahead, pipelined: after the first of a kind, such creates wait on no round trip. The spares are
real segments, named and charged; they go with the connection and give their memory back before
a create is refused (a connection's spare is unlinked when dropped). Off by default."""

import dataclasses
import gc
import os
import pickle
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest

import shmbroker
from shmbroker import _testing
from sbtest import eventually
from test_segment_lifetimes import _waited_round_trips, private_daemon

N = 512  # float64: a 4 KiB block


def _mine(client):
    """This process's segments with generated names."""
    return {s.name for s in client.list(f"auto/{os.getpid()}-*")}


@pytest.mark.parametrize("lifetime", ["refcount", "connection"])
def test_creates_after_the_first_wait_on_nothing(lifetime):
    c = shmbroker.connect(ahead=True)
    before = _mine(c)
    waited, ctx = _waited_round_trips(c)
    arrays = []
    with ctx:
        for i in range(10):
            a = c.create(None, N, lifetime=lifetime)
            assert a.flags.writeable and not a.any(), i  # zero-filled, as any create
            a[:] = i
            arrays.append(a)
    # The first; each later one was made ahead (reading replies already sent is no round trip).
    assert len([n for n in waited if n]) == 1, waited
    names = [shmbroker.segment_name(a) for a in arrays]
    assert len(set(names)) == 10
    for i, (a, name) in enumerate(zip(arrays, names)):
        info = c.stat(name)
        assert info.lifetime == lifetime and info.shape == (N,) and a.sum() == i * N
    assert len(_mine(c) - before - set(names)) == 1  # the spare
    del arrays, a
    gc.collect()
    c.flush()
    if lifetime == "refcount":
        assert len(_mine(c) - before) == 1  # only the spare is left
    c.close()
    # The spare went with the connection.
    assert eventually(lambda: not _mine(shmbroker.default_client()) - before)


def test_only_what_can_be_made_ahead_is():
    off = shmbroker.connect()
    before = _mine(off)
    a = off.create(None, N, lifetime="refcount")
    b = off.create(None, N, lifetime="refcount")
    off.flush()
    assert _mine(off) - before == {a.shm_name, b.shm_name}  # off by default: no spare
    del a, b
    off.close()
    c = shmbroker.connect(ahead=True)
    before = _mine(c)
    # Persistent (it would outlive the process), named, with ttl or attrs, large: no spare.
    kept = [
        c.create(None, N),
        c.create(None, N, lifetime="refcount", ttl=60),
        c.create(None, N, lifetime="refcount", attrs={"k": "v"}),
        c.create(None, 300_000, lifetime="refcount"),
    ]
    assert _mine(c) - before == {shmbroker.segment_name(a) for a in kept}
    for a in kept[:1]:
        c.unlink(shmbroker.segment_name(a))
    # One spare per kind, four kinds at most.
    made = [c.create(None, N + k, lifetime="refcount") for k in range(6)]
    c.flush()  # reads the replies: the spares pushed out are dropped...
    c.flush()  # ...and their releases sent
    spares = _mine(c) - before - {shmbroker.segment_name(a) for a in kept + made}
    assert len(spares) == 4, spares
    del kept, made
    c.close()


def test_connection_spares_pushed_out_are_unlinked():
    # A release alone would leave a connection's spare until the connection closes: one more for
    # every kind that comes and goes.
    c = shmbroker.connect(ahead=True)
    before = _mine(c)
    for k in range(20):
        a = c.create(None, N + k, lifetime="connection")
        c.unlink(shmbroker.segment_name(a))
        del a
    c.flush()
    assert len(_mine(c) - before) == 4  # the spares of the last four kinds
    c.close()


@pytest.mark.parametrize("lifetime", ["refcount", "connection"])
def test_spares_give_their_memory_back_before_a_create_is_refused(lifetime):
    # 192 KiB of room: a 64 KiB array and its spare leave 64 KiB, too little for 128 KiB, unless
    # the spare goes (a connection's spare is unlinked too: its release alone frees nothing).
    with private_daemon("--max-memory", "192K") as daemon_client:
        c = shmbroker.connect(daemon_client.socket_path, ahead=True)
        a = c.create(None, 8192, lifetime=lifetime)  # 64 KiB
        b = c.create(None, 8192, lifetime=lifetime)  # the spare: taken; another one is made
        c.flush()
        assert c.stats().bytes_held == 3 * 65536
        d = c.create(None, 16384, dtype="f4", lifetime=lifetime)  # 64 KiB of another kind
        assert d.nbytes == 65536
        with pytest.raises(shmbroker.ResourceExhaustedError):
            c.create(None, 16384, lifetime=lifetime)  # 128 KiB: refused, even without spares
        del a, b, d
        gc.collect()
        c.close()


def test_a_forked_child_has_no_spares_of_its_parent():
    c = shmbroker.connect(ahead=True)
    a = c.create(None, N, lifetime="refcount")
    conn = _testing.connection(c)
    assert conn.spares
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            b = c.create(None, N, lifetime="refcount")  # a new connection, a fresh one
            ok = not b.any() and shmbroker.segment_name(b) != shmbroker.segment_name(a)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(r)
    np.testing.assert_array_equal(a, 0)
    c.close()


class _CountingSocket:
    """The connection's socket, counting the packets sent whose body is a create or a ticket
    (not releases of their own: auto_share's releaser thread, if an earlier test started it,
    sends those when it likes)."""

    def __init__(self, sock):
        self.sock = sock
        self.sent = 0

    def send(self, data, *flags):
        if bytes(data[:1]) in (b"\x12", b"\x5a"):  # Request.create (2), Request.ticket (11)
            self.sent += 1
        return self.sock.send(data, *flags)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def _sends(client):
    """(the context that counts the packets ``client`` sends, a function giving the count)."""
    box = []

    def wrap(sock):
        box.append(_CountingSocket(sock))
        return box[0]

    return _testing.interpose_socket(wrap, client), lambda: box[0].sent


@pytest.mark.parametrize("rides", [True, False])
def test_a_pickled_arrays_ticket_rides_on_the_next_spares_create(rides):
    # Arrays made ahead and pickled one after another: once the client has seen its kind
    # pickled, the next spare's create waits for the ticket and carries it, one packet per
    # cycle. A daemon that does not say it applies riding tickets gets them alone (two).
    c = shmbroker.connect(ahead=True)
    conn = _testing.connection(c)
    if not rides:
        conn.server = dataclasses.replace(conn.server, tickets_ride=False)
    ctx, sent = _sends(c)
    blobs, per_cycle = [], []
    with ctx:
        for i in range(1, 7):
            before = sent()
            a = c.create(None, N, lifetime="refcount")
            assert not a.any(), i
            a[:] = i
            blobs.append(ForkingPickler.dumps(a))
            per_cycle.append(sent() - before)
            del a
        assert per_cycle[2:] == [1 if rides else 2] * 4, per_cycle
        # Made without pickling: x's spare waits for a ticket that does not come; y sends it
        # and then the next one at once, as does z.
        made = [c.create(None, N, lifetime="refcount")]
        for _ in range(2):
            before = sent()
            made.append(c.create(None, N, lifetime="refcount"))
            per_cycle.append(sent() - before)
        assert per_cycle[-2:] == ([2, 1] if rides else [1, 1]), per_cycle
    assert not any(a.any() for a in made) and len({a.shm_name for a in made}) == 3
    # Every array was held for its pickle: none is left to the producer, all still readable.
    gc.collect()
    c.flush()
    for i, blob in enumerate(blobs, 1):
        b = pickle.loads(blob)
        assert b.shape == (N,) and (b == i).all(), i
        del b
    c.close()


@pytest.mark.parametrize("ahead", [True, False])
def test_a_closed_client_leaves_nothing_held(ahead):
    # close() sends the releases still queued and gives the spares back, one whose reply is
    # still unread included, before it hangs up: the daemon keeps a block attached at
    # disconnect until the process exits (its arrays stay valid), so a long-lived process that
    # makes short-lived clients held one or two blocks per client. Found by review.
    with private_daemon() as watcher:
        for _ in range(20):
            c = shmbroker.connect(watcher.socket_path, ahead=ahead)
            a = c.create(None, 64, np.uint8, lifetime="refcount")
            del a
            c.close()

        def nothing_held():
            s = watcher.stats()
            return s.segments == 0 and s.unlinked_segments == 0

        assert eventually(nothing_held), watcher.stats()
        # An array that outlives its client keeps its block, and only that.
        c = shmbroker.connect(watcher.socket_path, ahead=ahead)
        kept = c.create(None, 64, np.uint8, lifetime="refcount")
        kept[:] = 9
        c.close()
        assert eventually(lambda: watcher.stats().unlinked_segments == 1)
        assert watcher.stats().segments == 0 and (kept == 9).all()
        # Once this process maps it no more, the daemon lets it go: it need not exit.
        del kept
        gc.collect()
        assert eventually(lambda: watcher.stats().unlinked_segments == 0, timeout=5), (
            watcher.stats()
        )


@pytest.mark.parametrize("ahead", [True, False])
@pytest.mark.parametrize("order", ["arrays first", "client first"])
def test_a_dropped_client_leaves_nothing_held(ahead, order):
    # A client dropped without close(): its connection goes with its last array (each holds
    # it), and says so: every attachment it had ends then. Found by review: the releases queued
    # were dropped with it, so the daemon held each block until the process exited.
    with private_daemon() as watcher:
        for _ in range(20):
            c = shmbroker.connect(watcher.socket_path, ahead=ahead)
            a = c.create(None, 512, lifetime="refcount")
            b = c.attach(a.shm_name)
            assert b.shape == a.shape
            if order == "arrays first":
                del a, b
                del c
            else:
                del c
                del a, b
            gc.collect()

        def nothing_held():
            s = watcher.stats()
            return s.segments == 0 and s.unlinked_segments == 0 and s.clients == 1

        assert eventually(nothing_held), watcher.stats()


def test_the_releaser_thread_keeps_no_client_alive():
    # auto_share's releaser thread sends queued releases for every client. Found by a test
    # above run after auto_share's: its list of clients stayed in its frame while it waited,
    # so every client it had seen stayed alive, connected, holding its blocks.
    from shmbroker import _auto

    _auto._start_releaser()
    with private_daemon() as watcher:
        for _ in range(20):
            c = shmbroker.connect(watcher.socket_path)
            a = c.create(None, 512, lifetime="refcount")
            del a  # wakes the releaser, which sends the release
            del c
            gc.collect()

        def nothing_held():
            s = watcher.stats()
            return s.segments == 0 and s.unlinked_segments == 0 and s.clients == 1

        assert eventually(nothing_held), watcher.stats()
