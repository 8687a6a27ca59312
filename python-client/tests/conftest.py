"""Test fixtures: one private shmbrokerd for the whole session.

The daemon is $SHMBROKER_BUILD_DIR/bin/shmbrokerd (default: the repository's build/), started on a
socket in a temporary directory; $SHMBROKER_SOCKET points every client of the session, including
child processes, at it. It is stopped with SIGTERM at the end and must exit 0 without having
logged a protocol error.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CLIENT_ROOT = os.path.dirname(HERE)
REPO = os.path.dirname(CLIENT_ROOT)
BUILD_DIR = os.environ.get("SHMBROKER_BUILD_DIR") or os.path.join(REPO, "build")
DAEMON = os.path.join(BUILD_DIR, "bin", "shmbrokerd")
INTEROP = os.path.join(BUILD_DIR, "bin", "shmbroker_interop")
MAX_MEMORY = 1 << 30  # --max-memory of the test daemon

# The test daemon ignores a configuration file the machine may have (empty: none).
os.environ["SHMBROKERD_CONFIG"] = ""
# Children started by the tests import this checkout of the package.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (CLIENT_ROOT, HERE, os.environ.get("PYTHONPATH")) if p
)


def _wait_for_socket(path, proc, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            s.connect(path)
            return True
        except OSError:
            time.sleep(0.02)
        finally:
            s.close()
    return False


class Daemon:
    def __init__(self, socket_path, log_path, proc):
        self.socket = socket_path
        self.log = log_path
        self.proc = proc

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()


@pytest.fixture(scope="session", autouse=True)
def daemon():
    if not os.access(DAEMON, os.X_OK):
        pytest.fail(
            f"no daemon at {DAEMON}: build it (ninja -C build shmbrokerd) or set "
            "SHMBROKER_BUILD_DIR",
            pytrace=False,
        )
    tmp = tempfile.mkdtemp(prefix="shmbroker-pytest-")
    os.chmod(tmp, 0o755)  # the permission tests connect as another user
    sock = os.path.join(tmp, "shmbrokerd.sock")
    log_path = os.path.join(tmp, "shmbrokerd.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [DAEMON, "--socket", sock, "--log-level", "warn", "--max-memory", str(MAX_MEMORY)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    old = os.environ.get("SHMBROKER_SOCKET")
    os.environ["SHMBROKER_SOCKET"] = sock
    d = Daemon(sock, log_path, proc)
    try:
        if not _wait_for_socket(sock, proc):
            proc.kill()
            pytest.fail(f"shmbrokerd did not start:\n{d.log_text()}", pytrace=False)
        yield d
        import shmbroker

        leftover = [i.name for i in shmbroker.list("pytest/*")]
    finally:
        from shmbroker import _testing

        _testing.reset_default_client()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        text = d.log_text()
        if old is None:
            os.environ.pop("SHMBROKER_SOCKET", None)
        else:
            os.environ["SHMBROKER_SOCKET"] = old
        shutil.rmtree(tmp, ignore_errors=True)
    assert rc == 0, f"shmbrokerd exited with {rc}:\n{text}"
    assert not leftover, f"segments left behind by the tests: {leftover[:10]}"
    assert "protocol error" not in text, f"the daemon saw protocol errors:\n{text}"


@pytest.fixture
def names(request):
    """A factory of segment names unique to the test; its segments are removed afterwards."""
    prefix = f"pytest/{request.node.name[:80]}/{uuid.uuid4().hex[:8]}/"
    prefix = "".join(c if 32 < ord(c) < 127 else "_" for c in prefix)
    counter = iter(range(1 << 30))

    def make(suffix=None):
        return prefix + (suffix if suffix is not None else str(next(counter)))

    make.prefix = prefix
    yield make
    import shmbroker

    try:
        shmbroker.purge([glob_escape(prefix) + "*"])
    except shmbroker.Error:
        pass


def glob_escape(s):
    return "".join(f"[{c}]" if c in "*?[]\\" else c for c in s)

