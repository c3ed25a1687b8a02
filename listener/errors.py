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
    "Denied",
    "Gone",
    "ListenerError",
    "PermanentError",
    "SecretError",
    "SourceError",
    "SyncStateLost",
    "Throttled",
    "TokenError",
    "TransientError",
    "Unauthorized",
    "Unavailable",
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
    """A mail source operation failed; the subclasses say how, in terms no protocol owns.

    Every source (EWS, Microsoft Graph, the fake) raises these and only these, so the pipeline,
    the scheduler and ``/readyz`` never see an EWS response code or an HTTP status. ``code`` is the
    source's own name for what happened (``ErrorServerBusy``, ``HTTP 429``, ...), for logs and
    metrics only: nothing branches on it. ``transient`` says whether trying again later may
    help; ``back_off`` is the pause in seconds the server asked for, when it gave one
    (``BackOffMilliseconds``, ``Retry-After``). ``kind`` names the class for metrics and health.
    """

    kind = "failed"
    default_transient = True

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        transient: bool | None = None,
        back_off: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.transient = self.default_transient if transient is None else transient
        self.back_off = back_off


class SyncStateLost(SourceError):
    """The server no longer knows the stored sync state (EWS ``ErrorInvalidSyncStateData``, a
    Graph 410 or expired delta token), or the state belongs to another protocol: the folder is
    synced again from its start, the ledger skipping what is done."""

    kind = "sync_state_lost"
    default_transient = False


class Throttled(SourceError):
    """The server asked us to slow down (EWS ``ErrorServerBusy``, HTTP 429 / 503 with
    ``Retry-After``); ``back_off`` holds its pause when it named one."""

    kind = "throttled"


class Gone(SourceError):
    """The mailbox or the watched folder does not exist (any more)."""

    kind = "gone"
    default_transient = False


class Denied(SourceError):
    """The app may not open this mailbox or folder (impersonation refused, RBAC scope, 403)."""

    kind = "denied"
    default_transient = False


class Unauthorized(SourceError):
    """The server refused the access token even after a fresh one (HTTP 401).

    Transient by default: revocations and clock skew heal; the mailbox stays on the shorter
    back-off while an operator looks.
    """

    kind = "unauthorized"


class Unavailable(SourceError):
    """The server or the network failed (connection, timeout, 5xx, token endpoint outage)."""

    kind = "unavailable"


class PermanentError(ListenerError):
    """Raised by a handler when trying again cannot help: the message is dead-lettered at once."""


class TransientError(ListenerError):
    """Raised by a handler to ask for a retry later (any other exception means the same)."""
