"""Handler failures that carry more than a message: an HTTP status and the server's back-off.

``listener.errors`` has the two kinds the pipeline acts on (``PermanentError``, ``TransientError``);
these subclasses add what a built-in handler learned, so the poller (or an operator reading a dead
letter) can honour a webhook's ``Retry-After``.
"""

from __future__ import annotations

from listener.errors import ListenerError, PermanentError, TransientError

__all__ = ["HandlerConfigError", "HandlerPermanentError", "HandlerTransientError"]


class HandlerTransientError(TransientError):
    """Try again later; ``retry_after`` is the receiver's requested pause in seconds, if any."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class HandlerPermanentError(PermanentError):
    """Trying again cannot help (a 4xx answer, an exit code other than 0 and 75, ...)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HandlerConfigError(ListenerError, ValueError):
    """A handler cannot be built from its configuration (target not importable, bad URL, ...).

    The message names the handler (``handlers.NAME``) and the field, so the CLI can print it and
    exit with ``EXIT_CONFIG``.
    """
