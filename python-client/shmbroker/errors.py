"""One exception class per wire status code, all under shmbroker.Error.

Each class also inherits the builtin exception that fits, so code that knows nothing about
shmbroker can still catch it (``except FileNotFoundError``, ``except KeyError``, ...).
"""

import enum
import errno as _errno

from ._wire import pb

__all__ = [
    "Code",
    "Error",
    "InvalidArgumentError",
    "NotFoundError",
    "AlreadyExistsError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "FailedPreconditionError",
    "ProtocolError",
    "InternalError",
    "UnavailableError",
    "DeadlineExceededError",
]


class Code(enum.IntEnum):
    """The wire protocol's status codes (proto/shmbroker.proto, enum Code)."""

    OK = pb.OK
    INVALID_ARGUMENT = pb.INVALID_ARGUMENT
    NOT_FOUND = pb.NOT_FOUND
    ALREADY_EXISTS = pb.ALREADY_EXISTS
    PERMISSION_DENIED = pb.PERMISSION_DENIED
    RESOURCE_EXHAUSTED = pb.RESOURCE_EXHAUSTED
    FAILED_PRECONDITION = pb.FAILED_PRECONDITION
    PROTOCOL_ERROR = pb.PROTOCOL_ERROR
    INTERNAL = pb.INTERNAL
    UNAVAILABLE = pb.UNAVAILABLE
    DEADLINE_EXCEEDED = pb.DEADLINE_EXCEEDED


class Error(Exception):
    """Base class of every shmbroker error. ``code`` is a :class:`Code`, ``message`` the text
    the daemon (or the client) gave, which is also ``str(error)``."""

    code = Code.INTERNAL
    _errno = None

    def __init__(self, message=""):
        message = str(message)
        super().__init__(message)
        self.message = message
        if isinstance(self, OSError) and self._errno is not None:
            # OSError's constructor only fills these from (errno, strerror) arguments.
            self.errno = self._errno
            self.strerror = message

    def __str__(self):
        return self.message

    def __repr__(self):
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self):
        # Picklable across processes (e.g. raised in a Pool worker).
        return (type(self), (self.message,))


class InvalidArgumentError(Error, ValueError):
    """A bad segment name, dtype, shape, mode, attribute or pattern."""

    code = Code.INVALID_ARGUMENT


class NotFoundError(Error, FileNotFoundError, KeyError):
    """No segment has that name."""

    code = Code.NOT_FOUND
    _errno = _errno.ENOENT


class AlreadyExistsError(Error, FileExistsError):
    """A segment with that name exists already."""

    code = Code.ALREADY_EXISTS
    _errno = _errno.EEXIST


class PermissionDeniedError(Error, PermissionError):
    """The segment's mode or owner does not allow this."""

    code = Code.PERMISSION_DENIED
    _errno = _errno.EACCES


class ResourceExhaustedError(Error, MemoryError):
    """Not enough memory, or over the daemon's --max-memory cap."""

    code = Code.RESOURCE_EXHAUSTED


class FailedPreconditionError(Error, RuntimeError):
    """A valid request in the wrong state (e.g. an unsupported protocol version)."""

    code = Code.FAILED_PRECONDITION


class ProtocolError(Error):
    """The peer sent something that is not the protocol."""

    code = Code.PROTOCOL_ERROR


class InternalError(Error):
    """A bug or an unexpected system error; the message has the details."""

    code = Code.INTERNAL


class UnavailableError(Error, ConnectionError):
    """The daemon could not be reached or the connection was lost; the message names the
    socket path."""

    code = Code.UNAVAILABLE


class DeadlineExceededError(Error, TimeoutError):
    """A wait ran out: ``attach(name, wait=...)`` saw no such segment (or, with
    ``sealed=True``, no seal) in time. Also the builtin TimeoutError."""

    code = Code.DEADLINE_EXCEEDED


_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        ResourceExhaustedError,
        FailedPreconditionError,
        ProtocolError,
        InternalError,
        UnavailableError,
        DeadlineExceededError,
    )
}


def error_for(code, message):
    """The exception for a non-OK wire code."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return ProtocolError(f"unknown status code {code}: {message}")
    return cls(message)
