"""``[state]`` and ``[service]``: where the durable state lives and how the process runs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from listener.config._base import Model

__all__ = ["ServiceConfig", "StateConfig", "default_state_url"]


def default_state_url(env: Mapping[str, str] | None = None) -> str:
    """SQLite under systemd's ``$STATE_DIRECTORY`` when set (``StateDirectory=``), else ./var."""
    env = os.environ if env is None else env
    directory = env.get("STATE_DIRECTORY", "").split(":")[0]
    if directory:
        return f"sqlite:///{Path(directory) / 'state.db'}"
    return "sqlite:///./var/state.db"


class StateConfig(Model):
    """Where the durable state lives (SQLAlchemy URL: SQLite or PostgreSQL)."""

    url: str = Field(default_factory=default_state_url, min_length=1)
    echo: bool = False
    # SQLite: how long a write waits for another process's lock (the store's "stayed locked"
    # error names this key); PostgreSQL: how long connecting may take.
    busy_timeout: float = Field(default=5.0, gt=0)
    connect_timeout: float = Field(default=10.0, gt=0)


class ServiceConfig(Model):
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
