"""A small seam for the package's own tests: what they observe or interpose on, in one place, so
that the internals can change without the tests reaching into private attributes. Not an API.
"""

import contextlib

from . import client as _client


def connection(client=None):
    """The client's current connection (the default client's when None), or None."""
    c = client if client is not None else _client.default_client()
    return c._conn


def connection_pid(conn):
    """The process that opened ``conn``."""
    return conn.pid


def connection_is_open(conn):
    return conn.sock is not None


def default_client_exists():
    """Whether this process has made its default client yet."""
    return _client._default is not None


def reset_default_client():
    """Closes this process's default client and forgets it."""
    c = _client._default
    if c is not None:
        c.close()
        _client._default = None


def live_region_mappings(client=None):
    """How many of the connection's cached region mappings are still mapped."""
    conn = connection(client)
    return sum(1 for entry in conn.regions.values() if entry[0]() is not None)


@contextlib.contextmanager
def interpose_socket(wrap, client=None):
    """For the block, the connection talks through ``wrap(socket)``."""
    conn = connection(client)
    original = conn.sock
    conn.sock = wrap(original)
    try:
        yield
    finally:
        conn.sock = original


@contextlib.contextmanager
def interpose_release_queue(queue, client=None):
    """For the block, garbage-collector callbacks append releases to ``queue`` (a deque)."""
    conn = connection(client)
    original = conn.pending
    queue.extend(original)
    conn.pending = queue
    try:
        yield
    finally:
        original.clear()
        original.extend(queue)
        conn.pending = original


@contextlib.contextmanager
def interpose_exchange(fn, client=None):
    """For the block, each batch of packets goes through ``fn(original_exchange, packets)``."""
    conn = connection(client)
    original = conn._exchange
    conn._exchange = lambda packets: fn(original, packets)
    try:
        yield
    finally:
        del conn._exchange


def auto_share_setting():
    """min_bytes of the auto_share call in force in this process, or None when it is off."""
    from . import _auto

    return _auto._min_bytes


def reset_auto_share():
    """Ends every auto_share call in this process."""
    from . import _auto

    with _auto._lock:
        _auto._stack.clear()
        _auto._apply()


def fast_attaches(client=None):
    """How many arrays the client's connection received without waiting for their attach."""
    conn = connection(client)
    return 0 if conn is None else conn.next_client_id
