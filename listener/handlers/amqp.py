"""The ``amqp`` handler: publish the event to a RabbitMQ exchange, persistent, with confirms.

Built on pika's ``BlockingConnection``, the client RabbitMQ's own tutorials use: synchronous,
pure Python, no event loop to own. A pika connection is not thread-safe, so the handler keeps a
small pool of links (one connection and one confirm-mode channel each) and lends each to one
thread at a time: ``pool_size`` threads publish at once, more wait up to ``timeout`` for a link.
A link waits for each confirm (a persistent message: RabbitMQ's fsync, ~5-9 ms on this project's
machine), so the pool, not the CPU, bounds the rate: ``pool_size`` ÷ the confirm's round trip.
The default, 8, is the default ``handler_concurrency``; 4 capped a mailbox at ~460 msg/s.

A message succeeds only once the broker has acked it (publisher confirms): for a persistent
message on a durable queue that is after it reached the disk. Outcomes:

* ack → success; nack → transient (the broker could not take it now).
* ``mandatory`` and no queue bound for the routing key (``basic.return``) → permanent: nothing
  consumes that destination. So is an exchange that does not exist (channel closed 404) and a
  message the broker refuses as such (406 precondition failed, 311 content too large). With
  templated names the destination is a property of the message, not of the connection.
* Connection refused, lost, blocked or silent past ``timeout`` → transient, the link dropped; the
  next call connects again. A message lost with its connection may or may not have reached the
  queue: a retry can then deliver it twice, with the same ``message_id``, on which consumers
  de-duplicate (AMQP has no server-side de-duplication).
* Login refused or no permission on the vhost or exchange (403) → transient with a message that
  says so: it is a configuration error that heals when the password or permission is fixed, and
  the mail should then go through rather than sit among the dead letters.

Properties: ``delivery_mode`` 2 (persistent), ``content_type`` as the webhook's Content-Type,
``message_id`` the idempotency key, headers ``Idempotency-Key`` and ``X-Ews-Listener-Mailbox``.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions

from listener.abc import SecretSource
from listener.handlers._brokers import (
    CONTENT_TYPE,
    Template,
    event_body,
    event_headers,
)
from listener.handlers.config import AmqpHandlerConfig, redact_url
from listener.handlers.errors import HandlerPermanentError, HandlerTransientError
from listener.handlers.webhook import client_context
from listener.model import Message

__all__ = ["AmqpHandler"]

# AMQP reply codes after which this message can never be taken (AMQP 0-9-1 spec, section 1.2):
# 311 content-too-large, 312 no-route, 404 not-found (the exchange), 406 precondition-failed.
_PERMANENT_CODES = frozenset({311, 312, 404, 406})
_ACCESS_REFUSED = 403
# A link used less than this many seconds ago is lent without first polling its socket.
_FRESH = 1.0


class _ConfirmTimeout(Exception):
    """Raised from a pika timer inside the blocking wait for the broker's confirm."""


@dataclass
class _Link:
    """One connection and its confirm-mode channel, used by one thread at a time."""

    connection: pika.BlockingConnection
    channel: pika.adapters.blocking_connection.BlockingChannel
    last_used: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken link may fail any way it likes
            if self.connection.is_open:
                self.connection.close()


class AmqpHandler:
    """Publishes each message to ``exchange`` with ``routing_key``; thread-safe (a link pool)."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        routing_key: str,
        exchange: str = "",
        username: str | None = None,
        password: SecretSource | None = None,
        mandatory: bool = True,
        timeout: float = 10.0,
        heartbeat: int = 60,
        pool_size: int = 8,
        tls: bool = False,
        ca_bundle: Path | str | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.name = name
        self._url = url
        self._host = parts.hostname or "127.0.0.1"
        self._tls = tls or parts.scheme == "amqps"
        self._port = parts.port or (5671 if self._tls else 5672)
        vhost = parts.path[1:] if parts.path.startswith("/") else parts.path
        self._vhost = unquote(vhost) if vhost else "/"
        self._username = username or (unquote(parts.username) if parts.username else "guest")
        self._password = password
        self.exchange = Template.parse(exchange)
        self.routing_key = Template.parse(routing_key)
        self.mandatory = mandatory
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.pool_size = pool_size
        # Built now (reads the bundle, no network): a bundle that cannot load fails the build.
        self._context: ssl.SSLContext | None = client_context(ca_bundle) if self._tls else None
        self._idle: list[_Link] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False

    @classmethod
    def from_config(cls, name: str, config: AmqpHandlerConfig) -> AmqpHandler:
        """An AMQP handler as configured (it connects when the first message arrives)."""
        return cls(
            name,
            config.url,
            routing_key=config.routing_key,
            exchange=config.exchange,
            username=config.user,
            password=config.password,
            mandatory=config.mandatory,
            timeout=config.timeout,
            heartbeat=config.heartbeat,
            pool_size=config.pool_size,
            tls=config.use_tls,
            ca_bundle=config.ca_bundle,
        )

    @functools.cached_property
    def target(self) -> str:
        """Where it publishes, without credentials (safe to log; worked out once)."""
        return redact_url(self._url)

    def __call__(self, message: Message) -> None:
        """Publish and wait for the broker's confirm; raise transient or permanent otherwise."""
        exchange = self.exchange.render(message)
        routing_key = self.routing_key.render(message)
        if len(routing_key.encode()) > 255 or len(exchange.encode()) > 255:
            raise HandlerPermanentError(
                f"amqp {self.target}: exchange or routing key longer than 255 bytes for this "
                f"message ({routing_key[:60]!r}…)"
            )
        properties = pika.BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=pika.DeliveryMode.Persistent,
            message_id=message.idempotency_key,
            app_id="ews-listener",
            headers=event_headers(message),
        )
        where = f"amqp {self.target} exchange {exchange!r} routing key {routing_key!r}"
        link = self._checkout(where)
        healthy = False
        try:
            self._publish(link, exchange, routing_key, event_body(message), properties)
            healthy = True
        except pika.exceptions.UnroutableError:
            healthy = True  # basic.return leaves the channel open
            raise HandlerPermanentError(
                f"{where}: unroutable (mandatory, and no queue is bound for it)"
            ) from None
        except pika.exceptions.NackError:
            healthy = True
            raise HandlerTransientError(f"{where}: the broker nacked the message") from None
        except pika.exceptions.ChannelClosedByBroker as e:
            raise _channel_error(where, e.reply_code, e.reply_text) from None
        except _ConfirmTimeout:
            raise HandlerTransientError(
                f"{where}: no confirm within {self.timeout:g} s (connection dropped)"
            ) from None
        except (pika.exceptions.AMQPError, OSError) as e:
            raise _connection_error(where, e) from None
        finally:
            self._checkin(link, healthy=healthy)

    # --- the link pool -------------------------------------------------------------------------

    def _checkout(self, where: str) -> _Link:
        if not self._slots.acquire(timeout=self.timeout):
            raise HandlerTransientError(
                f"{where}: all {self.pool_size} connections busy for {self.timeout:g} s"
            )
        try:
            while True:
                with self._lock:
                    if self._closed:
                        raise HandlerTransientError(f"{where}: the handler is closed")
                    link = self._idle.pop() if self._idle else None
                if link is None:
                    return self._connect(where)
                if self._usable(link):
                    return link
                link.close()
        except BaseException:
            self._slots.release()
            raise

    def _usable(self, link: _Link) -> bool:
        # A BlockingConnection only reads (close frames) and writes (heartbeats) when called: an
        # idle link may have been closed by the broker for missed heartbeats. Past half the
        # heartbeat it is replaced rather than trusted with a message.
        idle = time.monotonic() - link.last_used
        if self.heartbeat and idle > self.heartbeat / 2:
            return False
        if idle < _FRESH:
            # Confirmed a publish within the last second: trusted without a poll of the socket
            # (that poll was ~13 % of a publish's CPU at a few hundred a second). Closed since, the
            # publish fails as transient and the link is dropped, as a close a moment after the
            # poll would (test_a_link_closed_while_pooled_is_replaced).
            return bool(link.connection.is_open and link.channel.is_open)
        try:
            link.connection.process_data_events(time_limit=0)
        except Exception:
            return False
        return bool(link.connection.is_open and link.channel.is_open)

    def _checkin(self, link: _Link, *, healthy: bool) -> None:
        try:
            if healthy and link.channel.is_open:
                link.last_used = time.monotonic()
                with self._lock:
                    if not self._closed:
                        self._idle.append(link)
                        return
            link.close()
        finally:
            self._slots.release()

    def _connect(self, where: str) -> _Link:
        password = self._password.read().get_secret_value() if self._password else "guest"
        ssl_options = (
            pika.SSLOptions(self._context, server_hostname=self._host) if self._context else None
        )
        parameters = pika.ConnectionParameters(
            host=self._host,
            port=self._port,
            virtual_host=self._vhost,
            credentials=pika.PlainCredentials(self._username, password, erase_on_connect=True),
            ssl_options=ssl_options,
            heartbeat=self.heartbeat,
            blocked_connection_timeout=self.timeout,
            socket_timeout=self.timeout,
            stack_timeout=self.timeout,
            connection_attempts=1,
            client_properties={"connection_name": f"ews-listener handlers.{self.name}"},
        )
        try:
            connection = pika.BlockingConnection(parameters)
        except pika.exceptions.ProbableAuthenticationError:
            raise _login_refused(where, self._username) from None
        except pika.exceptions.ProbableAccessDeniedError:
            raise HandlerTransientError(
                f"{where}: user {self._username!r} may not open vhost {self._vhost!r} "
                "(fix its permissions; retried until then)"
            ) from None
        except pika.exceptions.ConnectionClosedByBroker as e:
            if e.reply_code == _ACCESS_REFUSED:
                raise _login_refused(where, self._username) from None
            raise _connection_error(where, e) from None
        except (pika.exceptions.AMQPError, OSError) as e:
            raise _connection_error(where, e) from None
        try:
            channel = connection.channel()
            channel.confirm_delivery()
        except (pika.exceptions.AMQPError, OSError) as e:
            with contextlib.suppress(Exception):
                connection.close()
            raise _connection_error(where, e) from None
        return _Link(connection, channel)

    def _publish(
        self,
        link: _Link,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: pika.BasicProperties,
    ) -> None:
        # basic_publish blocks until the confirm, with no timeout of its own: a broker that
        # stops answering would hold the thread until the heartbeat gives up (twice the heartbeat).
        # A pika timer fires inside that blocking wait; its exception ends it and the link goes.
        def expire() -> None:
            raise _ConfirmTimeout

        timer = link.connection.call_later(self.timeout, expire)
        try:
            link.channel.basic_publish(
                exchange, routing_key, body, properties, mandatory=self.mandatory
            )
        finally:
            with contextlib.suppress(Exception):
                link.connection.remove_timeout(timer)

    def close(self) -> None:
        """Close every idle connection; links in use close when their call returns."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for link in idle:
            link.close()

    def __repr__(self) -> str:
        return f"AmqpHandler(name={self.name!r}, url={self.target!r})"


def _login_refused(where: str, username: str) -> HandlerTransientError:
    return HandlerTransientError(
        f"{where}: login refused for user {username!r} (check the password's secret source; "
        "retried until it is fixed)"
    )


def _channel_error(where: str, code: int, text: str) -> Exception:
    if code in _PERMANENT_CODES:
        return HandlerPermanentError(f"{where}: refused by the broker: {code} {text}")
    if code == _ACCESS_REFUSED:
        return HandlerTransientError(
            f"{where}: {code} {text} (fix the user's permissions; retried until then)"
        )
    return HandlerTransientError(f"{where}: channel closed by the broker: {code} {text}")


def _connection_error(where: str, error: BaseException) -> HandlerTransientError:
    # pika's texts name the host and port at most, never the credentials.
    if isinstance(error, pika.exceptions.ConnectionBlockedTimeout):
        reason = "the broker blocked the connection (a resource alarm)"
    elif isinstance(error, socket.timeout | TimeoutError):
        reason = "timed out"
    else:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return HandlerTransientError(f"{where}: connection failed or lost ({reason})")
