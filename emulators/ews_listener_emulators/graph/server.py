"""The Graph emulator: a Microsoft Graph v1.0 mail endpoint at ``https://127.0.0.1:PORT/v1.0``.

``GraphEmulator`` owns the routes, the request log, the schema validator, the fault rules
(``faults``, ``graph.faults``) and Exchange Online's throttling (``throttle``, ``graph.throttling``:
4 concurrent requests per app and mailbox; a request budget per window when given one), and shares
the mail store (and the app scopes) with an EWS emulator when given one: a message delivered once
is then seen through both protocols. ``_handler.GraphHandler`` serves the requests (its docstring
gives the order of checks). Server stack: ``_http.LoopbackServer``, as the EWS emulator's.

App scopes (RBAC for Applications): Exchange Online has one management scope per app for the
mailboxes, whichever protocol it reads them with (EWS ``full_access_as_app`` and Graph ``Mail.*``
are both scoped by it), and the emulator has one mail store; so there is one scope table too.
``GraphEmulator.beside(ews, ...)`` uses the EWS emulator's store and its scopes (``ews.allow``
then scopes both endpoints); a Graph emulator on its own keeps a table of its own.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ews_listener_emulators._http import LoopbackServer
from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.graph import batch, folder_delta, folders, messages, users
from ews_listener_emulators.graph._annotations import AnnotationChecker, resolve_graph_samples_dir
from ews_listener_emulators.graph._contract import GraphAnswer, Route
from ews_listener_emulators.graph._handler import GraphHandler, GraphRequestRecord
from ews_listener_emulators.graph._schema import GraphSchema, resolve_graph_schema_dir
from ews_listener_emulators.graph.faults import GraphFaults
from ews_listener_emulators.graph.subscriptions import NotificationSettings, Subscriptions
from ews_listener_emulators.graph.throttling import DEFAULT_CONCURRENCY, DEFAULT_WINDOW, Throttle
from ews_listener_emulators.soap import DEFAULT_MAX_REQUEST_BYTES
from ews_listener_emulators.store import MailStore
from ews_listener_emulators.token_server import GRAPH_AUDIENCES

__all__ = ["GraphEmulator", "GraphRequestRecord", "Scopes"]

_CHALLENGE = (
    'Bearer realm="", authorization_uri="{authority}/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000"'
)


class GraphTokenVerifier(Protocol):
    """What the Graph emulator needs from ``token_server.TokenServer``."""

    @property
    def url(self) -> str: ...

    def verify(self, token: str, *, audience: Sequence[str]) -> Mapping[str, Any]: ...


class Scopes(Protocol):
    """An app → mailboxes table (``EwsEmulator`` is one)."""

    def allow(self, client_id: str, mailboxes: Iterable[str] | None) -> None: ...

    def allowed(self, client_id: str | None, address: str) -> bool: ...


class _ScopeTable:
    """The scopes of a Graph emulator that has no EWS emulator beside it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes: dict[str, frozenset[str] | None] = {}

    def allow(self, client_id: str, mailboxes: Iterable[str] | None) -> None:
        with self._lock:
            self._scopes[client_id] = (
                None if mailboxes is None else frozenset(a.lower() for a in mailboxes)
            )

    def allowed(self, client_id: str | None, address: str) -> bool:
        with self._lock:
            scope = self._scopes.get(client_id or "")
        return scope is None or address.lower() in scope

    def clear(self) -> None:
        with self._lock:
            self._scopes.clear()


class GraphEmulator:
    """A Graph v1.0 mail endpoint over a ``MailStore``; see the module docstring."""

    def __init__(
        self,
        token_server: GraphTokenVerifier | None,
        ca: EmulatorCA | None = None,
        *,
        store: MailStore | None = None,
        scopes: Scopes | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        schema_dir: str | Path | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        request_log_size: int = 100_000,
        audiences: Sequence[str] = GRAPH_AUDIENCES,
        mailbox_concurrency: int | None = DEFAULT_CONCURRENCY,
        request_budget: int | None = None,
        budget_window: float = DEFAULT_WINDOW,
        fault_seed: int = 0,
        notifications: NotificationSettings | None = None,
    ) -> None:
        self.token_server = token_server
        self.ca = ca
        self.store = store if store is not None else MailStore()
        self.scopes: Scopes = scopes if scopes is not None else _ScopeTable()
        self.audiences = tuple(audiences)
        self.max_request_bytes = max_request_bytes
        directory = resolve_graph_schema_dir(schema_dir)
        self.schema = GraphSchema(directory) if directory is not None else None
        # The OData annotations the description does not model, checked against the documented
        # samples beside the schema (or $GRAPH_SAMPLES_DIR): issue 12, point 8.
        samples = resolve_graph_samples_dir(directory)
        self.annotations = AnnotationChecker(samples) if samples is not None else None
        self.request_log: deque[GraphRequestRecord] = deque(maxlen=request_log_size)
        #: Exchange Online's per-(app, mailbox) limits; ``request_budget`` None: no budget.
        self.throttle = Throttle(
            concurrency=mailbox_concurrency, budget=request_budget, window=budget_window
        )
        self.faults = GraphFaults(seed=fault_seed)
        # Folder delta first: mailFolders/{folder} would match mailFolders/delta otherwise. It
        # is not in folders.ROUTES because folder_delta reads folders' rendering (an import cycle).
        self.routes: list[Route] = [
            *users.ROUTES,
            *folder_delta.ROUTES,
            *folders.ROUTES,
            *messages.ROUTES,
        ]
        self.subscriptions = Subscriptions(self, notifications)
        context = ca.server_context() if ca is not None else None
        self._server = LoopbackServer(GraphHandler, host=host, port=port, ssl_context=context)
        self._server.owner = self  # type: ignore[attr-defined]

    @classmethod
    def beside(
        cls,
        ews: Any,
        token_server: GraphTokenVerifier | None,
        ca: EmulatorCA | None,
        **options: Any,
    ) -> GraphEmulator:
        """A Graph emulator on ``ews``'s mail store and app scopes (an ``EwsEmulator``)."""
        return cls(token_server, ca, store=ews.store, scopes=ews, **options)

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> GraphEmulator:
        self._server.start()
        self.subscriptions.start()
        return self

    def stop(self) -> None:
        self.subscriptions.stop()  # first: no notification goes out from a stopped emulator
        self._server.stop()

    def __enter__(self) -> GraphEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The service root, e.g. ``https://127.0.0.1:PORT/v1.0``."""
        return f"{self._server.url}/v1.0"

    @property
    def http_server(self) -> LoopbackServer:
        return self._server

    # --- Python API for tests ------------------------------------------------------------------

    def allow(self, client_id: str, mailboxes: Iterable[str] | None) -> None:
        """Scope an app to ``mailboxes`` (RBAC for Applications); None: every mailbox."""
        self.scopes.allow(client_id, mailboxes)

    def reset(self) -> None:
        """Forget the request log, the fault rules and the throttling state (and the scopes,
        when they are this emulator's own)."""
        self.request_log.clear()
        self.subscriptions.clear()
        self.faults.reset()
        self.throttle.reset()
        if isinstance(self.scopes, _ScopeTable):
            self.scopes.clear()

    def serve_batch(self, outer: GraphHandler, body: bytes) -> GraphAnswer | None:
        """``POST /v1.0/$batch`` (``batch``; a module the handler cannot import: it imports the
        handler). None: a fault dropped the connection."""
        return batch.serve(outer, body)

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401 (the token server's URL as authority)."""
        authority = getattr(self.token_server, "url", None) or "https://login.microsoftonline.com"
        return _CHALLENGE.format(authority=authority.rstrip("/"))
