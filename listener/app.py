"""Everything one process runs, built from ``Settings`` and closed in a fixed order.

``App`` is what ``run``, ``once``, ``mailbox test`` and ``dead-letters replay`` share: token
providers, one source factory per protocol in use (``listener.sources``: EWS, Microsoft Graph),
the state store, handlers and one poller per enabled mailbox. Building it does no network I/O: a
credential that is wrong only fails its own mailboxes when they poll. It imports no protocol
library itself: a factory is loaded only when a mailbox of its kind is configured.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import structlog

from listener.abc import Handler, MailSource, SourceFactory, StateStore
from listener.auth import TokenProviders
from listener.handlers import build_handlers
from listener.pipeline import HandlerPool, PollHooks
from listener.poller import FailurePolicy, Poller, PollerSettings
from listener.routing import Router
from listener.service import MailboxRunner
from listener.sources import build_factory
from listener.store import open_store

__all__ = ["App"]

log = structlog.get_logger("listener.app")


def _action(value: Any) -> tuple[str, str | None]:
    """``Action(kind, argument)`` of the configuration → the poller's (kind, argument)."""
    return (value.kind, value.argument)


class App:
    """The listener's moving parts for one configuration."""

    def __init__(
        self,
        settings: Any,
        *,
        store: StateStore | None = None,
        handlers: Mapping[str, Handler] | None = None,
        hooks: PollHooks | None = None,
    ) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.providers = TokenProviders(settings.credentials)
        self.factories: dict[str, SourceFactory] = {}
        # Handlers first: one that cannot be built is a configuration error, found before the
        # state database is created or touched.
        self.handlers: Mapping[str, Handler] = (
            handlers if handlers is not None else build_handlers(settings.handlers)
        )
        self.store: StateStore
        if store is not None:
            self.store = store
        else:
            self.store = open_store(
                settings.state.url,
                busy_timeout=settings.state.busy_timeout,
                connect_timeout=settings.state.connect_timeout,
            )
            # Ledger entries written before store schema 3 get the key their message has now (it
            # needs each mailbox's address); once done, one indexed query that finds nothing.
            self.store.adopt_legacy_keys(
                {name: mailbox.address for name, mailbox in settings.mailboxes.items()}
            )
        self._hooks = hooks
        # One pool of hand-over threads for every mailbox (listener.pipeline.handover).
        self.pool = HandlerPool(
            settings.service.handler_workers,
            {
                name: config.max_concurrency
                for name, config in settings.handlers.items()
                if config.max_concurrency is not None
            },
        )
        self.sources: dict[str, MailSource] = {}
        self.pollers: dict[str, Poller] = {}
        for name, mailbox in settings.mailboxes.items():
            if mailbox.enabled:
                self.pollers[name] = self._poller(name, mailbox)

    def factory(self, kind: str) -> SourceFactory:
        """The source factory of protocol ``kind`` ("ews", "graph"), built on first use."""
        if kind not in self.factories:
            self.factories[kind] = build_factory(
                kind, self.providers, self.settings, stop=self.stop
            )
        return self.factories[kind]

    def source(self, name: str, *, folder: str | None = None) -> MailSource:
        """A mail source for the configured mailbox ``name`` (no I/O until it is used)."""
        mailbox = self.settings.mailboxes[name]
        return self.factory(mailbox.source).source(name, mailbox, folder=folder)

    def _poller(self, name: str, mailbox: Any) -> Poller:
        source = self.source(name)
        self.sources[name] = source
        failure = mailbox.on_failure
        dead_letter = failure.dead_letter
        policy = FailurePolicy(
            max_attempts=failure.max_attempts,
            backoff=failure.backoff,
            backoff_max=failure.backoff_max,
            multiplier=failure.backoff_multiplier,
            dead_letter_folder=dead_letter.argument if dead_letter.kind == "move" else None,
        )
        settings = PollerSettings(
            name=name,
            credential=mailbox.credential,
            folder=mailbox.folder,
            start_from=mailbox.start_from,
            after_success=_action(mailbox.after_success),
            failure=policy,
            batch_size=mailbox.batch_size,
            handler_concurrency=mailbox.handler_concurrency,
            ordered=mailbox.ordered,
        )
        router = Router(mailbox.routes)
        return Poller(
            settings,
            source,
            self.store,
            router.handlers_for,
            self.handlers,
            stop=self.stop,
            hooks=self._hooks,
            pool=self.pool,
            ordered=router.is_ordered,
        )

    def runners(self, on_result: Any = None) -> list[MailboxRunner]:
        out = []
        for name, poller in self.pollers.items():
            mailbox = self.settings.mailboxes[name]
            runner = MailboxRunner(poller, float(mailbox.interval), stop=self.stop)
            if on_result is not None:
                runner.on_result = on_result
            out.append(runner)
        return out

    def close(self) -> None:
        """The hand-over pool (no new hand-over), handlers (they may flush), then the mail
        sources' sessions, then the store."""
        self.pool.close()
        for handler in self.handlers.values():
            try:
                handler.close()
            except Exception:
                log.warning("handler.close_failed", handler=handler.name, exc_info=True)
        for factory in self.factories.values():
            factory.close()
        self.store.close()
