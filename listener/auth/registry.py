"""One token provider per configured credential, built on first use and shared by its mailboxes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from listener.auth.msal_client import MsalClient
from listener.auth.oauth2 import OAuth2Client
from listener.auth.provider import CachingTokenProvider, RetryPolicy, TokenClient
from listener.config.models import CredentialConfig

__all__ = ["TokenProviders", "build_client", "build_provider"]


def build_client(
    name: str, config: CredentialConfig, *, clock: Callable[[], datetime] | None = None
) -> TokenClient:
    """msal or the RFC 6749 client, as ``config.resolved_provider`` says. No I/O."""
    if config.resolved_provider == "msal":
        return MsalClient(name, config, clock=clock)
    return OAuth2Client(name, config, clock=clock)


def build_provider(
    name: str,
    config: CredentialConfig,
    *,
    renew_before: float = 300.0,
    retry: RetryPolicy | None = None,
    clock: Callable[[], datetime] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> CachingTokenProvider:
    """A caching provider for one credential. No I/O: secrets and tokens are fetched on use."""
    return CachingTokenProvider(
        name,
        build_client(name, config, clock=clock),
        renew_before=renew_before,
        retry=retry,
        clock=clock,
        sleep=sleep or time.sleep,
    )


class TokenProviders:
    """The token providers of a configuration, by credential name."""

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
        self._providers: dict[str, CachingTokenProvider] = {}
        self._lock = threading.Lock()
        self.on_request: Callable[[str, bool], None] | None = None

    def __contains__(self, name: object) -> bool:
        return name in self._credentials

    def names(self) -> list[str]:
        return sorted(self._credentials)

    def get(self, name: str) -> CachingTokenProvider:
        """The provider of credential ``name`` (KeyError naming the known ones)."""
        with self._lock:
            provider = self._providers.get(name)
            if provider is None:
                if name not in self._credentials:
                    known = ", ".join(sorted(self._credentials)) or "none"
                    raise KeyError(f"no credential named {name!r} (defined: {known})")
                provider = build_provider(
                    name,
                    self._credentials[name],
                    renew_before=self._renew_before,
                    retry=self._retry,
                    clock=self._clock,
                    sleep=self._sleep,
                )
                provider.on_request = self.on_request
                self._providers[name] = provider
            return provider

    def close(self) -> None:
        with self._lock:
            providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            provider.close()
