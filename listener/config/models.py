"""The configuration models, one module per section, and the checks across sections.

Each section's model lives in a module of its own (``_credentials``, ``_mailboxes``,
``_service``, ``_notifications``, ``_cluster``); ``Settings``, the whole configuration, and the
checks that need more than one section (references, sources against scopes, secrets a child would
inherit) are here, and every model is re-exported from here. Validation is per value;
``listener.config.loading`` validates section by section so that every problem is reported at
once, with the file, location and environment variable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from listener.auth.resources import ResourceMismatch, select
from listener.config._base import (
    DEFAULT_EWS_ENDPOINT,
    DEFAULT_GRAPH_ENDPOINT,
    ENV_CONFIG,
    ENV_PREFIX,
    NAME_PATTERN,
)
from listener.config._cluster import ClusterConfig, cluster_active, cluster_problems
from listener.config._credentials import CertificateConfig, CredentialConfig
from listener.config._mailboxes import Action, FailureConfig, MailboxConfig, default_endpoint
from listener.config._notifications import (
    EwsStreamingConfig,
    GraphNotificationsConfig,
    NotificationsConfig,
    notification_mode,
    notification_problems,
)
from listener.config._service import ServiceConfig, StateConfig, default_state_url
from listener.handlers.config import HandlerConfig
from listener.secrets import environment_reads

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
