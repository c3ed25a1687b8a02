"""Configuration models of the built-in handlers: the ``[handlers.NAME]`` tables.

``HandlerConfig`` is a discriminated union on ``type``; ``listener.config`` uses it for the
``[handlers.NAME]`` tables. Every model is frozen and refuses unknown keys, so a typo in the TOML
is an error that names the key instead of a silently ignored option. Values that may hold
credentials (webhook headers, command environment) are ``SecretStr``: they never show in ``repr``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from listener.handlers._brokers import Template
from listener.secrets import SecretSpec
from listener.secrets._base import is_loopback_host

__all__ = [
    "AmqpHandlerConfig",
    "CommandHandlerConfig",
    "DirectoryHandlerConfig",
    "HandlerConfig",
    "LogHandlerConfig",
    "NatsHandlerConfig",
    "PythonHandlerConfig",
    "RedisStreamHandlerConfig",
    "WebhookHandlerConfig",
    "is_loopback_host",
    "redact_url",
]

ENTRY_POINT_GROUP = "ews_listener.handlers"

_TARGET = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def redact_url(url: str) -> str:
    """``scheme://host:port/path`` without user info or query: webhook URLs often embed a token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{host}{port}{parts.path}{query}"


class _HandlerBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # None: as many calls at once as the mailboxes' handler_concurrency and the process's
    # handler_workers allow; 1 for a handler that is not thread-safe.
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Calls of this handler at once, across all mailboxes."
    )


class PythonHandlerConfig(_HandlerBase):
    """A Python callable: ``target = "package.module:function"`` or an entry point by name.

    With ``options`` the object found is a factory: it is called once with ``**options`` and
    must return the handler callable (which may have a ``close()``). Without ``options`` the
    object itself is the handler.
    """

    type: Literal["python"]
    target: str | None = Field(default=None, description="'package.module:attribute'.")
    entry_point: str | None = Field(
        default=None, description=f"Name of an entry point in the {ENTRY_POINT_GROUP!r} group."
    )
    options: dict[str, Any] | None = Field(
        default=None, description="When given, the target is a factory called with **options."
    )

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str | None) -> str | None:
        if value is not None and not _TARGET.match(value):
            raise ValueError(f"must look like 'package.module:function', got {value!r}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> PythonHandlerConfig:
        if (self.target is None) == (self.entry_point is None):
            raise ValueError("give exactly one of 'target' or 'entry_point'")
        return self


class WebhookHandlerConfig(_HandlerBase):
    """POST the JSON event to ``url``, signed with HMAC-SHA256 when a ``secret`` is given."""

    type: Literal["webhook"]
    url: str = Field(repr=False, description="https URL (plain http only for loopback hosts).")
    secret: SecretSpec | None = Field(
        default=None, description="Key of the X-Ews-Listener-Signature HMAC."
    )
    timeout: float = Field(
        default=10.0, gt=0, description="Seconds for each of connect, send and each read."
    )
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="Extra headers.")
    attachments_inline_max: int = Field(
        default=0, ge=0, description="Inline attachments up to this many bytes as base64."
    )
    ca_bundle: Path | None = Field(default=None, description="PEM file of CAs to trust.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"must be an https URL like 'https://host/path', got {value!r}")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError(
                "must use https (plain http is accepted only for loopback hosts such as "
                f"127.0.0.1), got {redact_url(value)!r}"
            )
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, header in value.items():
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"invalid HTTP header name {name!r}")
            if any(c in header.get_secret_value() for c in "\r\n\x00"):
                raise ValueError(f"header {name!r}: the value must not contain CR, LF or NUL")
        return value


class CommandHandlerConfig(_HandlerBase):
    """Run ``argv`` with the JSON event on stdin; exit 0 success, 75 retry, else permanent."""

    type: Literal["command"]
    argv: tuple[str, ...] = Field(min_length=1, description="Program and arguments (no shell).")
    timeout: float = Field(default=60.0, gt=0, description="Seconds before the group is killed.")
    kill_grace: float = Field(
        default=5.0, ge=0, description="Seconds between SIGTERM and SIGKILL after a timeout."
    )
    env: dict[str, SecretStr] = Field(default_factory=dict, description="Extra environment.")
    inherit_env: tuple[str, ...] = Field(
        default=(),
        description="Names passed on from the listener's environment besides PATH, LANG, HOME "
        "and TZ; never one a secret source reads.",
    )
    cwd: Path | None = None
    pass_mime: bool = Field(
        default=True, description="Fetch the MIME into a file named by EWS_LISTENER_MIME_FILE."
    )

    @field_validator("inherit_env", mode="before")
    @classmethod
    def _inherit_list(cls, value: Any) -> Any:
        if value is False:
            return ()
        if value is True:
            raise ValueError(
                'must be a list of variable names, e.g. ["PYTHONPATH"]: the whole environment '
                "is no longer passed on, since it holds the listener's secrets"
            )
        return value

    @field_validator("inherit_env")
    @classmethod
    def _check_inherit(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"invalid environment variable name {name!r}")
            if name.upper().startswith("EWS_LISTENER_"):
                raise ValueError(
                    f"{name!r}: EWS_LISTENER_* variables are the listener's own configuration "
                    "(overrides may carry secrets); set what the program needs in 'env'"
                )
        return value

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name in value:
            if not name or "=" in name or "\x00" in name:
                raise ValueError(f"invalid environment variable name {name!r}")
        return value


class DirectoryHandlerConfig(_HandlerBase):
    """Write ``<key>.eml`` and ``<key>.json`` (last, so it marks completeness) into ``path``."""

    type: Literal["directory"]
    path: Path
    attachments: bool = Field(
        default=False, description="Also write attachments into '<key>.attachments/'."
    )


class LogHandlerConfig(_HandlerBase):
    """Write one log line per message (mailbox, subject, from, key)."""

    type: Literal["log"]
    level: Literal["debug", "info", "warning", "error"] = "info"


class _BrokerBase(_HandlerBase):
    """A broker connection: URL without secrets, password from a secret source, one trust rule.

    Plain (non-TLS) connections are accepted only to loopback hosts, as the webhook's plain http:
    the password would cross the network in clear text.
    """

    schemes: ClassVar[tuple[str, str]]  # (plain, TLS) URL schemes, set by each subclass

    url: str
    username: str | None = Field(default=None, description="Overrides the URL's user name.")
    password: SecretSpec | None = Field(default=None, description="From any secret source.")
    tls: bool = Field(default=False, description="TLS even when the URL's scheme is the plain one.")
    ca_bundle: Path | None = Field(default=None, description="PEM file of CAs to trust.")
    timeout: float = Field(
        default=10.0, gt=0, description="Seconds to connect, and to wait for the broker's ack."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        plain, secure = cls.schemes
        parts = urlsplit(value)
        if parts.scheme not in (plain, secure) or not parts.hostname:
            raise ValueError(
                f"must look like '{secure}://host:port' or '{plain}://host:port', got "
                f"{redact_url(value)!r}"
            )
        if parts.password is not None:
            raise ValueError(
                f"must not hold a password ({redact_url(value)!r}): give it as "
                'password = { source = "env", name = "…" } (or any secret source)'
            )
        try:
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError as e:
            raise ValueError(f"{redact_url(value)!r}: {e}") from None
        return value

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> _BrokerBase:
        if not self.use_tls and not is_loopback_host(urlsplit(self.url).hostname):
            plain, secure = self.schemes
            raise ValueError(
                f"url: {redact_url(self.url)!r} is not encrypted; use {secure}:// (or tls = "
                f"true): plain {plain}:// is accepted only for loopback hosts such as 127.0.0.1"
            )
        return self

    @property
    def use_tls(self) -> bool:
        """Whether the connection is TLS (the TLS scheme or ``tls = true``)."""
        return self.tls or urlsplit(self.url).scheme == self.schemes[1]

    @property
    def user(self) -> str | None:
        """``username``, else the URL's user name, else None."""
        return self.username or urlsplit(self.url).username


def _template(value: str, *, what: str) -> str:
    try:
        Template.parse(value)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return value


class AmqpHandlerConfig(_BrokerBase):
    """Publish the event to a RabbitMQ (AMQP 0-9-1) exchange, persistent, with confirms."""

    schemes = ("amqp", "amqps")

    type: Literal["amqp"]
    url: str = Field(
        repr=False, description="'amqps://user@host:5671/vhost' (vhost URL-encoded: %2F for /)."
    )
    exchange: str = Field(default="", description="Template; '' is the default exchange.")
    routing_key: str = Field(description="Template, e.g. 'mail.{mailbox}.{sender_domain}'.")
    mandatory: bool = Field(
        default=True, description="A message no queue receives is a permanent failure."
    )
    heartbeat: int = Field(default=60, ge=0, description="AMQP heartbeat in seconds (0: off).")
    pool_size: int = Field(
        default=8,
        ge=1,
        description="Connections kept open (as many as the default handler_concurrency: each "
        "waits for its confirm); more threads wait for one.",
    )

    @field_validator("exchange", "routing_key")
    @classmethod
    def _check_template(cls, value: str, info: Any) -> str:
        _template(value, what=info.field_name)
        if len(Template.parse(value).literal.encode()) > 255:
            raise ValueError(f"{info.field_name}: longer than AMQP's 255 bytes: {value!r}")
        return value


_SUBJECT_TOKEN = re.compile(r"[^\s.*>]+")


class NatsHandlerConfig(_BrokerBase):
    """Publish the event to a NATS JetStream subject; the server de-duplicates on Nats-Msg-Id."""

    schemes = ("nats", "tls")

    type: Literal["nats"]
    url: str = Field(repr=False, description="'tls://host:4222' or 'nats://127.0.0.1:4222'.")
    token: SecretSpec | None = Field(default=None, description="Token auth (not with a user).")
    subject: str = Field(description="Template, e.g. 'mail.{mailbox_domain}.{mailbox_local}'.")
    timeout: float = Field(default=5.0, gt=0, description="Seconds to connect and for the ack.")
    reconnect_wait: float = Field(
        default=2.0, gt=0, description="Seconds between attempts to reconnect a lost connection."
    )

    @field_validator("subject")
    @classmethod
    def _check_subject(cls, value: str) -> str:
        _template(value, what="subject")
        literal = Template.parse(value).literal
        if not all(_SUBJECT_TOKEN.fullmatch(t) for t in literal.split(".")):
            raise ValueError(
                f"subject: {value!r} is not a publishable subject: tokens separated by single "
                "dots, no spaces, no wildcards (* or >)"
            )
        return value

    @model_validator(mode="after")
    def _one_auth(self) -> NatsHandlerConfig:
        if self.token is not None and (self.password is not None or self.user):
            raise ValueError("give either 'token' or a user name with 'password', not both")
        return self


class RedisStreamHandlerConfig(_BrokerBase):
    """XADD the event to a Redis stream, at most once per idempotency key within a window."""

    schemes = ("redis", "rediss")

    type: Literal["redis_stream"]
    url: str = Field(repr=False, description="'rediss://host:6380/0' or 'redis://127.0.0.1/0'.")
    stream: str = Field(description="Template of the stream key, e.g. 'mail:{mailbox}'.")
    maxlen: int | None = Field(
        default=None, ge=1, description="Trim the stream to about this many entries (MAXLEN ~)."
    )
    dedup_window: int = Field(
        default=86400,
        ge=0,
        description="Seconds a key is remembered: a repeat within them adds nothing (0: off).",
    )
    dedup_prefix: str = Field(default="ews-listener:dedup:", min_length=1)
    timeout: float = Field(default=5.0, gt=0, description="Seconds to connect and per command.")
    pool_size: int = Field(
        default=8, ge=1, description="Connections at most; more threads wait up to 'timeout'."
    )

    @field_validator("stream")
    @classmethod
    def _check_stream(cls, value: str) -> str:
        _template(value, what="stream")
        if not value:
            raise ValueError("stream: must not be empty")
        return value


HandlerConfig = Annotated[
    PythonHandlerConfig
    | WebhookHandlerConfig
    | CommandHandlerConfig
    | DirectoryHandlerConfig
    | LogHandlerConfig
    | AmqpHandlerConfig
    | NatsHandlerConfig
    | RedisStreamHandlerConfig,
    Field(discriminator="type"),
]
"""One ``[handlers.NAME]`` table, told apart by its ``type``."""
