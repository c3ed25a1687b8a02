"""The EWS emulator: an Exchange Online-like ``/EWS/Exchange.asmx`` endpoint on loopback.

``EwsEmulator`` owns the mail store, the app scopes, the request log and the (optional) fault
engine, and offers the Python API tests and the admin API use; ``_ews_http.EwsHandler`` serves the
requests (see its docstring for the order of checks).

Server stack: the standard library's threaded HTTP server (``_http.LoopbackServer``), see there.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from ews_listener_emulators import ops
from ews_listener_emulators._ews_http import AUDIENCE, ROLE, EwsHandler, RequestRecord
from ews_listener_emulators._http import LoopbackServer
from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.schema import SchemaValidator, resolve_schema_dir
from ews_listener_emulators.soap import DEFAULT_MAX_REQUEST_BYTES
from ews_listener_emulators.store import ItemView, Mailbox, MailStore

__all__ = ["AUDIENCE", "ROLE", "EwsEmulator", "RequestRecord", "TokenVerifier"]


class TokenVerifier(Protocol):
    """What the emulator needs from ``token_server.TokenServer``."""

    def verify(self, token: str, *, audience: str) -> Mapping[str, Any]:
        """The token's claims; raises ``TokenRejected`` (``.reason``, ``.category``)."""
        ...


class EwsEmulator:
    """An EWS endpoint with an in-memory mail store; see the module docstring for the flow."""

    def __init__(
        self,
        token_server: TokenVerifier | None,
        ca: EmulatorCA | None = None,
        *,
        port: int = 0,
        schema_dir: str | Path | None = None,
        validate_responses: bool = False,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        request_log_size: int = 100_000,
        audience: str = AUDIENCE,
        require_anchor_mailbox: bool = True,
    ) -> None:
        self.token_server = token_server
        self.ca = ca
        self.store = MailStore()
        self.audience = audience
        self.max_request_bytes = max_request_bytes
        self.require_anchor_mailbox = require_anchor_mailbox
        self.sync_key = os.urandom(32)  # signs sync states; a new emulator rejects old ones
        directory = resolve_schema_dir(schema_dir)
        self.validator = SchemaValidator(directory) if directory is not None else None
        self.validate_responses = validate_responses and self.validator is not None
        #: ``faults.FaultEngine`` (emulator-edges); None: no injected faults, no concurrency cap.
        self.faults: Any = _default_fault_engine()
        self.request_log: deque[RequestRecord] = deque(maxlen=request_log_size)
        self._scopes: dict[str, frozenset[str] | None] = {}
        self._lock = threading.Lock()
        self.closing = threading.Event()
        context = ca.server_context() if ca is not None else None
        self._server = LoopbackServer(EwsHandler, port=port, ssl_context=context)
        self._server.owner = self  # type: ignore[attr-defined]
        ops.load()

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> EwsEmulator:
        self.closing.clear()
        self._server.start()
        return self

    def stop(self) -> None:
        self.closing.set()
        self._server.stop()

    def __enter__(self) -> EwsEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The service endpoint, e.g. ``https://127.0.0.1:PORT/EWS/Exchange.asmx``."""
        return f"{self._server.url}/EWS/Exchange.asmx"

    @property
    def http_server(self) -> LoopbackServer:
        """The underlying server (``drop_connections()``, restart on the same port)."""
        return self._server

    # --- Python API for tests and the admin API ------------------------------------------------

    def add_mailbox(self, address: str, display_name: str | None = None) -> Mailbox:
        """Create a mailbox with the distinguished folders (idempotent)."""
        return self.store.add_mailbox(address, display_name)

    def allow(self, client_id: str, mailboxes: Iterable[str] | None) -> None:
        """Scope an app to ``mailboxes`` (RBAC for Applications); None: every mailbox."""
        with self._lock:
            self._scopes[client_id] = (
                None if mailboxes is None else frozenset(a.lower() for a in mailboxes)
            )

    def create_folder(self, address: str, path: str) -> str:
        """Create ``path`` (e.g. ``inbox/Processed``) and the folders above it; returns its id."""
        return self.store.folder_by_path(self._mailbox(address), path, create=True).folder_id

    def deliver(
        self,
        address: str,
        raw_mime: bytes,
        folder: str = "inbox",
        *,
        item_class: str = "IPM.Note",
        is_read: bool = False,
        received_at: datetime | None = None,
    ) -> str:
        """Parse ``raw_mime`` and file it in ``folder`` as new mail; returns the item id."""
        mailbox = self._mailbox(address)
        target = self.store.folder_by_path(mailbox, folder, create=True)
        item = self.store.parse(raw_mime, item_class=item_class, received_at=received_at)
        item.is_read = is_read
        return self.store.file(target, item).item_id

    def items(self, address: str, folder: str = "inbox") -> list[ItemView]:
        """Snapshots of the items in ``folder``, oldest first."""
        mailbox = self._mailbox(address)
        return self.store.views(self.store.folder_by_path(mailbox, folder))

    def move_item(self, address: str, item_id: str, folder: str) -> str:
        """Move an item as a person would (new id, Moved event); returns the new id."""
        mailbox = self._mailbox(address)
        target = self.store.folder_by_path(mailbox, folder, create=True)
        with self.store.lock:
            item = self.store.item(mailbox, item_id)
            if item is None:
                raise KeyError(f"no item {item_id!r} in {address}")
            return self.store.move(item, target).item_id

    def set_read(self, address: str, item_id: str, is_read: bool = True) -> str:
        """Set the read flag as a person would; returns the new change key."""
        mailbox = self._mailbox(address)
        with self.store.lock:
            item = self.store.item(mailbox, item_id)
            if item is None:
                raise KeyError(f"no item {item_id!r} in {address}")
            self.store.update(item, lambda i: setattr(i, "is_read", is_read), read_only=True)
            return item.change_key

    def reset(self) -> None:
        """Forget mailboxes, items, app scopes, injected fault rules and the request log."""
        self.store.reset()
        if self.faults is not None and hasattr(self.faults, "reset"):
            self.faults.reset()
        with self._lock:
            self._scopes.clear()
        self.request_log.clear()

    def _mailbox(self, address: str) -> Mailbox:
        mailbox = self.store.mailbox(address)
        if mailbox is None:
            raise KeyError(f"no mailbox {address!r}; call add_mailbox first")
        return mailbox

    def allowed(self, client_id: str | None, address: str) -> bool:
        """Whether the app may impersonate ``address`` (apps without a scope reach all)."""
        with self._lock:
            scope = self._scopes.get(client_id or "")
        return scope is None or address.lower() in scope


def _default_fault_engine() -> Any:
    """A ``faults.FaultEngine`` (no rules, the standing concurrency limit) when it is installed."""
    try:
        module = importlib.import_module("ews_listener_emulators.faults")
    except ModuleNotFoundError:
        return None
    engine_class = getattr(module, "FaultEngine", None)
    return engine_class() if engine_class is not None else None
