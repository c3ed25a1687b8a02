"""``[mailboxes.NAME]``: one watched folder each, its routes, after-success action and retries."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from listener.auth.resources import GRAPH_HOSTS, host_of
from listener.config._base import DEFAULT_EWS_ENDPOINT, DEFAULT_GRAPH_ENDPOINT, Model
from listener.routing import Route
from listener.secrets._base import check_url

__all__ = ["Action", "FailureConfig", "MailboxConfig", "default_endpoint"]

_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")
_EWS_VERSIONS = {
    v.lower(): v for v in ("Exchange2013", "Exchange2013_SP1", "Exchange2016", "Exchange2019")
}


class Action(Model):
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


class FailureConfig(Model):
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


class MailboxConfig(Model):
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
