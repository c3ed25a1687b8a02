"""The configuration models: credentials, mailboxes, handlers, state and service.

Validation here is per value; ``listener.config.loading`` validates section by section so that
every problem is reported at once, with the file, location and environment variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from listener.auth.resources import GRAPH_HOSTS, ResourceMismatch, host_of, select
from listener.handlers.config import HandlerConfig
from listener.routing import Route
from listener.secrets import SecretSpec, environment_reads
from listener.secrets._base import check_url

__all__ = [
    "DEFAULT_EWS_ENDPOINT",
    "DEFAULT_GRAPH_ENDPOINT",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "NAME_PATTERN",
    "Action",
    "CertificateConfig",
    "ClusterConfig",
    "CredentialConfig",
    "EwsStreamingConfig",
    "FailureConfig",
    "GraphNotificationsConfig",
    "MailboxConfig",
    "NotificationsConfig",
    "ServiceConfig",
    "Settings",
    "StateConfig",
    "cluster_active",
    "cluster_problems",
    "default_endpoint",
    "default_state_url",
    "inherit_env_problems",
    "notification_mode",
    "notification_problems",
    "reference_problems",
    "source_problems",
]

ENV_PREFIX = "EWS_LISTENER_"
ENV_CONFIG = "EWS_LISTENER_CONFIG"
DEFAULT_EWS_ENDPOINT = "https://outlook.office365.com/EWS/Exchange.asmx"
# Graph's service root; national clouds and the emulator by URL (https://graph.microsoft.us/v1.0,
# https://127.0.0.1:8443/v1.0).
DEFAULT_GRAPH_ENDPOINT = "https://graph.microsoft.com/v1.0"

# Lower-case only: environment variables are matched case-insensitively, so a table named "Sales"
# could never be overridden by EWS_LISTENER_CREDENTIALS__SALES__….
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# Microsoft identity platform token endpoints: https://{host}/{tenant}/oauth2/v2.0/token. Any host
# of that shape (sovereign clouds, the emulator) gets msal when msal can send the credential.
_MS_TOKEN_PATH = re.compile(r"^/(?P<tenant>[^/]+)/oauth2/v2\.0/token/?$")
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")
_AUTH_ALIASES = {"client_secret_basic": "basic", "client_secret_post": "body"}
_EWS_VERSIONS = {
    v.lower(): v for v in ("Exchange2013", "Exchange2013_SP1", "Exchange2016", "Exchange2019")
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- credentials -------------------------------------------------------------------------------


class CertificateConfig(_Model):
    """A certificate credential (``private_key_jwt``): PEM private key and certificate files."""

    private_key: Path
    certificate: Path
    password: SecretSpec | None = None


class CredentialConfig(_Model):
    """One OAuth 2.0 client-credentials registration, shared by every mailbox that names it."""

    client_id: str = Field(min_length=1)
    secret: SecretSpec | None = None
    certificate: CertificateConfig | None = None
    token_endpoint: str
    scopes: tuple[str, ...]
    auth_method: Literal["basic", "body"] = "basic"
    basic_encoding: Literal["form", "raw"] = "form"
    timeout: float = Field(default=10.0, gt=0)
    ca_bundle: Path | None = None
    max_connections: int = Field(default=4, ge=1, le=27)
    provider: Literal["auto", "msal", "oauth2"] = "auto"

    @field_validator("client_id")
    @classmethod
    def _strip(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("token_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_url(value, what="token_endpoint")

    @field_validator("scopes", mode="before")
    @classmethod
    def _scopes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split()
        elif isinstance(value, list | tuple):
            for scope in value:
                if isinstance(scope, str) and (not scope.strip() or scope != scope.strip()):
                    raise ValueError(
                        f"each scope must be a non-empty word without spaces: {scope!r}"
                    )
        if isinstance(value, list | tuple) and not value:
            raise ValueError(
                "must name at least one scope, e.g. 'https://outlook.office365.com/.default'"
            )
        return value

    @field_validator("auth_method", mode="before")
    @classmethod
    def _method_alias(cls, value: Any) -> Any:
        return _AUTH_ALIASES.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_credential(self) -> CredentialConfig:
        if (self.secret is None) == (self.certificate is None):
            raise ValueError("give exactly one of 'secret' (a secret source) or 'certificate'")
        if self.provider == "msal":
            if self.microsoft_tenant is None:
                raise ValueError(
                    "provider 'msal' needs a Microsoft identity platform endpoint "
                    "'https://HOST/TENANT/oauth2/v2.0/token'"
                )
            if self.secret is not None and self.auth_method == "basic":
                raise ValueError(
                    "msal sends the client secret in the request body: use auth_method = 'body' "
                    "with provider 'msal', or provider = 'oauth2' for HTTP Basic"
                )
        if self.provider == "oauth2" and self.certificate is not None:
            raise ValueError("certificate credentials use msal: set provider = 'auto' or 'msal'")
        if self.certificate is not None and self.microsoft_tenant is None:
            raise ValueError(
                "certificate credentials need a Microsoft identity platform endpoint "
                "'https://HOST/TENANT/oauth2/v2.0/token'"
            )
        return self

    @property
    def microsoft_tenant(self) -> str | None:
        """The tenant segment when the endpoint has the Microsoft identity platform's shape."""
        match = _MS_TOKEN_PATH.match(urlsplit(self.token_endpoint).path)
        return match.group("tenant") if match else None

    @property
    def authority(self) -> str | None:
        """msal's authority ``https://host/{tenant}`` for a Microsoft-shaped endpoint."""
        tenant = self.microsoft_tenant
        if tenant is None:
            return None
        parts = urlsplit(self.token_endpoint)
        return f"{parts.scheme}://{parts.netloc}/{tenant}"

    @property
    def resolved_provider(self) -> Literal["msal", "oauth2"]:
        """Which client fetches tokens: msal when it can send this credential, else RFC 6749."""
        if self.provider != "auto":
            return self.provider
        if self.microsoft_tenant is not None and (
            self.certificate is not None or self.auth_method == "body"
        ):
            return "msal"
        return "oauth2"


# --- mailboxes ---------------------------------------------------------------------------------


class Action(_Model):
    """After-success or dead-letter action: ``mark_read``, ``none``, ``delete``, ``move:…``, …"""

    kind: Literal["mark_read", "none", "delete", "move", "categorize"]
    argument: str | None = None

    @classmethod
    def parse(cls, text: str, allowed: Iterable[str]) -> Action:
        """``"move:Inbox/Done"`` → ``Action("move", "Inbox/Done")``; ValueError lists the forms."""
        allowed = tuple(allowed)
        kind, sep, argument = text.strip().partition(":")
        with_argument = {"move", "categorize"}
        forms = ", ".join(f"'{k}:…'" if k in with_argument else f"'{k}'" for k in allowed)
        if kind not in allowed:
            raise ValueError(f"expected one of {forms}")
        if kind in with_argument and not argument.strip(" /"):
            what = "a folder path" if kind == "move" else "a category name"
            raise ValueError(f"'{kind}:' needs {what}, e.g. '{kind}:Processed'")
        if kind not in with_argument and sep:
            raise ValueError(f"'{kind}' takes no argument")
        return cls(kind=kind, argument=argument.strip().strip("/") if sep else None)

    def __str__(self) -> str:
        return self.kind if self.argument is None else f"{self.kind}:{self.argument}"


_AFTER_SUCCESS = ("mark_read", "none", "delete", "move", "categorize")
_DEAD_LETTER = ("none", "move")


class FailureConfig(_Model):
    """Retries with exponential back-off, then a dead letter (optionally moved to a folder)."""

    max_attempts: int = Field(default=5, ge=1)
    backoff: float = Field(default=30.0, gt=0)
    backoff_max: float = Field(default=3600.0, gt=0)
    backoff_multiplier: float = Field(default=2.0, ge=1)
    dead_letter: Action = Action(kind="none")

    @field_validator("dead_letter", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        return Action.parse(value, _DEAD_LETTER) if isinstance(value, str) else value


def default_endpoint(source: Any) -> str:
    """The endpoint of a mailbox that names none: Exchange Online's EWS, or Graph's v1.0."""
    return DEFAULT_GRAPH_ENDPOINT if source == "graph" else DEFAULT_EWS_ENDPOINT


class MailboxConfig(_Model):
    """One watched folder of one mailbox."""

    # Before the fields that depend on it: their validators read it from ``info.data``.
    source: Literal["ews", "graph"] = "ews"
    address: str
    credential: str
    endpoint: str = DEFAULT_EWS_ENDPOINT  # by source: see _default_endpoint
    folder: str = Field(default="inbox", min_length=1)
    interval: float = Field(default=60.0, gt=0)
    cron: str | None = None
    start_from: Literal["new", "unread", "all"] = "new"
    # Not Field(min_length=1): pydantic then also reports "at least 1 item" when one route is
    # invalid (it counts the routes that validated); _routes checks only valid lists.
    routes: tuple[Route, ...]
    after_success: Action = Action(kind="mark_read")
    on_failure: FailureConfig = FailureConfig()
    batch_size: int = Field(default=100, ge=1, le=512)
    # Messages of this mailbox handed over at once (listener.pipeline.handover).
    handler_concurrency: int = Field(default=8, ge=1, le=256)
    ordered: bool = False  # one message at a time, in the order received
    # Push notifications that wake the poll (issue 15): "streaming" (EWS), "webhook" (Graph) or
    # "off"; unset takes [notifications] default ("push" = the one this mailbox's source has).
    notifications: Literal["off", "streaming", "webhook"] | None = None
    enabled: bool = True
    ca_bundle: Path | None = None
    version: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _ADDRESS.match(value.strip()):
            raise ValueError("must be an email address like 'sales@contoso.com'")
        return value.strip()

    @model_validator(mode="before")
    @classmethod
    def _default_endpoint(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "endpoint" not in data:
            return {**data, "endpoint": default_endpoint(data.get("source", "ews"))}
        return data

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str, info: ValidationInfo) -> str:
        value = check_url(value, what="endpoint")
        source = info.data.get("source")
        path = urlsplit(value).path.rstrip("/").lower()
        if source == "graph" and path.endswith(".asmx"):
            raise ValueError(
                "is an EWS URL, but source is 'graph': give Graph's service root like "
                f"{DEFAULT_GRAPH_ENDPOINT!r} (or remove endpoint for that default)"
            )
        if source == "ews" and (host_of(value) in GRAPH_HOSTS or path.endswith("/v1.0")):
            raise ValueError(
                "is a Microsoft Graph URL, but source is 'ews' (the default): set "
                'source = "graph" for this mailbox, or give an EWS URL like '
                f"{DEFAULT_EWS_ENDPOINT!r}"
            )
        return value

    @field_validator("folder")
    @classmethod
    def _folder(cls, value: str) -> str:
        parts = value.strip().strip("/").split("/")
        if not all(part.strip() for part in parts):
            raise ValueError("must be a folder name or a path like 'Inbox/Orders'")
        return "/".join(part.strip() for part in parts)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415 - only when used

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(
                f"must be a 5-field crontab like '*/5 * * * *' (minute hour day month weekday): "
                f"{exc}"
            ) from None
        return value

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: tuple[Route, ...]) -> tuple[Route, ...]:
        if not value:
            raise ValueError(
                'needs at least 1 item (a route), e.g. routes = [{ handlers = ["log"] }]'
            )
        return value

    @field_validator("after_success", mode="before")
    @classmethod
    def _after(cls, value: Any) -> Any:
        return Action.parse(value, _AFTER_SUCCESS) if isinstance(value, str) else value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if info.data.get("source") == "graph":
            raise ValueError(
                "is an EWS server version, and this mailbox's source is 'graph': remove "
                "version (Graph has none to pin)"
            )
        if value.lower() not in _EWS_VERSIONS:
            raise ValueError(f"expected one of {', '.join(_EWS_VERSIONS.values())}")
        return _EWS_VERSIONS[value.lower()]

    @model_validator(mode="after")
    def _interval_or_cron(self) -> MailboxConfig:
        if self.cron is not None and "interval" in self.model_fields_set:
            raise ValueError("give 'interval' or 'cron', not both")
        return self


# --- state and service -------------------------------------------------------------------------


def default_state_url(env: Mapping[str, str] | None = None) -> str:
    """SQLite under systemd's ``$STATE_DIRECTORY`` when set (``StateDirectory=``), else ./var."""
    env = os.environ if env is None else env
    directory = env.get("STATE_DIRECTORY", "").split(":")[0]
    if directory:
        return f"sqlite:///{Path(directory) / 'state.db'}"
    return "sqlite:///./var/state.db"


class StateConfig(_Model):
    """Where the durable state lives (SQLAlchemy URL: SQLite or PostgreSQL)."""

    url: str = Field(default_factory=default_state_url, min_length=1)
    echo: bool = False
    # SQLite: how long a write waits for another process's lock (the store's "stayed locked"
    # error names this key); PostgreSQL: how long connecting may take.
    busy_timeout: float = Field(default=5.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)


class ServiceConfig(_Model):
    """How the process runs: HTTP health/metrics, logs, shutdown, scheduling."""

    http_host: str = "127.0.0.1"
    http_port: int | None = Field(default=None, ge=0, le=65535)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    shutdown_grace: float = Field(default=30.0, ge=0)
    jitter: float = Field(default=5.0, ge=0)
    max_workers: int = Field(default=8, ge=1)
    # Hand-over threads shared by every mailbox (listener.pipeline.handover).
    handler_workers: int = Field(default=32, ge=1)
    # Throttling by the mail server (EWS ErrorServerBusy, Graph 429/503): a pause it asks for up
    # to this long is waited out within the poll; a longer one ends the poll and the mailbox is
    # polled again after it (listener.service), so a long back-off never holds a worker.
    throttle_inline_wait: float = Field(default=30.0, ge=0)
    # Graph: the pause after a 429/503 without Retry-After, doubled on each repeat (no hot loop).
    throttle_min_back_off: float = Field(default=1.0, gt=0)
    # Graph: how long one HTTP request may take.
    request_timeout: float = Field(default=60.0, gt=0)
    fail_fast: bool = False
    watchdog: bool = True
    # HTTPS on the HTTP server (PEM files): what Graph's change notifications need when it posts
    # to this process directly rather than through a reverse proxy that ends TLS (README).
    tls_cert: Path | None = None
    tls_key: Path | None = None  # unset: the key is in tls_cert's file

    @model_validator(mode="after")
    def _tls_pair(self) -> ServiceConfig:
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key needs tls_cert (the certificate chain, PEM)")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: no such file: '{path}'")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


# --- notifications -----------------------------------------------------------------------------


class GraphNotificationsConfig(_Model):
    """Graph change notifications: where Graph posts them and the secret it echoes back."""

    # The HTTPS URL Graph can reach that ends at this service's /notifications/graph (directly,
    # or through a reverse proxy: see the README).
    public_url: str
    client_state: SecretSpec
    # Subscription lifetime asked for; Graph's cap for messages is 4230 minutes (about 70 h).
    lifetime_minutes: int = Field(default=4230, ge=5, le=4230)
    # Renewed this long before expiry.
    renew_before_minutes: int = Field(default=60, ge=1)

    @field_validator("public_url")
    @classmethod
    def _public(cls, value: str) -> str:
        return check_url(value, what="public_url")

    @model_validator(mode="after")
    def _renew_within_lifetime(self) -> GraphNotificationsConfig:
        if self.renew_before_minutes >= self.lifetime_minutes:
            raise ValueError(
                f"renew_before_minutes ({self.renew_before_minutes}) must be shorter than "
                f"lifetime_minutes ({self.lifetime_minutes})"
            )
        return self


class EwsStreamingConfig(_Model):
    """EWS streaming subscriptions (on-premises Exchange and allow-listed Exchange Online)."""

    # GetStreamingEvents ConnectionTimeout, minutes; Exchange caps a connection at 30.
    connection_minutes: int = Field(default=30, ge=1, le=30)
    # Subscriptions per GetStreamingEvents request; Exchange allows at most 200.
    subscriptions_per_connection: int = Field(default=200, ge=1, le=200)


class NotificationsConfig(_Model):
    """Push notifications that only wake the poll; the cursor stays the truth (issue 15)."""

    # For every mailbox that does not say: "push" = EWS streaming or Graph webhook by source.
    default: Literal["off", "push"] = "off"
    # A burst of notifications within this many seconds costs one poll.
    debounce: float = Field(default=0.25, ge=0, le=60)
    # While a mailbox's channel is connected, the safety-net poll runs this often instead of the
    # mailbox's interval (never more often than the interval); a degraded channel falls back.
    healthy_interval: float = Field(default=300.0, gt=0)
    ews: EwsStreamingConfig = EwsStreamingConfig()
    graph: GraphNotificationsConfig | None = None


# --- several replicas ------------------------------------------------------------------------


class ClusterConfig(_Model):
    """Several replicas on one PostgreSQL database sharing the mailboxes by lease (issue 16)."""

    # "auto": on with a PostgreSQL state.url (one process or several: safe either way), off with
    # SQLite (one process by construction). true with SQLite is a configuration error.
    enabled: bool | Literal["auto"] = "auto"
    # This replica's name in the leases; default "<host name>-<pid>" (a restart is a new replica).
    replica_id: str | None = Field(default=None, min_length=1, max_length=200)
    # A lease not renewed for this long is free for the others (a SIGKILLed replica's mailboxes
    # wait this long); renewals, claims and rebalancing happen every renew_seconds.
    lease_seconds: float = Field(default=15.0, gt=0, le=3600)
    renew_seconds: float = Field(default=5.0, gt=0, le=1200)
    # How many replicas share each credential's max_connections: each replica opens at most
    # ceil(max_connections / replicas) connections per credential (see README "Running several
    # replicas"). Set it to the number of replicas you run.
    replicas: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _renew_within_lease(self) -> ClusterConfig:
        if self.renew_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"renew_seconds ({self.renew_seconds:g}) must be at most half of lease_seconds "
                f"({self.lease_seconds:g}): one late renewal must not lose every lease"
            )
        return self


def cluster_active(cluster: ClusterConfig, state_url: str) -> bool:
    """Whether this configuration runs as a replica among others (leases and fencing)."""
    if cluster.enabled == "auto":
        return state_url.split(":", 1)[0].split("+", 1)[0] in {"postgresql", "postgres"}
    return bool(cluster.enabled)


def cluster_problems(cluster: ClusterConfig, state_url: str) -> list[tuple[tuple[str, ...], str]]:
    """``cluster.enabled = true`` with a state database other than PostgreSQL."""
    if cluster.enabled is True and not cluster_active(
        cluster.model_copy(update={"enabled": "auto"}), state_url
    ):
        return [
            (
                ("cluster", "enabled"),
                "true needs a PostgreSQL state.url (postgresql://user@host/db): the leases "
                "several replicas share live there; a SQLite file serves one process",
            )
        ]
    return []


# --- settings ----------------------------------------------------------------------------------


class Settings(BaseSettings):
    """The whole configuration. Build it with ``load_settings``, which reports every problem."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    credentials: dict[str, CredentialConfig] = Field(default_factory=dict)
    mailboxes: dict[str, MailboxConfig] = Field(default_factory=dict)
    handlers: dict[str, HandlerConfig] = Field(default_factory=dict)
    state: StateConfig = Field(default_factory=StateConfig)
    service: ServiceConfig = Field(default_factory=ServiceConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @model_validator(mode="after")
    def _references(self) -> Settings:
        problems = reference_problems(self.credentials, self.handlers, self.mailboxes)
        problems += source_problems(self.credentials, self.mailboxes)
        problems += inherit_env_problems(self.model_dump())
        problems += notification_problems(self.notifications, self.mailboxes, self.service)
        problems += cluster_problems(self.cluster, self.state.url)
        if problems:
            raise ValueError("; ".join(f"{'.'.join(loc)}: {msg}" for loc, msg in problems))
        return self


_PUSH = {"ews": "streaming", "graph": "webhook"}


def notification_mode(notifications: NotificationsConfig, mailbox: MailboxConfig) -> str:
    """ "off", "streaming" or "webhook": what wakes ``mailbox``'s poll besides its interval."""
    if mailbox.notifications is not None:
        return mailbox.notifications
    return _PUSH[mailbox.source] if notifications.default == "push" else "off"


def notification_problems(
    notifications: NotificationsConfig,
    mailboxes: Mapping[str, MailboxConfig],
    service: ServiceConfig | None = None,
) -> list[tuple[tuple[str, ...], str]]:
    """A push mode the mailbox's protocol does not have, or a webhook with nowhere to listen."""
    problems: list[tuple[tuple[str, ...], str]] = []
    for name, mailbox in mailboxes.items():
        mode = mailbox.notifications
        if mode is None or mode == "off" or _PUSH[mailbox.source] == mode:
            continue
        problems.append(
            (
                ("mailboxes", name, "notifications"),
                f"{mode!r} is not available over {mailbox.source!r}: use "
                f'{_PUSH[mailbox.source]!r} (or "off")',
            )
        )
    webhooks = [
        name
        for name, mailbox in mailboxes.items()
        if mailbox.enabled and notification_mode(notifications, mailbox) == "webhook"
    ]
    if webhooks and notifications.graph is None:
        problems.append(
            (
                ("notifications", "graph"),
                f"mailbox(es) {', '.join(sorted(webhooks))} receive Graph change notifications, "
                "which need [notifications.graph] public_url and client_state",
            )
        )
    if webhooks and service is not None and service.http_port is None:
        problems.append(
            (
                ("service", "http_port"),
                f"mailbox(es) {', '.join(sorted(webhooks))} receive Graph change notifications "
                "on this service's HTTP server (/notifications/graph): set http_port",
            )
        )
    return problems


def reference_problems(
    credentials: Iterable[str],
    handlers: Iterable[str],
    mailboxes: Mapping[str, Any],
) -> list[tuple[tuple[str, ...], str]]:
    """Cross-references as (location, message): named credentials and handlers exist, no folder
    is watched twice. Works on raw tables too, so it runs even when other values are invalid."""
    credentials, handlers = sorted(credentials), sorted(handlers)
    problems: list[tuple[tuple[str, ...], str]] = []
    seen: dict[tuple[str, str, str], str] = {}
    protocols: dict[tuple[str, str], tuple[str, str]] = {}  # (address, folder) → (name, source)
    for name, entry in mailboxes.items():
        mailbox = entry.model_dump(by_alias=True) if isinstance(entry, MailboxConfig) else entry
        if not isinstance(mailbox, Mapping):
            continue
        credential = mailbox.get("credential")
        if isinstance(credential, str) and credential not in credentials:
            problems.append(
                (
                    ("mailboxes", name, "credential"),
                    f"no credential named {credential!r} (defined: "
                    f"{', '.join(credentials) or 'none'}); add [credentials.{credential}] or fix "
                    "the name",
                )
            )
        routes = mailbox.get("routes")
        for index, route in enumerate(routes if isinstance(routes, list | tuple) else ()):
            names = route.get("handlers") if isinstance(route, Mapping) else None
            for handler in names if isinstance(names, list | tuple) else ():
                if isinstance(handler, str) and handler not in handlers:
                    problems.append(
                        (
                            ("mailboxes", name, "routes", str(index), "handlers"),
                            f"no handler named {handler!r} (defined: "
                            f"{', '.join(handlers) or 'none'}); add [handlers.{handler}] or fix "
                            "the name",
                        )
                    )
        address, folder = mailbox.get("address"), mailbox.get("folder", "inbox")
        endpoint = mailbox.get("endpoint", default_endpoint(mailbox.get("source", "ews")))
        if not (isinstance(address, str) and isinstance(folder, str) and isinstance(endpoint, str)):
            continue
        key = (address.strip().lower(), folder.strip(" /").lower(), endpoint.rstrip("/"))
        source = mailbox.get("source", "ews")
        other = protocols.get(key[:2])
        if key in seen:
            problems.append(
                (
                    ("mailboxes", name),
                    f"mailboxes {seen[key]!r} and {name!r} both watch {address} folder "
                    f"{folder!r} at {endpoint}; keep one of them",
                )
            )
        elif other is not None and other[1] != source:
            # The same folder over EWS and over Graph: two cursors, two retry queues, and polls
            # racing to hand over the same mail. Moving a mailbox is changing its source.
            problems.append(
                (
                    ("mailboxes", name, "source"),
                    f"mailboxes {other[0]!r} ({other[1]}) and {name!r} ({source}) both watch "
                    f"{address} folder {folder!r}; keep one of them: to move a mailbox to "
                    "another protocol, change its source (README: Moving off EWS)",
                )
            )
        else:
            seen[key] = name
            protocols.setdefault(key[:2], (name, str(source)))
    return problems


def source_problems(
    credentials: Mapping[str, CredentialConfig], mailboxes: Mapping[str, MailboxConfig]
) -> list[tuple[tuple[str, ...], str]]:
    """Mailboxes whose source their credential's scopes cannot serve, as (location, message).

    Validated entries only (an invalid one already has its own issue): a Graph mailbox needs a
    Graph resource among the scopes, an EWS mailbox of a credential that names Graph needs an
    Exchange one (``listener.auth.resources.select``, the rule the token providers apply).
    """
    problems: list[tuple[tuple[str, ...], str]] = []
    for name, mailbox in mailboxes.items():
        credential = credentials.get(mailbox.credential)
        if credential is None:
            continue  # reference_problems names it
        try:
            select(
                credential.scopes, mailbox.source, mailbox.endpoint, credential=mailbox.credential
            )
        except ResourceMismatch as exc:
            default = "" if "source" in mailbox.model_fields_set else " (the default)"
            problems.append((("mailboxes", name, "source"), f"{mailbox.source!r}{default} {exc}"))
    return problems


def inherit_env_problems(data: Mapping[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    """A command handler's ``inherit_env`` naming a variable that a secret source reads.

    The child would get the secret (a client secret from an ``env`` source, or the systemd
    credentials directory): refused, as (location, message). Works on raw tables too.
    """
    read: dict[str, str] = {}
    for name, where in environment_reads(data):
        read.setdefault(name.upper(), ".".join(where))
    problems: list[tuple[tuple[str, ...], str]] = []
    handlers = data.get("handlers")
    for handler, entry in handlers.items() if isinstance(handlers, Mapping) else ():
        names = entry.get("inherit_env") if isinstance(entry, Mapping) else None
        for index, name in enumerate(names if isinstance(names, list | tuple) else ()):
            source = read.get(name.upper()) if isinstance(name, str) else None
            if source is not None:
                problems.append(
                    (
                        ("handlers", handler, "inherit_env", str(index)),
                        f"{name!r} is read by the secret source {source}: a handler's program "
                        "must not see it; remove it from inherit_env (pass what the program "
                        "needs in 'env')",
                    )
                )
    return problems
