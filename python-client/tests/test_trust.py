"""A client talks only to a daemon it has reason to trust (root's, its own user's, or one it was
told to trust): a daemon run by another user is refused before a byte is sent."""

import os
import shutil
import signal
import subprocess
import tempfile

import pytest

import shmbroker
from conftest import DAEMON, _wait_for_socket
from sbtest import run_python

NOBODY = 65534


@pytest.fixture
def nobodys_daemon():
    tmp = tempfile.mkdtemp(prefix="shmbroker-pytest-other-")
    os.chmod(tmp, 0o755)
    os.chown(tmp, NOBODY, NOBODY)
    sock = os.path.join(tmp, "s.sock")
    proc = subprocess.Popen(
        [DAEMON, "--socket", sock, "--log-level", "warn"],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
    )
    try:
        assert _wait_for_socket(sock, proc), "the daemon run by nobody did not start"
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_daemon_run_by_another_user_is_refused(nobodys_daemon):
    with pytest.raises(shmbroker.UnavailableError) as e:
        shmbroker.connect(nobodys_daemon)
    assert nobodys_daemon in str(e.value)
    assert "65534 (nobody)" in str(e.value)
    assert "SHMBROKER_TRUST_UID" in str(e.value)


def test_trusting_that_user_explicitly(nobodys_daemon, monkeypatch):
    with shmbroker.connect(nobodys_daemon, trusted_uid="nobody") as c:
        assert c.stats().segments == 0
    with shmbroker.connect(nobodys_daemon, trusted_uid=NOBODY) as c:
        assert c.stats().segments == 0
    monkeypatch.setenv("SHMBROKER_TRUST_UID", str(NOBODY))
    with shmbroker.connect(nobodys_daemon) as c:
        assert c.stats().segments == 0
    # Trusting someone else does not trust nobody.
    with pytest.raises(shmbroker.UnavailableError):
        shmbroker.connect(nobodys_daemon, trusted_uid=1)
    monkeypatch.setenv("SHMBROKER_TRUST_UID", "no such user here")
    with pytest.raises(shmbroker.InvalidArgumentError, match="SHMBROKER_TRUST_UID"):
        shmbroker.connect(nobodys_daemon)


def test_a_root_owned_directory_vouches_for_the_socket(nobodys_daemon):
    # Only root can have left a socket in a directory that root owns and no one else may write.
    directory = os.path.dirname(nobodys_daemon)
    os.chown(directory, 0, 0)
    try:
        with shmbroker.connect(nobodys_daemon) as c:
            assert c.stats().segments == 0
        os.chmod(directory, 0o777)
        with pytest.raises(shmbroker.UnavailableError):
            shmbroker.connect(nobodys_daemon)
    finally:
        os.chmod(directory, 0o755)


def test_tilde_user_names_and_attach_owner(names):
    # nobody squats a plain name and is refused root's namespace.
    squat = names("squat")
    code = f"""
import shmbroker
try:
    shmbroker.create("~root/{squat}", (4,))
except shmbroker.PermissionDeniedError as e:
    assert "root" in str(e)
else:
    raise SystemExit("~root/ was open to nobody")
shmbroker.create("{squat}", (4,), mode=0o644)
"""
    run_python(code, user=NOBODY, group=NOBODY, extra_groups=[])
    try:
        with pytest.raises(shmbroker.PermissionDeniedError, match="owned by uid 65534"):
            shmbroker.attach(squat, owner="root")
        assert shmbroker.attach(squat, owner="nobody").shape == (4,)
        assert shmbroker.attach(squat, owner=NOBODY).shape == (4,)
        with pytest.raises(shmbroker.InvalidArgumentError, match="no such user"):
            shmbroker.attach(squat, owner="no-such-user-here")
        mine = "~root/" + squat
        shmbroker.create(mine, (2,))
        try:
            assert shmbroker.attach(mine, owner=0).shape == (2,)
        finally:
            shmbroker.unlink(mine)
    finally:
        shmbroker.unlink(squat)
