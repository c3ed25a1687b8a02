"""One token provider per (credential, resource), built on first use and shared by its mailboxes.

A credential's scopes may name several resources (one app registration for EWS and Graph
mailboxes); Entra issues a token for one resource per request, so each resource gets a provider
of its own, with the same single-flight, renewal and secret-rotation rules. Which scopes a
mailbox needs is ``listener.auth.resources.select``, the rule ``load_settings`` validates with.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from listener.auth.oauth2 import OAuth2Client
from listener.auth.provider import CachingTokenProvider, RetryPolicy, TokenClient
from listener.auth.resources import Source, by_resource, select
from listener.config.models import CredentialConfig

__all__ = ["MailboxLike", "TokenProviders", "build_client", "build_provider", "resource_label"]


class MailboxLike(Protocol):
    """What ``TokenProviders.for_mailbox`` reads of a mailbox (``MailboxConfig`` has it)."""

    @property
    def credential(self) -> str: ...
    @property
    def source(self) -> Source: ...
    @property
    def endpoint(self) -> str: ...


def resource_label(scopes: tuple[str, ...]) -> str | None:
    """The one resource ``scopes`` name, for log lines; None when they name none or several."""
    resources = [r for r in by_resource(scopes) if r is not None]
    return resources[0] if len(resources) == 1 else None


def build_client(
    name: str,
    config: CredentialConfig,
    *,
    scopes: tuple[str, ...] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> TokenClient:
    """msal or the RFC 6749 client, as ``config.resolved_provider`` says. No I/O.

    ``scopes``: what to request (default: all the credential's scopes).
    """
    if config.resolved_provider == "msal":
        # Imported here: msal (and what it imports) is a quarter of a second of every start-up,
        # `once` included, for credentials that never use it (benchmarks/README.md, "CPU per
        # message").
        from listener.auth.msal_client import MsalClient  # noqa: PLC0415

        return MsalClient(name, config, scopes=scopes, clock=clock)
    return OAuth2Client(name, config, scopes=scopes, clock=clock)


def build_provider(
    name: str,
    config: CredentialConfig,
    *,
    scopes: tuple[str, ...] | None = None,
    renew_before: float = 300.0,
    retry: RetryPolicy | None = None,
    clock: Callable[[], datetime] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> CachingTokenProvider:
    """A caching provider for one credential (``scopes``: default all of them). No I/O."""
    wanted = tuple(scopes) if scopes is not None else config.scopes
    return CachingTokenProvider(
        name,
        build_client(name, config, scopes=wanted, clock=clock),
        resource=resource_label(wanted),
        renew_before=renew_before,
        retry=retry,
        clock=clock,
        sleep=sleep or time.sleep,
    )


class TokenProviders:
    """The token providers of a configuration, by credential and resource.

    ``get(name)`` is the credential's provider for all its scopes (what every mailbox used before
    Graph sources); ``for_mailbox(mailbox)`` the one for the scopes that mailbox needs. Providers
    are keyed by the scopes they request, so both are the same object whenever the scopes are
    (a credential naming one resource has one provider).
    """

    def __init__(
        self,
        credentials: Mapping[str, CredentialConfig],
        *,
        renew_before: float = 300.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self._credentials = dict(credentials)
        self._renew_before = renew_before
        self._retry = retry
        self._clock = clock
        self._sleep = sleep
        self._providers: dict[tuple[str, tuple[str, ...]], CachingTokenProvider] = {}
        self._lock = threading.Lock()
        # (credential, succeeded) of every token request, whichever resource it was for.
        self.on_request: Callable[[str, bool], None] | None = None

    def __contains__(self, name: object) -> bool:
        return name in self._credentials

    def names(self) -> list[str]:
        return sorted(self._credentials)

    def _config(self, name: str) -> CredentialConfig:
        config = self._credentials.get(name)
        if config is None:
            known = ", ".join(sorted(self._credentials)) or "none"
            raise KeyError(f"no credential named {name!r} (defined: {known})")
        return config

    def get(self, name: str, resource: str | None = None) -> CachingTokenProvider:
        """The provider of credential ``name``: all its scopes, or those of ``resource``
        (``https://graph.microsoft.com``; scopes without a resource go along). KeyError names the
        known credentials, or the credential's resources."""
        config = self._config(name)
        if resource is None:
            scopes = config.scopes
        else:
            groups = by_resource(config.scopes)
            own = groups.get(resource.rstrip("/").lower())
            if own is None:
                known = ", ".join(repr(r) for r in groups if r is not None) or "none"
                raise KeyError(
                    f"credential {name!r} has no scope for the resource {resource!r} "
                    f"(its resources: {known})"
                )
            scopes = own + groups.get(None, ())
        return self._provider(name, config, scopes)

    def for_source(
        self, credential: str, endpoint: str, source: Source = "ews"
    ) -> CachingTokenProvider:
        """The provider a ``source`` mailbox at ``endpoint`` of ``credential`` uses.

        ``ResourceMismatch`` when the credential's scopes cannot serve it (``load_settings``
        refuses such a configuration first).
        """
        config = self._config(credential)
        selection = select(config.scopes, source, endpoint, credential=credential)
        return self._provider(credential, config, selection.scopes)

    def for_mailbox(self, mailbox: MailboxLike) -> CachingTokenProvider:
        """The provider of the mailbox's (credential, resource), built on first use."""
        return self.for_source(mailbox.credential, mailbox.endpoint, mailbox.source)

    def _provider(
        self, name: str, config: CredentialConfig, scopes: tuple[str, ...]
    ) -> CachingTokenProvider:
        with self._lock:
            provider = self._providers.get((name, scopes))
            if provider is None:
                provider = build_provider(
                    name,
                    config,
                    scopes=scopes,
                    renew_before=self._renew_before,
                    retry=self._retry,
                    clock=self._clock,
                    sleep=self._sleep,
                )
                provider.on_request = self._report
                self._providers[(name, scopes)] = provider
            return provider

    def _report(self, credential: str, succeeded: bool) -> None:
        # Looked up per call: on_request may be set after providers were built.
        if self.on_request is not None:
            self.on_request(credential, succeeded)

    def providers(self) -> list[CachingTokenProvider]:
        """The providers built so far."""
        with self._lock:
            return list(self._providers.values())

    def close(self) -> None:
        with self._lock:
            providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            provider.close()
