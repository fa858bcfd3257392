"""The exceptions inferd raises. Each engine error class maps to one exception, which also derives
from the built-in exception a Python caller would expect (``InvalidInput`` is a ``ValueError``,
``ModelNotFound`` a ``LookupError``, ``DeadlineExceeded`` a ``TimeoutError``), so generic
handlers keep working."""

from __future__ import annotations


class InferdError(Exception):
    """Base class of every error the engine reports. ``str(e)`` is the engine's message."""


class InvalidInput(InferdError, ValueError):
    """The request does not fit the model: an unknown input name, a wrong datatype or shape, a
    bad parameter. The same request will fail again."""


class ModelNotFound(InferdError, LookupError):
    """No such model or version in the repository."""


class Unavailable(InferdError):
    """The model cannot take requests now: it is loading, failed to load, is unloading, or the
    engine is closing. Retrying later (or elsewhere) may succeed."""


class Overloaded(Unavailable):
    """A bounded queue is full. ``retry_after`` is the suggested wait in seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class FailedPrecondition(InferdError):
    """The operation is not allowed in the engine's current mode (for example loading a model
    by hand when the model control mode is not ``explicit``)."""


class Cancelled(InferdError):
    """The request was cancelled, or the engine closed before it ran."""


class DeadlineExceeded(InferdError, TimeoutError):
    """The request waited in the queue past its timeout."""


class InternalError(InferdError, RuntimeError):
    """A fault inside the engine or a backend (a bug, or a model that failed while running)."""


__all__ = [
    "InferdError",
    "InvalidInput",
    "ModelNotFound",
    "Unavailable",
    "Overloaded",
    "FailedPrecondition",
    "Cancelled",
    "DeadlineExceeded",
    "InternalError",
]
