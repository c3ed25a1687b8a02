"""Shared EWS plumbing: one ``Configuration`` per (credential, endpoint), one gate per credential.

The gate is the per-credential concurrency cap (exchangelib's session pool waits forever when it is
exhausted, and Exchange Online refuses more than 27 concurrent requests per user) and the
per-credential throttling pause: after ``ErrorServerBusy`` every mailbox of that credential waits
out the server's ``BackOffMilliseconds`` before its next request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from exchangelib import DELEGATE, IMPERSONATION, OAUTH2, Account, Configuration, Version
from exchangelib.protocol import Protocol
from exchangelib.version import Build

from listener.abc import TokenProvider
from listener.config.models import notification_mode
from listener.errors import SourceError, Throttled, Unavailable
from listener.notify import NotificationChannel, NotifyHooks, Wake, Watch
from listener.sources.ews._affinity import Member, StreamGroup, plan_groups
from listener.sources.ews._transport import (
    ListenerRetryPolicy,
    TokenBridge,
    install_adapter,
    register_ca_bundle,
)
from listener.sources.ews.notifications import (
    BackOff,
    EwsStreamingChannel,
    impersonating,
    streaming_configuration,
)
from listener.sources.ews.source import EwsMailSource

__all__ = ["CredentialGate", "EwsConnections", "EwsSources", "MailboxTarget"]

_VERSIONS = {
    "exchange2013": Build(15, 0, 0, 0),
    "exchange2013_sp1": Build(15, 0, 847, 0),
    "exchange2016": Build(15, 1, 0, 0),
    "exchange2019": Build(15, 2, 0, 0),
}


@dataclass(frozen=True)
class MailboxTarget:
    """What the EWS source needs to know about one configured mailbox."""

    name: str
    address: str
    credential: str
    client_id: str
    endpoint: str
    folder: str
    ca_bundle: str | None = None
    version: str | None = None
    impersonation: bool = True


class CredentialGate:
    """Caps concurrent requests of one credential and holds them during a server back-off."""

    def __init__(
        self,
        name: str,
        max_connections: int,
        *,
        max_inline_wait: float = 30.0,
        stop: threading.Event | None = None,
    ) -> None:
        self.name = name
        # Set at shutdown: no new request starts, and a back-off wait ends at once.
        self._stop = stop or threading.Event()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self.max_inline_wait = max_inline_wait
        self.on_back_off: Callable[[str, float], None] | None = None

    def pause(self, seconds: float) -> None:
        """Hold every request of this credential for ``seconds`` (the server asked for it)."""
        with self._lock:
            until = time.monotonic() + seconds
            self._paused_until = max(self._paused_until, until)
        if self.on_back_off is not None:
            self.on_back_off(self.name, seconds)

    def remaining_pause(self) -> float:
        with self._lock:
            return max(0.0, self._paused_until - time.monotonic())

    @contextmanager
    def __call__(self) -> Iterator[None]:
        wait = self.remaining_pause()
        if wait > self.max_inline_wait:
            raise Throttled(
                f"credential {self.name!r} is throttled for another {wait:.0f} s",
                code="ErrorServerBusy",
                back_off=wait,
            )
        if self._stop.is_set() or (wait > 0 and self._stop.wait(wait)):
            raise Unavailable("shutting down: no new EWS request", code="Stopping")
        with self._slots:
            try:
                yield
            except SourceError as e:
                if e.back_off:
                    self.pause(e.back_off)
                raise
            except Exception as e:
                back_off = getattr(e, "back_off", None)
                if type(e).__name__ == "ErrorServerBusy" and back_off:
                    self.pause(float(back_off))
                raise


class EwsConnections:
    """Builds EWS mail sources and owns what they share; ``close()`` releases every session."""

    def __init__(
        self,
        providers: Callable[[str, str], TokenProvider],  # (credential, endpoint)
        *,
        max_connections: Callable[[str], int],
        request_timeout: float = 120.0,
        max_inline_wait: float = 30.0,
        stop: threading.Event | None = None,
    ) -> None:
        self._providers = providers
        install_adapter()
        self._max_connections = max_connections
        self._request_timeout = request_timeout
        self.max_inline_wait = max_inline_wait
        self._stop = stop
        self._lock = threading.Lock()
        self._configs: dict[tuple[str, str], tuple[Configuration, TokenBridge]] = {}
        # The streams' own configurations (notifications.py: a session pool of their own).
        self._streaming: dict[tuple[str, str], Configuration] = {}
        self.gates: dict[str, CredentialGate] = {}
        # (operation, outcome) of every EWS exchange, for metrics; set before sources are used
        self.on_request: Callable[[str, str], None] | None = None

    def gate(self, credential: str) -> CredentialGate:
        with self._lock:
            if credential not in self.gates:
                self.gates[credential] = CredentialGate(
                    credential,
                    self._max_connections(credential),
                    max_inline_wait=self.max_inline_wait,
                    stop=self._stop,
                )
            return self.gates[credential]

    def _configuration(self, target: MailboxTarget) -> tuple[Configuration, TokenBridge]:
        key = (target.credential, target.endpoint.lower())
        with self._lock:
            found = self._configs.get(key)
            if found is not None:
                return found
            if target.ca_bundle:
                register_ca_bundle(target.endpoint, target.ca_bundle)
            bridge = TokenBridge(
                self._providers(target.credential, target.endpoint),
                target.client_id,
                identity=target.address,
            )
            version = None
            if target.version:
                build = _VERSIONS.get(target.version.lower())
                if build is not None:
                    version = Version(build=build, api_version=target.version)
            config = Configuration(
                service_endpoint=target.endpoint,
                credentials=bridge,
                auth_type=OAUTH2,
                version=version,
                retry_policy=ListenerRetryPolicy(),
                max_connections=self._max_connections(target.credential),
            )
            self._configs[key] = (config, bridge)
            return config, bridge

    def streaming(self, target: MailboxTarget, groups: int) -> Configuration:
        """The configuration the streaming connections of ``target``'s (credential, endpoint)
        use: one per key, with its own credentials object (so its own ``Protocol`` and session
        pool, sized for ``groups`` streams); the token provider is the polls' one."""
        config, _ = self._configuration(target)
        key = (target.credential, target.endpoint.lower())
        with self._lock:
            found = self._streaming.get(key)
            if found is None:
                bridge = TokenBridge(
                    self._providers(target.credential, target.endpoint),
                    target.client_id,
                    identity=target.address,
                )
                found = self._streaming[key] = streaming_configuration(config, bridge, groups)
            return found

    def source(self, target: MailboxTarget) -> EwsMailSource:
        """A mail source for one mailbox folder (cheap; the account is created on first use)."""
        config, bridge = self._configuration(target)

        def account() -> Account:
            return Account(
                primary_smtp_address=target.address,
                config=config,
                autodiscover=False,
                access_type=IMPERSONATION if target.impersonation else DELEGATE,
            )

        return EwsMailSource(
            name=target.name,
            address=target.address,
            folder=target.folder,
            account_factory=account,
            bridge=bridge,
            gate=self.gate(target.credential),
            observe=self._observe,
        )

    def _observe(self, operation: str, outcome: str) -> None:
        if self.on_request is not None:
            self.on_request(operation, outcome)

    def close(self) -> None:
        """Close every pooled HTTP session of every configuration."""
        with self._lock:
            configs = [config for config, _ in self._configs.values()]
            configs += self._streaming.values()
            self._configs.clear()
            self._streaming.clear()
        for config in configs:
            # exchangelib caches one Protocol per configuration; this returns that one.
            Protocol(config=config).close()


class EwsSources:
    """The ``SourceFactory`` of EWS mailboxes (``source = "ews"``) of one configuration."""

    kind = "ews"

    def __init__(
        self, providers: Any, settings: Any, *, stop: threading.Event | None = None
    ) -> None:
        self._settings = settings
        self.on_back_off: Callable[[str, float], None] | None = None
        service = getattr(settings, "service", None)
        self.connections = EwsConnections(
            providers.for_source,
            max_connections=lambda name: settings.credentials[name].max_connections,
            max_inline_wait=getattr(service, "throttle_inline_wait", 30.0),
            stop=stop,
        )

    @property
    def on_request(self) -> Callable[[str, str], None] | None:
        return self.connections.on_request

    @on_request.setter
    def on_request(self, callback: Callable[[str, str], None] | None) -> None:
        self.connections.on_request = callback

    def _backed_off(self, credential: str, seconds: float) -> None:
        if self.on_back_off is not None:
            self.on_back_off(credential, seconds)

    def target(self, name: str, mailbox: Any, *, folder: str | None = None) -> MailboxTarget:
        credential = self._settings.credentials[mailbox.credential]
        return MailboxTarget(
            name=name,
            address=mailbox.address,
            credential=mailbox.credential,
            client_id=credential.client_id,
            endpoint=str(mailbox.endpoint),
            folder=folder or mailbox.folder,
            ca_bundle=str(mailbox.ca_bundle) if mailbox.ca_bundle else None,
            version=mailbox.version,
        )

    def source(self, name: str, mailbox: Any, *, folder: str | None = None) -> EwsMailSource:
        source = self.connections.source(self.target(name, mailbox, folder=folder))
        self.connections.gates[mailbox.credential].on_back_off = self._backed_off
        return source

    def notifications(
        self,
        watches: Sequence[Watch],
        wake: Wake,
        hooks: NotifyHooks,
        *,
        back_off: BackOff | None = None,
    ) -> NotificationChannel:
        """Streaming subscriptions for ``watches``, as few connections as Exchange allows
        (``notifications.py``); built, not started."""
        config = self._settings.notifications.ews
        per = config.subscriptions_per_connection
        targets = {watch.name: self.target(watch.name, watch.mailbox) for watch in watches}
        groups = plan_groups(
            (
                (Member(name, t.address, t.folder), t.credential, t.endpoint)
                for name, t in targets.items()
            ),
            per,
        )
        # Each (credential, endpoint)'s streams share one session pool, sized once: for every
        # streaming mailbox of the configuration, as watches may be added later (replicas).
        by_key: dict[tuple[str, str], MailboxTarget] = {}
        counts: dict[tuple[str, str], int] = {}
        for name, mailbox in self._streaming_mailboxes().items():
            target = self.target(name, mailbox)
            key = (target.credential, target.endpoint.lower())
            by_key.setdefault(key, target)
            counts[key] = counts.get(key, 0) + 1
        for target in targets.values():
            by_key.setdefault((target.credential, target.endpoint.lower()), target)
        planned: dict[tuple[str, str], int] = {}
        for group in groups:
            key = (group.credential, group.endpoint.lower())
            planned[key] = planned.get(key, 0) + 1
        lock = threading.Lock()

        def sized(key: tuple[str, str]) -> int:
            return max(planned.get(key, 0), -(-counts.get(key, 0) // int(per)), 1)

        def account(group: StreamGroup, address: str) -> Any:
            key = (group.credential, group.endpoint.lower())
            with lock:
                target = by_key[key]
            return impersonating(self.connections.streaming(target, sized(key)))(address)

        def resolve(watch: Watch) -> tuple[Member, str, str]:
            target = self.target(watch.name, watch.mailbox)
            with lock:
                by_key.setdefault((target.credential, target.endpoint.lower()), target)
            return (
                Member(watch.name, target.address, target.folder),
                target.credential,
                (target.endpoint),
            )

        return EwsStreamingChannel(
            groups,
            account=account,
            wake=wake,
            hooks=hooks,
            config=config,
            back_off=back_off,
            resolve=resolve,
        )

    def _streaming_mailboxes(self) -> dict[str, Any]:
        """Every configured EWS mailbox with streaming notifications (on any replica)."""
        notifications = getattr(self._settings, "notifications", None)
        mailboxes = getattr(self._settings, "mailboxes", None) or {}
        if notifications is None:
            return {}
        return {
            name: mailbox
            for name, mailbox in mailboxes.items()
            if mailbox.source == "ews" and notification_mode(notifications, mailbox) == "streaming"
        }

    def close(self) -> None:
        self.connections.close()
