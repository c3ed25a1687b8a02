"""The ``redis_stream`` handler: ``XADD`` the event to a Redis stream, once per key in a window.

Built on redis-py, Redis's own Python client: synchronous, its connection pool thread-safe. The
pool is a ``BlockingConnectionPool`` of ``pool_size`` connections: more threads wait up to
``timeout`` for one instead of opening connections without bound. redis-py reconnects a broken
connection on its next command by itself.

**De-duplication** (streams have none of their own). One Lua script, atomic on the server, does:
if ``{dedup_prefix}{stream}:{key}`` exists, return the entry id it holds and add nothing; else
``XADD`` the entry (``MAXLEN ~ maxlen`` when set) and ``SET`` that key to the new entry id with
``EX dedup_window``. So a message handed over again within ``dedup_window`` seconds (default one
day) adds nothing, whether the first call failed before, during or after the ``XADD`` on the
server: a reply lost with the connection is the common case, and its retry finds the key. Past
the window a repeat is added again; consumers de-duplicate on the ``Idempotency-Key`` field.
``dedup_window = 0`` turns it off (a plain ``XADD``). The guard costs one small key per message
for the window. With a Redis Cluster both keys must live in one slot: give the stream a hash tag
(``{mail}:orders``) and the dedup prefix the same tag.

Entry fields: ``event`` (the webhook's JSON body, byte for byte), ``Content-Type``,
``Idempotency-Key`` and ``X-Ews-Listener-Mailbox`` (the names of the other brokers' headers).

Outcomes: the entry added, or found within the window → success. Connection refused, lost or
timed out, a server busy, loading, read-only (a replica after a failover), out of memory or in a
cluster reconfiguration → transient. Login or ACL refused → transient with a message that says so
(a configuration error that heals when fixed). Anything else the server refuses (``WRONGTYPE``:
the key holds no stream) → permanent.
"""

from __future__ import annotations

import functools
import ssl
import threading
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.connection import SSLConnection
from redis.retry import Retry

from listener.abc import SecretSource
from listener.handlers._brokers import Template, event_body, event_headers
from listener.handlers.config import RedisStreamHandlerConfig, redact_url
from listener.handlers.errors import HandlerPermanentError, HandlerTransientError
from listener.handlers.webhook import client_context
from listener.model import Message

__all__ = ["DEDUP_SCRIPT", "RedisStreamHandler"]

# KEYS: the dedup key, the stream. ARGV: window (s, 0 = no dedup), maxlen (0 = none), then field
# and value pairs. Returns {1, id} when added, {0, id} when found within the window.
DEDUP_SCRIPT = """
local window = tonumber(ARGV[1])
local maxlen = tonumber(ARGV[2])
if window > 0 then
  local existing = redis.call('GET', KEYS[1])
  if existing then return {0, existing} end
end
local id
if maxlen > 0 then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 3))
else
  id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
end
if window > 0 then redis.call('SET', KEYS[1], id, 'EX', window) end
return {1, id}
"""

# Server errors that say "not now" rather than "never" (their first word, Redis's error codes).
_TRANSIENT_CODES = ("BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "OOM")
_AUTH_CODES = ("NOAUTH", "NOPERM", "WRONGPASS")


class _TrustedSSLConnection(SSLConnection):
    """redis-py's TLS connection with our context: redis-py builds its own from the system store
    and *adds* ``ssl_ca_certs`` to it, where the project's rule trusts the bundle only."""

    def __init__(self, *, trust: ssl.SSLContext, **kwargs: Any) -> None:
        self._trust = trust
        super().__init__(**kwargs)

    def _wrap_socket_with_ssl(self, sock: Any) -> Any:
        return self._trust.wrap_socket(sock, server_hostname=self.host)


class RedisStreamHandler:
    """Adds each message to its stream at most once per ``dedup_window``; thread-safe."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        stream: str,
        username: str | None = None,
        password: SecretSource | None = None,
        maxlen: int | None = None,
        dedup_window: int = 86400,
        dedup_prefix: str = "ews-listener:dedup:",
        timeout: float = 5.0,
        pool_size: int = 8,
        tls: bool = False,
        ca_bundle: Path | str | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.name = name
        self._url = url
        self.stream = Template.parse(stream)
        self.maxlen = maxlen
        self.dedup_window = dedup_window
        self.dedup_prefix = dedup_prefix
        self.timeout = timeout
        self._password = password
        use_tls = tls or parts.scheme == "rediss"
        self._kwargs: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 6379,
            "db": int(parts.path.strip("/") or 0),
            "username": username or (unquote(parts.username) if parts.username else None),
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            # Retrying is the pipeline's (with back-off); redis-py's own retries (three by
            # default) would triple the wait of a call to a server that is away.
            "retry": Retry(NoBackoff(), 0),
        }
        if use_tls:
            self._kwargs["connection_class"] = _TrustedSSLConnection
            self._kwargs["trust"] = client_context(ca_bundle)
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._script: Any = None

    @classmethod
    def from_config(cls, name: str, config: RedisStreamHandlerConfig) -> RedisStreamHandler:
        """A Redis stream handler as configured (it connects when the first message arrives)."""
        return cls(
            name,
            config.url,
            stream=config.stream,
            username=config.user,
            password=config.password,
            maxlen=config.maxlen,
            dedup_window=config.dedup_window,
            dedup_prefix=config.dedup_prefix,
            timeout=config.timeout,
            pool_size=config.pool_size,
            tls=config.use_tls,
            ca_bundle=config.ca_bundle,
        )

    @functools.cached_property
    def target(self) -> str:
        """The server without credentials (safe to log; worked out once)."""
        return redact_url(self._url)

    def dedup_key(self, stream: str, message: Message) -> str:
        """The key that remembers ``message`` was added to ``stream``."""
        return f"{self.dedup_prefix}{stream}:{message.idempotency_key}"

    def __call__(self, message: Message) -> None:
        """Add the entry (or find it within the window); raise transient or permanent otherwise."""
        stream = self.stream.render(message)
        where = f"redis {self.target} stream {stream!r}"
        fields: list[str | bytes] = ["event", event_body(message)]
        for name, value in event_headers(message).items():
            fields += [name, value]
        try:
            self._call_script(stream, message, fields)
        except redis.exceptions.AuthenticationError:
            raise HandlerTransientError(
                f"{where}: login refused (check the password's secret source; retried until "
                "it is fixed)"
            ) from None
        except redis.exceptions.NoPermissionError as e:
            raise HandlerTransientError(
                f"{where}: the user may not do this ({e}); fix its ACL, retried until then"
            ) from None
        except redis.exceptions.ResponseError as e:
            code = str(e).split(" ", 1)[0].upper()
            if code in _AUTH_CODES:
                raise HandlerTransientError(
                    f"{where}: refused ({e}); fix the credentials or ACL, retried until then"
                ) from None
            if code in _TRANSIENT_CODES or isinstance(e, redis.exceptions.BusyLoadingError):
                raise HandlerTransientError(f"{where}: {e}") from None
            raise HandlerPermanentError(f"{where}: refused by the server: {e}") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
            raise HandlerTransientError(
                f"{where}: connection failed or lost ({type(e).__name__}: {e})"
            ) from None

    def _call_script(self, stream: str, message: Message, fields: list[str | bytes]) -> None:
        if self._client is None:
            self._connect()
        assert self._script is not None
        self._script(
            keys=[self.dedup_key(stream, message), stream],
            args=[self.dedup_window, self.maxlen or 0, *fields],
        )

    def _connect(self) -> None:
        # Builds the pool only (no connection yet); the password is read when first needed.
        with self._lock:
            if self._client is not None:
                return
            password = self._password.read().get_secret_value() if self._password else None
            pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
                max_connections=self._pool_size,
                timeout=self.timeout,
                password=password,
                **self._kwargs,
            )
            client = redis.Redis(connection_pool=pool)
            self._script = client.register_script(DEDUP_SCRIPT)
            self._client = client

    @property
    def client(self) -> redis.Redis:
        """The client (connected on first use); for tests and tools reading the stream back."""
        if self._client is None:
            self._connect()
        return cast(redis.Redis, self._client)

    def close(self) -> None:
        """Close every pooled connection."""
        if self._client is not None:
            self._client.connection_pool.disconnect()
            self._client.close()

    def __repr__(self) -> str:
        return f"RedisStreamHandler(name={self.name!r}, url={self.target!r})"
