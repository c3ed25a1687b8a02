"""Exceptions and the process exit codes they map to.

Exit codes follow sysexits.h so that systemd's ``RestartPreventExitStatus=78`` stops a service
whose configuration is broken instead of restarting it forever (dramatiq's ``RET_*`` habit).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 64  # EX_USAGE: the command line itself is wrong
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: a service needed at start-up is unreachable (--fail-fast)
EXIT_TEMPFAIL = 75  # EX_TEMPFAIL: `once` finished but some mailbox failed; try again later
EXIT_CONFIG = 78  # EX_CONFIG: the configuration is invalid

__all__ = [
    "EXIT_CONFIG",
    "EXIT_OK",
    "EXIT_TEMPFAIL",
    "EXIT_UNAVAILABLE",
    "EXIT_UNEXPECTED",
    "EXIT_USAGE",
    "ListenerError",
    "PermanentError",
    "SecretError",
    "SourceError",
    "TokenError",
    "TransientError",
]


class ListenerError(Exception):
    """Base class of every error this package raises on purpose."""


class SecretError(ListenerError):
    """A secret could not be read from its source. The message never holds the secret."""


class TokenError(ListenerError):
    """The token endpoint refused or could not be reached.

    Keeps what the server said (``error``, ``error_description``, the AADSTS code) and never the
    client secret or an access token.
    """

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        error_description: str | None = None,
        aadsts: str | None = None,
        status: int | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.error = error
        self.error_description = error_description
        self.aadsts = aadsts
        self.status = status
        self.transient = transient


class SourceError(ListenerError):
    """A mail source operation failed (EWS fault, HTTP error, throttling, ...).

    ``transient`` says whether trying again later may help; ``back_off`` is the server's requested
    pause in seconds when it gave one (``BackOffMilliseconds``, ``Retry-After``).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        transient: bool = True,
        back_off: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.transient = transient
        self.back_off = back_off


class PermanentError(ListenerError):
    """Raised by a handler when trying again cannot help: the message is dead-lettered at once."""


class TransientError(ListenerError):
    """Raised by a handler to ask for a retry later (any other exception means the same)."""
