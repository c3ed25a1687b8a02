"""The ``nats`` handler: publish the event to a NATS JetStream subject and wait for its ack.

nats-py is the NATS maintainers' Python client, and asyncio-only. The handler owns one event loop
in a daemon thread and one connection on it; every calling thread submits its publish with
``asyncio.run_coroutine_threadsafe`` and waits for the result, so any number of threads share the
connection (requests are multiplexed on one inbox subscription). The loop thread starts with the
first message and ends in ``close()``.

Each message carries ``Nats-Msg-Id`` = the idempotency key: JetStream drops a second message with
the same id that arrives within the stream's duplicate window (``duplicate_window``, 2 minutes by
default) and acks it as a duplicate, which counts as success. Past the window a repeat is stored
again; consumers de-duplicate on the ``Idempotency-Key`` header. Other headers as the webhook's:
``Content-Type``, ``Idempotency-Key``, ``X-Ews-Listener-Mailbox``.

Outcomes:

* the stream's ack (or a duplicate ack) → success;
* no stream listens on the subject ("no responders") → permanent: nothing stores it;
* a payload over the server's ``max_payload`` → permanent; a JetStream API error the server
  classes 4xx (e.g. wrong expected stream) → permanent, 5xx → transient;
* no ack within ``timeout``, connection lost or refused → transient. After the first connection
  the client reconnects by itself every ``reconnect_wait`` seconds; what was published while it
  was away is flushed on reconnect, and the retry of that message is a duplicate within the
  window: stored once. A connection that ends for good (``closed``) is replaced on the next call;
* authorization refused → transient with a message that says so (a configuration error that heals
  when the credential is fixed; the mail should then go through, not sit among dead letters).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import ssl
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from listener.abc import SecretSource
from listener.handlers._brokers import Template, event_body, event_headers
from listener.handlers.config import NatsHandlerConfig, redact_url
from listener.handlers.errors import HandlerPermanentError, HandlerTransientError
from listener.handlers.webhook import client_context
from listener.model import Message

__all__ = ["MSG_ID_HEADER", "NatsHandler"]

MSG_ID_HEADER = "Nats-Msg-Id"
_T = TypeVar("_T")


class NatsHandler:
    """Publishes each message to its JetStream subject; thread-safe (one loop, one connection)."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        subject: str,
        username: str | None = None,
        password: SecretSource | None = None,
        token: SecretSource | None = None,
        timeout: float = 5.0,
        reconnect_wait: float = 2.0,
        tls: bool = False,
        ca_bundle: Path | str | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.name = name
        self._url = url
        use_tls = tls or parts.scheme == "tls"
        host = parts.hostname or "127.0.0.1"
        self._host = host
        shown_host = f"[{host}]" if ":" in host else host
        self._server = f"{'tls' if use_tls else 'nats'}://{shown_host}:{parts.port or 4222}"
        self._username = username or parts.username
        self._password = password
        self._token = token
        self.subject = Template.parse(subject)
        self.timeout = timeout
        self.reconnect_wait = reconnect_wait
        self._context: ssl.SSLContext | None = client_context(ca_bundle) if use_tls else None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        # Used on the loop only:
        self._client: Client | None = None
        self._connecting: asyncio.Lock | None = None
        self._last_error: str | None = None

    @classmethod
    def from_config(cls, name: str, config: NatsHandlerConfig) -> NatsHandler:
        """A NATS handler as configured (it connects when the first message arrives)."""
        return cls(
            name,
            config.url,
            subject=config.subject,
            username=config.user,
            password=config.password,
            token=config.token,
            timeout=config.timeout,
            reconnect_wait=config.reconnect_wait,
            tls=config.use_tls,
            ca_bundle=config.ca_bundle,
        )

    @functools.cached_property
    def target(self) -> str:
        """The server without credentials (safe to log; worked out once)."""
        return redact_url(self._url)

    def __call__(self, message: Message) -> None:
        """Publish and wait for JetStream's ack; raise transient or permanent otherwise."""
        subject = self.subject.render(message)
        headers = event_headers(message)
        headers[MSG_ID_HEADER] = message.idempotency_key
        where = f"nats {self.target} subject {subject!r}"
        self._run(self._publish(where, subject, event_body(message), headers), where)

    # --- the loop thread -----------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, _T], where: str) -> _T:
        loop = self._ensure_loop(coroutine, where)
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        # The coroutine bounds itself (connect and ack by ``timeout``); the margin is for a loop
        # that is busy, never a second wait of its own.
        try:
            return future.result(timeout=2 * self.timeout + 1)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise HandlerTransientError(f"{where}: no answer within {self.timeout:g} s") from None

    def _ensure_loop(self, coroutine: Coroutine[Any, Any, Any], where: str) -> Any:
        with self._lock:
            if self._closed:
                coroutine.close()
                raise HandlerTransientError(f"{where}: the handler is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"nats-{self.name}", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def _publish(
        self, where: str, subject: str, body: bytes, headers: dict[str, str]
    ) -> None:
        client = await self._connected(where)
        try:
            await client.jetstream().publish(subject, body, timeout=self.timeout, headers=headers)
        except nats.js.errors.NoStreamResponseError:
            raise HandlerPermanentError(
                f"{where}: no stream stores this subject (no responders)"
            ) from None
        except nats.errors.MaxPayloadError:
            raise HandlerPermanentError(
                f"{where}: {len(body)} bytes exceed the server's max_payload"
            ) from None
        except nats.js.errors.APIError as e:
            text = f"{where}: JetStream refused it: {e.code} {e.err_code} {e.description}"
            if e.code is not None and 400 <= e.code < 500:
                raise HandlerPermanentError(text) from None
            raise HandlerTransientError(text) from None
        except TimeoutError:
            raise HandlerTransientError(
                f"{where}: no ack within {self.timeout:g} s"
                + (f" (last connection error: {self._last_error})" if self._last_error else "")
            ) from None
        except (nats.errors.Error, OSError) as e:
            raise HandlerTransientError(f"{where}: {type(e).__name__} ({e})") from None

    async def _connected(self, where: str) -> Client:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            client = self._client
            if client is not None and not client.is_closed:
                return client  # connected, or reconnecting by itself
            self._client = None
            client = Client()
            options: dict[str, Any] = {
                "servers": [self._server],
                "name": f"ews-listener handlers.{self.name}",
                "connect_timeout": self.timeout,
                "reconnect_time_wait": self.reconnect_wait,
                "max_reconnect_attempts": -1,  # once connected, keep reconnecting
                "error_cb": self._on_error,
                "disconnected_cb": self._on_disconnected,
                "reconnected_cb": self._on_reconnected,
            }
            if self._context is not None:
                options["tls"] = self._context
                options["tls_hostname"] = self._host
            if self._token is not None:
                options["token"] = self._token.read().get_secret_value()
            elif self._password is not None:
                options["user"] = self._username or ""
                options["password"] = self._password.read().get_secret_value()
            elif self._username:
                options["user"] = self._username
            self._last_error = None
            try:
                # max_reconnect_attempts = -1 would make the first connect try forever: it is
                # bounded here instead, and the next message tries again.
                await asyncio.wait_for(client.connect(**options), self.timeout)
            except BaseException as e:
                with contextlib.suppress(Exception):
                    await client.close()
                if isinstance(e, asyncio.CancelledError):
                    raise
                reason = self._last_error or type(e).__name__
                if "authorization" in reason.lower():
                    raise HandlerTransientError(
                        f"{where}: authorization refused (check the user, password or token "
                        "and their secret sources; retried until fixed)"
                    ) from None
                raise HandlerTransientError(f"{where}: cannot connect ({reason})") from None
            self._client = client
            return client

    async def _on_error(self, error: Exception) -> None:
        # nats-py reports connect and protocol errors here; their texts name the server at most.
        self._last_error = (
            f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        )

    async def _on_disconnected(self) -> None:
        pass

    async def _on_reconnected(self) -> None:
        self._last_error = None

    async def _shutdown(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), self.timeout)

    def close(self) -> None:
        """Close the connection, then stop and join the loop thread."""
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(self.timeout + 1)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(self.timeout + 1)
        if not thread.is_alive():
            loop.close()

    def __repr__(self) -> str:
        return f"NatsHandler(name={self.name!r}, url={self.target!r})"
