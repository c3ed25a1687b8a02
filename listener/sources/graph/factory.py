"""``GraphSources``: builds Graph mail sources and owns what they share.

One ``GraphClient`` (one ``httpx`` pool, ``max_connections`` of the credential) per (credential,
endpoint, CA bundle), and one ``MailboxGates`` for every client: Exchange Online's limits are per
app and mailbox (4 concurrent requests, one ``Retry-After``), so every folder and source of a
mailbox shares one gate whichever credential object reaches it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from listener.abc import TokenProvider
from listener.config.models import notification_mode
from listener.notify import NotifyHooks, Wake, Watch
from listener.sources.graph._client import GraphClient, MailboxGates
from listener.sources.graph.notifications import GraphWebhooks
from listener.sources.graph.source import DEFAULT_PAGE_LIMIT, GraphMailSource

__all__ = ["DEFAULT_GRAPH_ENDPOINT", "GraphSources"]

DEFAULT_GRAPH_ENDPOINT = "https://graph.microsoft.com/v1.0"


def _graph_endpoint(mailbox: Any) -> str:
    endpoint = str(getattr(mailbox, "endpoint", "") or "")
    # Until MailboxConfig has `source`, a Graph mailbox may still carry the EWS default.
    if not endpoint or "/ews/" in endpoint.lower() or endpoint.lower().endswith(".asmx"):
        return DEFAULT_GRAPH_ENDPOINT
    return endpoint.rstrip("/")


class GraphSources:
    """``SourceFactory`` of kind ``graph`` (``listener.sources.KINDS``)."""

    kind = "graph"

    def __init__(
        self,
        providers: Any,
        settings: Any,
        *,
        stop: threading.Event | None = None,
        page_limit: int = DEFAULT_PAGE_LIMIT,
        max_inline_wait: float = 30.0,
        min_back_off: float = 1.0,
        request_timeout: float = 60.0,
    ) -> None:
        self._providers = providers
        self._settings = settings
        self._stop = stop
        self.page_limit = page_limit
        # The service's settings when given (tests and the daemon), else the defaults above.
        service = getattr(settings, "service", None)
        self.max_inline_wait = getattr(service, "throttle_inline_wait", max_inline_wait)
        self.min_back_off = getattr(service, "throttle_min_back_off", min_back_off)
        self.request_timeout = getattr(service, "request_timeout", request_timeout)
        self.gates = MailboxGates()
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str, str | None], GraphClient] = {}
        self.on_request: Callable[[str, str], None] | None = None
        self.on_back_off: Callable[[str, float], None] | None = None

    def _tokens(self, mailbox: Any) -> TokenProvider:
        for_mailbox = getattr(self._providers, "for_mailbox", None)
        if for_mailbox is not None:
            provider: TokenProvider = for_mailbox(mailbox)
            return provider
        fallback: TokenProvider = self._providers.get(mailbox.credential)
        return fallback

    def _max_connections(self, credential: str) -> int:
        credentials = getattr(self._settings, "credentials", {}) or {}
        config = credentials.get(credential)
        return int(getattr(config, "max_connections", 4)) if config is not None else 4

    def client(self, mailbox: Any) -> GraphClient:
        endpoint = _graph_endpoint(mailbox)
        ca_bundle = str(mailbox.ca_bundle) if getattr(mailbox, "ca_bundle", None) else None
        key = (mailbox.credential, endpoint.lower(), ca_bundle)
        with self._lock:
            found = self._clients.get(key)
            if found is None:
                found = GraphClient(
                    endpoint=endpoint,
                    credential=mailbox.credential,
                    tokens=self._tokens(mailbox),
                    gates=self.gates,
                    max_connections=self._max_connections(mailbox.credential),
                    ca_bundle=ca_bundle,
                    timeout=self.request_timeout,
                    max_inline_wait=self.max_inline_wait,
                    min_back_off=self.min_back_off,
                    stop=self._stop,
                )
                found.on_request = self._observe
                found.on_back_off = self._backed_off
                self._clients[key] = found
            return found

    def source(self, name: str, mailbox: Any, *, folder: str | None = None) -> GraphMailSource:
        """A source for mailbox ``name`` (no I/O until first use)."""
        return GraphMailSource(
            name=name,
            address=mailbox.address,
            folder=folder or mailbox.folder,
            client=self.client(mailbox),
            tokens=self._tokens(mailbox),
            page_limit=self.page_limit,
        )

    def notifications(
        self, watches: Sequence[Watch], wake: Wake, hooks: NotifyHooks
    ) -> GraphWebhooks:
        """Graph change notifications for ``watches`` (``[notifications.graph]``); no I/O."""
        notifications = getattr(self._settings, "notifications", None)
        config = getattr(notifications, "graph", None)
        if config is None:
            raise ValueError(
                "Graph change notifications need [notifications.graph] public_url and client_state"
            )
        return GraphWebhooks(self, watches, wake, hooks, config)

    def webhook_names(self) -> list[str]:
        """Every configured Graph mailbox with webhook notifications (on any replica): whose
        notifications the receiver accepts by name (``GraphWebhooks.receive``)."""
        notifications = getattr(self._settings, "notifications", None)
        mailboxes = getattr(self._settings, "mailboxes", {})
        if notifications is None:
            return []
        return [
            name
            for name, mailbox in mailboxes.items()
            if mailbox.source == "graph" and notification_mode(notifications, mailbox) == "webhook"
        ]

    def _observe(self, operation: str, outcome: str) -> None:
        if self.on_request is not None:
            self.on_request(operation, outcome)

    def _backed_off(self, credential: str, seconds: float) -> None:
        if self.on_back_off is not None:
            self.on_back_off(credential, seconds)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
