"""The caching layer every credential's tokens go through, whichever client fetches them.

One token per (credential, resource) in memory, shared by all the mailboxes that need it (see
``listener.auth.resources``); renewed ``renew_before`` seconds before it expires; one request in
flight per provider (a burst of mailboxes needing a token at once waits for that one answer
instead of stampeding the token endpoint); bounded retries with
exponential back-off on 5xx and network errors; after ``invalid_client`` the secret is re-read once
and, when it changed (rotation), the request is tried once more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from listener.abc import AccessToken
from listener.errors import TokenError

__all__ = ["CachingTokenProvider", "RetryPolicy", "TokenClient"]

log = structlog.get_logger("listener.auth")


class TokenClient(Protocol):
    """Fetches one new token from the endpoint; no caching, no retries."""

    def request_token(self) -> AccessToken:
        """A new token; raises ``TokenError`` (``transient`` for 5xx/network) or ``SecretError``."""
        ...

    def refresh_secret(self) -> bool:
        """Re-read the secret source(s); True when the value changed."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient token errors: ``attempts`` in all, delays growing by ``multiplier``."""

    attempts: int = 3
    initial_delay: float = 0.5
    max_delay: float = 10.0
    multiplier: float = 2.0

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        return float(min(self.max_delay, self.initial_delay * self.multiplier ** (retry - 1)))


class CachingTokenProvider:
    """A ``TokenProvider`` for one credential (and one resource) on top of a ``TokenClient``.

    ``resource`` only labels log lines (the client holds the scopes); metrics keep the credential.
    """

    def __init__(
        self,
        name: str,
        client: TokenClient,
        *,
        resource: str | None = None,
        renew_before: float = 300.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self.resource = resource
        self.client = client
        self.renew_before = renew_before
        self.retry = retry or RetryPolicy()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sleep = sleep
        self._lock = threading.Lock()
        self._token: AccessToken | None = None
        self._renew_at: datetime | None = None
        self._generation = 0  # incremented on every token fetched
        self.requests = 0  # token requests sent (tests and metrics)
        self.on_request: Callable[[str, bool], None] | None = None  # (credential, succeeded)

    def __repr__(self) -> str:
        state = "cached" if self._token is not None else "empty"
        return f"CachingTokenProvider(name={self.name!r}, resource={self.resource!r}, {state})"

    def get_token(self, *, force_refresh: bool = False) -> AccessToken:
        """A token valid beyond the renewal margin; ``force_refresh`` asks the server anew.

        Concurrent callers wait for the one request in flight. A ``force_refresh`` that waited
        while another thread fetched a new token takes that one: 50 mailboxes hitting a 401 at the
        same moment cause one request, not 50.
        """
        seen = self._generation
        with self._lock:
            token = self._token
            if token is not None:
                fresh_elsewhere = force_refresh and self._generation != seen
                if (not force_refresh or fresh_elsewhere) and not self._due():
                    return token
            return self._fetch()

    def invalidate(self, token: str) -> None:
        """Forget ``token`` when it is the cached one (the server refused it)."""
        with self._lock:
            if self._token is not None and self._token.token == token:
                self._token = None
                self._renew_at = None

    def fetch_uncached(self) -> AccessToken:
        """A new token straight from the endpoint, bypassing and not touching the cache."""
        return self._with_retries()

    def close(self) -> None:
        self.client.close()

    def _due(self) -> bool:
        return self._renew_at is None or self._clock() >= self._renew_at

    def _fetch(self) -> AccessToken:
        token = self._with_retries()
        now = self._clock()
        lifetime = (token.expires_at - now).total_seconds()
        # A token shorter-lived than twice the margin would be renewed on every call: renew it at
        # half its life instead.
        margin = min(self.renew_before, max(lifetime, 0) / 2)
        self._token = token
        self._renew_at = token.expires_at - timedelta(seconds=margin)
        self._generation += 1
        log.info(
            "token.acquired",
            credential=self.name,
            resource=self.resource,
            expires_in=round(lifetime),
            renew_in=round((self._renew_at - now).total_seconds()),
        )
        return token

    def _with_retries(self) -> AccessToken:
        rotated = False
        retry = 0
        while True:
            self.requests += 1
            try:
                token = self.client.request_token()
            except TokenError as exc:
                self._report(succeeded=False)
                if exc.error == "invalid_client" and not rotated:
                    rotated = True
                    if self._secret_rotated():
                        log.info(
                            "token.secret_reread", credential=self.name, resource=self.resource
                        )
                        continue
                retry += 1
                if not exc.transient or retry >= self.retry.attempts:
                    log.warning(
                        "token.failed",
                        credential=self.name,
                        resource=self.resource,
                        error=exc.error,
                        aadsts=exc.aadsts,
                        status=exc.status,
                        attempts=retry,
                        reason=str(exc),
                    )
                    raise
                delay = self.retry.delay(retry)
                log.info(
                    "token.retry",
                    credential=self.name,
                    resource=self.resource,
                    reason=str(exc),
                    delay=delay,
                    retry=retry,
                )
                self._sleep(delay)
                continue
            self._report(succeeded=True)
            return token

    def _secret_rotated(self) -> bool:
        try:
            return self.client.refresh_secret()
        except Exception as exc:  # a failing re-read must not hide the server's answer
            log.warning(
                "token.secret_reread_failed",
                credential=self.name,
                resource=self.resource,
                reason=str(exc),
            )
            return False

    def _report(self, *, succeeded: bool) -> None:
        if self.on_request is not None:
            self.on_request(self.name, succeeded)
