"""The ``webhook`` handler: POST the JSON event, signed, with an ``Idempotency-Key``.

The receiver verifies ``X-Ews-Listener-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact
body bytes keyed by the shared secret, and de-duplicates on ``Idempotency-Key`` (the same message
handed over again after a crash carries the same key).

TLS goes through an ``ssl.SSLContext`` we build: httpx uses a given context as is, so neither
``REQUESTS_CA_BUNDLE`` nor ``SSL_CERT_FILE`` in the environment can change whom we trust (both
are set on machines where ``requests`` is configured for something else).

The response body is streamed and at most :data:`BODY_LIMIT` bytes of it are read (for the error
text); the rest is dropped with the connection. Read whole, a 400 MiB 2xx answer took the
listener from 41 to 842 MB (issue 11; guarded by ``tests/handlers/test_webhook_limits.py``).
Header values are registered for log redaction when the handler is built: they are usually API
keys.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import hmac
import ssl
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from pathlib import Path

import httpx
from pydantic import SecretStr

from listener._tls import trust_context
from listener.abc import SecretSource
from listener.handlers.config import WebhookHandlerConfig, redact_url
from listener.handlers.errors import (
    HandlerConfigError,
    HandlerPermanentError,
    HandlerTransientError,
)
from listener.model import Message
from listener.observability.redaction import register_secret

__all__ = ["BODY_LIMIT", "SIGNATURE_HEADER", "WebhookHandler", "parse_retry_after", "sign"]

SIGNATURE_HEADER = "X-Ews-Listener-Signature"
# Bytes of a response body read at most; only an excerpt of it reaches the error text.
BODY_LIMIT = 64 * 1024
_EXCERPT_CHARS = 200


def sign(secret: SecretStr | str, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    key = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    return "sha256=" + hmac.new(key.encode("utf-8"), body, hashlib.sha256).hexdigest()


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now())


def _head(response: httpx.Response, limit: int = BODY_LIMIT) -> bytes:
    """The first ``limit`` bytes of a streamed body (decoded from gzip etc.); the rest unread."""
    data = bytearray()
    try:
        for chunk in response.iter_bytes(chunk_size=min(limit, 16 * 1024)):
            data += chunk
            if len(data) >= limit:
                break
    except httpx.HTTPError:
        pass  # a body cut short or undecodable: what arrived is enough for the excerpt
    return bytes(data[:limit])


def _excerpt(response: httpx.Response, head: bytes) -> str:
    try:
        text = head.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # an encoding Python does not know: say so rather than fail
        return "(undecodable body)"
    text = " ".join(text.split())  # one line, no control characters from the receiver
    if not text:
        return "(empty body)"
    return text[:_EXCERPT_CHARS] + ("…" if len(text) > _EXCERPT_CHARS else "")


def client_context(ca_bundle: Path | str | None) -> ssl.SSLContext:
    """Trust ``ca_bundle`` only when given, else the system store: the rule of every outgoing
    connection (``listener.auth._tls``); a bundle that cannot load is a configuration error."""
    try:
        return trust_context(ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise HandlerConfigError(f"cannot load ca_bundle {ca_bundle}: {exc}") from None


class WebhookHandler:
    """POSTs each message to one URL; one connection pool per handler, shared across threads."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        secret: SecretSource | None = None,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        attachments_inline_max: int = 0,
        ca_bundle: Path | str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.name = name
        self._url = url
        self._secret = secret
        self.attachments_inline_max = attachments_inline_max
        self._headers = dict(headers or {})
        for value in self._headers.values():
            register_secret(value)
        self._client = httpx.Client(
            verify=client_context(ca_bundle),
            timeout=timeout,
            follow_redirects=False,  # a redirected POST is a configuration error, not a retry
            transport=transport,
            headers={"User-Agent": "ews-listener"},
        )

    @classmethod
    def from_config(cls, name: str, config: WebhookHandlerConfig) -> WebhookHandler:
        """A webhook handler as configured (no request is made until a message arrives)."""
        return cls(
            name,
            config.url,
            secret=config.secret,
            timeout=config.timeout,
            headers={k: v.get_secret_value() for k, v in config.headers.items()},
            attachments_inline_max=config.attachments_inline_max,
            ca_bundle=config.ca_bundle,
        )

    @functools.cached_property
    def target(self) -> str:
        """The URL without user info or query (safe to log; worked out once)."""
        return redact_url(self._url)

    def body(self, message: Message) -> bytes:
        """The exact bytes POSTed (and signed) for ``message``."""
        return message.to_json(attachments_inline_max=self.attachments_inline_max).encode("utf-8")

    def __call__(self, message: Message) -> None:
        """POST the event; returns on 2xx, raises transient or permanent errors otherwise."""
        body = self.body(message)
        headers = dict(self._headers)
        headers["Content-Type"] = "application/json; charset=utf-8"
        headers["Idempotency-Key"] = message.idempotency_key
        if self._secret is not None:
            # Sources cache their value; read per call so a refreshed secret is picked up.
            headers[SIGNATURE_HEADER] = sign(self._secret.read(), body)
        try:
            with self._client.stream("POST", self._url, content=body, headers=headers) as response:
                # Read even on success: a short body lets the connection be reused; a long one
                # is cut at BODY_LIMIT and closing the stream drops the connection unread.
                head = _head(response)
        except httpx.TransportError as e:
            # Connection refused or reset, TLS failure, timeout: the receiver may be back soon.
            # str(e) can quote the URL; say only the kind of failure and where.
            raise HandlerTransientError(
                f"webhook {self.target}: {type(e).__name__} ({_reason(e)})"
            ) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        excerpt = _excerpt(response, head)
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            hint = f", retry after {retry_after:g} s" if retry_after is not None else ""
            raise HandlerTransientError(
                f"webhook {self.target} answered {status}{hint}: {excerpt}",
                status=status,
                retry_after=retry_after,
            )
        raise HandlerPermanentError(
            f"webhook {self.target} answered {status}: {excerpt}", status=status
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __repr__(self) -> str:
        return f"WebhookHandler(name={self.name!r}, url={self.target!r})"


def _reason(error: httpx.TransportError) -> str:
    # httpx wraps the socket/ssl error; its class and errno say enough without quoting the URL.
    cause = error.__cause__ or error.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    text = str(error)
    return text if "://" not in text else type(error).__name__
