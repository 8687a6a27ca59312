"""The API: create/attach/share/unlink/stat/list, errors, socket path resolution."""

import datetime
import errno
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import shmbroker
from conftest import glob_escape
from conftest import MAX_MEMORY
from sbtest import eventually, run_python


def test_create_attach_roundtrip(names):
    name = names()
    a = shmbroker.create(name, (3, 4), "int32", attrs={"unit": "m", "by": "test"})
    assert isinstance(a, shmbroker.SharedArray)
    assert a.shape == (3, 4) and a.dtype == np.int32 and a.flags.writeable
    assert not a.any(), "a new segment is zero-filled"
    a[...] = np.arange(12).reshape(3, 4)
    b = shmbroker.attach(name)
    assert b.shape == (3, 4) and b.dtype == np.int32 and not b.flags.writeable
    np.testing.assert_array_equal(b, np.arange(12).reshape(3, 4))
    a[1, 2] = -7
    assert b[1, 2] == -7, "the same memory, not a copy"
    assert a.shm_name == name and shmbroker.segment_name(b[1:]) == name
    w = shmbroker.attach(name, writable=True)
    w[0, 0] = 99
    assert a[0, 0] == 99 and b[0, 0] == 99


def test_stat_has_all_metadata(names):
    name = names()
    before = datetime.datetime.now(datetime.timezone.utc)
    a = shmbroker.create(name, (2, 5, 3), ">f4", order="F", mode=0o640, attrs={"k": "v é"})
    info = shmbroker.stat(name)
    assert info.name == name
    assert info.dtype == np.dtype(">f4") and info.dtype.str == ">f4"
    assert info.shape == (2, 5, 3) and info.order == "F"
    assert info.nbytes == 2 * 5 * 3 * 4 == a.nbytes
    assert info.uid == os.geteuid() and info.gid == os.getegid()
    assert info.owner and info.creator_pid == os.getpid()
    assert info.mode == 0o640
    assert before - datetime.timedelta(seconds=5) <= info.created
    assert info.created <= datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(1)
    assert info.attachments == 1 and info.creator_connected
    assert info.attrs == {"k": "v é"}
    assert a.flags.f_contiguous and not a.flags.c_contiguous
    b = shmbroker.attach(name)
    assert b.flags.f_contiguous and b.strides == a.strides
    info = shmbroker.stat(name)
    assert info.attachments == 2
    (holder,) = info.holders  # this process's one connection holds both
    assert holder == shmbroker.Holder(
        pid=os.getpid(), uid=os.geteuid(), client_name=holder.client_name, attachments=2,
        writable=1,
    )
    assert holder.client_name.startswith("python:")
    assert shmbroker.list(name)[0].holders == ()  # stat only


def test_stat_says_when_holders_are_cut_short(names):
    name = names()
    shmbroker.create(name, 8, "|u1")
    clients = [shmbroker.connect() for _ in range(101)]
    try:
        arrays = [c.attach(name) for c in clients]
        info = shmbroker.stat(name)
        assert len(info.holders) == 100 and info.holders_truncated
        del arrays
    finally:
        for c in clients:
            c.close()
    assert eventually(lambda: not shmbroker.stat(name).holders_truncated)


def test_times_are_exact_and_floored():
    # The daemon's nanoseconds, floored to datetime's microseconds: never rounded up into the
    # next millisecond (or second) that shmctl would not show.
    from shmbroker._types import utc

    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    assert utc(1795000000999999999) == datetime.datetime(
        2026, 11, 18, 11, 6, 40, 999999, tzinfo=datetime.timezone.utc
    )
    assert utc(0) == epoch
    assert utc(-1) == epoch - datetime.timedelta(microseconds=1)


def test_share_copies_and_keeps_layout(names):
    src = np.asfortranarray(np.random.default_rng(1).random((7, 9)))
    a = shmbroker.share(src, names("f"))
    np.testing.assert_array_equal(a, src)
    assert a.flags.f_contiguous and shmbroker.stat(names("f")).order == "F"
    src[0, 0] = -1
    assert a[0, 0] != -1, "share copies"
    c = shmbroker.share(np.arange(10)[::2], names("c"))
    np.testing.assert_array_equal(shmbroker.attach(names("c")), [0, 2, 4, 6, 8])
    assert c.flags.c_contiguous


def test_list_and_pattern(names):
    for s in ("a/1", "a/2", "b/1"):
        shmbroker.create(names(s), 4, "u1")
    got = [i.name for i in shmbroker.list(names.prefix + "a/*")]
    assert got == [names("a/1"), names("a/2")]
    everything = [i.name for i in shmbroker.list()]
    assert {names("a/1"), names("a/2"), names("b/1")} <= set(everything)
    assert everything == sorted(everything)
    assert shmbroker.list(names.prefix + "nothing*") == []


def test_list_pages_through_long_replies(names):
    # Replies are capped (96 KiB); 150 segments with 1 KiB of attributes each need pages.
    big = {"pad": "x" * 1000}
    created = [names(f"{i:04d}") for i in range(150)]
    for n in created:
        shmbroker.create(n, (), "u1", attrs=big)
    listed = shmbroker.list(names.prefix + "*")
    assert [i.name for i in listed] == created
    assert all(i.attrs == big for i in listed)


def test_unlink_keeps_mappings_valid(names):
    name = names()
    a = shmbroker.create(name, 1000, "f8")
    a[:] = 3.0
    b = shmbroker.attach(name)
    shmbroker.unlink(name)
    with pytest.raises(shmbroker.NotFoundError):
        shmbroker.stat(name)
    a[5] = 4.0
    assert b.sum() == 3.0 * 999 + 4.0
    # The name is free again.
    c = shmbroker.create(name, 2, "f8")
    assert c.sum() == 0


def test_zero_size_and_zero_d(names):
    z = shmbroker.create(names("z"), (0, 3), "f8")
    assert z.shape == (0, 3) and z.size == 0
    assert shmbroker.attach(names("z")).shape == (0, 3)
    s = shmbroker.create(names("s"), (), "c16")
    s[()] = 1 + 2j
    assert shmbroker.attach(names("s"))[()] == 1 + 2j


def test_errors_are_typed(names):
    name = names()
    with pytest.raises(shmbroker.NotFoundError) as e:
        shmbroker.attach(name)
    assert isinstance(e.value, KeyError) and isinstance(e.value, FileNotFoundError)
    assert e.value.code == shmbroker.Code.NOT_FOUND and e.value.errno == errno.ENOENT
    assert name in str(e.value)

    shmbroker.create(name, 1, "u1")
    with pytest.raises(FileExistsError) as e:
        shmbroker.create(name, 1, "u1")
    assert isinstance(e.value, shmbroker.AlreadyExistsError) and name in str(e.value)

    with pytest.raises(ValueError) as e:
        shmbroker.create("has space", 1, "u1")
    assert isinstance(e.value, shmbroker.InvalidArgumentError)
    assert e.value.code == shmbroker.Code.INVALID_ARGUMENT
    with pytest.raises(shmbroker.InvalidArgumentError, match="mode"):
        shmbroker.create(names("m"), 1, "u1", mode=0o1000)
    with pytest.raises(shmbroker.InvalidArgumentError):
        shmbroker.create(names("o"), 1, object)
    with pytest.raises(shmbroker.InvalidArgumentError):
        shmbroker.create(names("r"), 1, [("a", "<i4"), ("b", "<f8")])
    with pytest.raises(shmbroker.InvalidArgumentError):
        shmbroker.create(names("n"), (-1,), "u1")
    with pytest.raises(shmbroker.InvalidArgumentError, match="out of range"):
        shmbroker.create(names("n"), (2, 2**64), "u1")  # not a uint64
    with pytest.raises(shmbroker.InvalidArgumentError, match="exceeds"):
        shmbroker.stat("x" * 70000)  # larger than a request may be; never sent

    with pytest.raises(MemoryError) as e:
        shmbroker.create(names("big"), MAX_MEMORY + 1, "u1")
    assert isinstance(e.value, shmbroker.ResourceExhaustedError)
    assert str(MAX_MEMORY + 1) in str(e.value)
    with pytest.raises(shmbroker.NotFoundError):
        shmbroker.stat(names("big"))
    # The connection is still fine after errors.
    assert shmbroker.stat(name).nbytes == 1


def test_unavailable_names_the_path(tmp_path):
    path = str(tmp_path / "nobody-here.sock")
    with pytest.raises(shmbroker.UnavailableError) as e:
        shmbroker.connect(path)
    assert path in str(e.value) and isinstance(e.value, ConnectionError)
    assert e.value.code == shmbroker.Code.UNAVAILABLE


def test_permissions_for_another_user(names, daemon):
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    private = names("private")
    readable = names("readable")
    shmbroker.create(private, 10, "u1", mode=0o600)
    r = shmbroker.create(readable, 10, "u1", mode=0o644)
    r[:] = 7
    code = f"""
import os, shmbroker
os.setgid(65534); os.setuid(65534)
try:
    shmbroker.attach({private!r})
except PermissionError as e:
    assert isinstance(e, shmbroker.PermissionDeniedError), type(e)
    assert e.code == shmbroker.Code.PERMISSION_DENIED
    print("denied:", e)
else:
    raise SystemExit("attach of a 0600 segment of root succeeded")
a = shmbroker.attach({readable!r})
assert a.sum() == 70 and not a.flags.writeable
try:
    shmbroker.attach({readable!r}, writable=True)
except shmbroker.PermissionDeniedError:
    pass
else:
    raise SystemExit("read-write attach of a 0644 segment succeeded")
try:
    shmbroker.unlink({readable!r})
except shmbroker.PermissionDeniedError:
    print("ok")
"""
    out = run_python(code).stdout
    assert "denied:" in out and "ok" in out


def test_explicit_client(names, daemon):
    with shmbroker.connect(daemon.socket, client_name="python:test") as c:
        assert c.socket_path == daemon.socket
        assert c.server.version and c.server.pid == daemon.proc.pid
        assert c.server.max_memory == MAX_MEMORY
        a = c.create(names(), 5, "i8")
        a[:] = 5
        st = c.stats()
        assert st.pid == daemon.proc.pid and st.segments >= 1 and st.requests["create"] >= 1
    # Closed: the arrays stay valid, the client does not.
    assert a.sum() == 25
    with pytest.raises(shmbroker.UnavailableError):
        c.stat(names())


def test_purge(names):
    for i in range(3):
        shmbroker.create(names(f"p{i}"), 1, "u1")
    dry = shmbroker.purge(names.prefix + "p*", dry_run=True)
    assert dry.removed_count == 3 and len(shmbroker.list(names.prefix + "*")) == 3
    r = shmbroker.purge([names.prefix + "p*"])
    assert r.removed_count == 3 and [x[0] for x in r.removed] == [names(f"p{i}") for i in range(3)]
    assert shmbroker.list(names.prefix + "*") == []
    with pytest.raises(shmbroker.InvalidArgumentError):
        shmbroker.purge()


def test_purge_takes_shmctls_selectors(names):
    import pwd

    me = pwd.getpwuid(os.geteuid()).pw_name
    pattern = glob_escape(names.prefix) + "*"
    kept = shmbroker.create(names("attached"), 1, "u1")
    for i in range(2):
        shmbroker.create(names(f"free{i}"), 1, "u1")  # dropped at once: unattached
    shmbroker.flush()
    assert shmbroker.purge(pattern, older_than="2h", dry_run=True).removed_count == 0
    assert shmbroker.purge(pattern, older_than="0s", dry_run=True).removed_count == 3
    assert shmbroker.purge(pattern, older_than=datetime.timedelta(hours=1),
                           dry_run=True).removed_count == 0
    assert shmbroker.purge(pattern, older_than=0, dry_run=True).removed_count == 3
    assert shmbroker.purge(pattern, owner=me, dry_run=True).removed_count == 3
    assert shmbroker.purge(pattern, owner=os.geteuid(), dry_run=True).removed_count == 3
    assert shmbroker.purge(pattern, owner=os.geteuid() + 1, dry_run=True).removed_count == 0
    # This connection created them all and is open: no orphans.
    assert shmbroker.purge(pattern, orphans=True, dry_run=True).removed_count == 0
    r = shmbroker.purge(pattern, unattached=True)
    assert sorted(x[0] for x in r.removed) == [names("free0"), names("free1")]
    assert [i.name for i in shmbroker.list(pattern)] == [names("attached")]
    assert kept.shm_name == names("attached")


@pytest.mark.parametrize(
    "selectors, error",
    [
        ({"older_than": "5"}, shmbroker.InvalidArgumentError),  # a unit is required
        ({"older_than": "2 hours"}, shmbroker.InvalidArgumentError),
        ({"older_than": -1}, shmbroker.InvalidArgumentError),
        ({"owner": "no-such-user-shmbroker"}, shmbroker.InvalidArgumentError),
        ({"owner": -5}, shmbroker.InvalidArgumentError),
        ({"bogus": True}, TypeError),
    ],
)
def test_purge_rejects_bad_selectors(selectors, error):
    with pytest.raises(error):
        shmbroker.purge("pytest/none/*", dry_run=True, **selectors)


def test_socket_path_resolution(monkeypatch, tmp_path):
    import socket

    from shmbroker import _connection
    from shmbroker import resolve_socket_path as resolve

    monkeypatch.setattr(_connection, "SYSTEM_SOCKET", str(tmp_path / "none.sock"))
    assert resolve("/x/y.sock") == "/x/y.sock"
    monkeypatch.setenv("SHMBROKER_SOCKET", "/env/s.sock")
    assert resolve() == "/env/s.sock"
    assert resolve("/explicit") == "/explicit"
    monkeypatch.setenv("SHMBROKER_SOCKET", "")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert resolve() == str(tmp_path / "none.sock")  # root: the system service's path
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert resolve() == "/run/user/1000/shmbroker/shmbroker.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert resolve() == "/tmp/shmbroker-1000/shmbroker.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")
    assert resolve() == "/tmp/shmbroker-1000/shmbroker.sock"
    # Other users look for the system service's socket first, when there is one.
    system = tmp_path / "system.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.bind(str(system))
        monkeypatch.setattr(_connection, "SYSTEM_SOCKET", str(system))
        assert resolve() == str(system)


def test_default_client_is_lazy_and_per_process():
    # A fresh interpreter: importing connects nothing; the first call does.
    code = """
import os, shmbroker
from shmbroker import _testing
assert not _testing.default_client_exists()
shmbroker.list()
c = shmbroker.default_client()
conn = _testing.connection(c)
assert conn is not None and _testing.connection_pid(conn) == os.getpid()
print(c.socket_path)
"""
    assert run_python(code).stdout.strip() == os.environ["SHMBROKER_SOCKET"]


def _start_daemon(env):
    from conftest import DAEMON

    proc = subprocess.Popen([DAEMON, "--log-level", "warn"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc


def _stop_daemon(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_daemon_and_client_resolve_the_same_path(tmp_path):
    # The daemon started without --socket and a client without a path meet through
    # $SHMBROKER_SOCKET, and reconnect by themselves after a daemon restart.
    from conftest import _wait_for_socket

    sock = str(tmp_path / "resolved.sock")
    env = dict(os.environ, SHMBROKER_SOCKET=sock)
    proc = _start_daemon(env)
    try:
        assert _wait_for_socket(sock, proc)
        code = """
import os, signal, sys, time, shmbroker
a = shmbroker.create("resolved/x", 10, "f8")
a[:] = 1
assert shmbroker.default_client().socket_path == os.environ["SHMBROKER_SOCKET"]
print("created", flush=True)
sys.stdin.readline()  # the daemon restarts meanwhile
try:
    shmbroker.stat("resolved/x")
except shmbroker.UnavailableError as e:
    assert os.environ["SHMBROKER_SOCKET"] in str(e), e
else:
    raise SystemExit("the old connection still answered")
assert a.sum() == 10, "mappings outlive the connection"
try:
    shmbroker.stat("resolved/x")  # reconnects to the new daemon, which has no such segment
except shmbroker.NotFoundError:
    print("reconnected")
"""
        child = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdout.readline() == "created\n"
        _stop_daemon(proc)
        proc = _start_daemon(env)
        assert _wait_for_socket(sock, proc)
        out, _ = child.communicate("go\n", timeout=60)
        assert child.returncode == 0 and out.strip() == "reconnected"
    finally:
        if proc.poll() is None:
            _stop_daemon(proc)


def test_stats_counts_errors():
    before = shmbroker.stats().errors.get("NOT_FOUND", 0)
    with pytest.raises(KeyError):
        shmbroker.attach("pytest/certainly/missing/" + str(time.time()))
    assert shmbroker.stats().errors["NOT_FOUND"] == before + 1


def test_prefault_is_a_per_call_choice(names, daemon):
    from sbtest import mapping_rss

    size = 8 << 20
    lazy = shmbroker.create(names(), size, "u1", prefault=False)
    assert mapping_rss(lazy) < size // 4, "no page-table entries until touched"
    eager = shmbroker.create(names(), size, "u1", prefault=True)
    assert mapping_rss(eager) >= size
    assert mapping_rss(shmbroker.attach(eager.shm_name, prefault=False)) < size // 4
    assert mapping_rss(shmbroker.attach(lazy.shm_name)) >= size, "the default prefaults"
    # A client whose default is off, overridden per call.
    with shmbroker.connect(daemon.socket, prefault=False) as c:
        assert mapping_rss(c.create(names(), size, "u1")) < size // 4
        assert mapping_rss(c.create(names(), size, "u1", prefault=True)) >= size


def test_unlinked_but_held_memory_counts_until_released(names):
    # Other tests' closed connections may leave blocks held until this process exits (it may
    # still map them): count from here.
    s0 = shmbroker.stats()
    n = names("held")
    a = shmbroker.create(n, (1000,), "uint8")
    shmbroker.unlink(n)
    s = shmbroker.stats()
    assert (s.unlinked_segments - s0.unlinked_segments,
            s.unlinked_bytes - s0.unlinked_bytes) == (1, 1000)
    held = shmbroker.list(n, unlinked=True)
    assert [(i.name, i.unlinked) for i in held] == [(n, True)]
    assert [h.pid for h in held[0].holders] == [os.getpid()]
    assert s.limits.max_connections_per_user == 256
    assert s.limits.handshake_timeout == 10.0
    del a
    shmbroker.flush()
    s = shmbroker.stats()
    assert (s.unlinked_segments, s.unlinked_bytes) == (s0.unlinked_segments, s0.unlinked_bytes)
    assert shmbroker.list(n, unlinked=True) == []


def test_list_unlinked_pages_through_them_all(names):
    # Far more than one reply holds; the same name unlinked twice is listed twice.
    prefix = names("gone")
    held = []
    for i in range(1500):
        n = f"{prefix}/{i % 1400}"
        held.append(shmbroker.create(n, 8, "uint8"))
        shmbroker.unlink(n)
    listed = shmbroker.list(prefix + "/*", unlinked=True)
    assert len(listed) == 1500
    assert sorted(i.name for i in listed) == sorted(f"{prefix}/{i % 1400}" for i in range(1500))
    del held


def test_releases_ride_encoded_as_protobuf_would():
    # The hand encoding of Request.releases (appended to a serialized request) must parse as
    # the same message protobuf would build.
    from shmbroker._connection import Connection
    from shmbroker._wire import pb

    rng = random.Random(7)
    values = [0, 1, 127, 128, 300, 2**32, 2**63, 2**64 - 1]
    for _ in range(500):
        releases = [(rng.choice(values), rng.choice(values)) for _ in range(rng.randint(0, 6))]
        want = pb.Request()
        want.stat.name = "x"
        for aid, rid in releases:
            d = want.releases.add()
            d.attachment_id = aid
            d.released_region_id = rid
        base = pb.Request()
        base.stat.name = "x"
        got = pb.Request.FromString(base.SerializeToString() + Connection._releases_field(releases))
        assert got == want, releases
