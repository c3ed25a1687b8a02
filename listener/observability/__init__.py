"""Logs, metrics, health and systemd integration: what an operator sees of the listener.

* :func:`configure_logging` / :func:`get_logger`: structlog, JSON lines or console, redacted.
* :func:`register_secret` / :func:`redact` / :func:`redact_value`: secret masking.
* :class:`Metrics`: Prometheus metrics in their own registry; :func:`default_metrics`.
* :class:`HealthState`, :class:`HealthServer`, :func:`check_health`, :func:`poll_recorder`:
  ``/healthz``, ``/readyz``, ``/metrics`` and ``ews-listener health``.
* :mod:`listener.observability.systemd`: ``sd_notify`` (READY, STATUS, STOPPING, WATCHDOG).
"""

from __future__ import annotations

from listener.observability.health import (
    HealthServer,
    HealthState,
    check_health,
    health_url,
    poll_recorder,
)
from listener.observability.logging import configure_logging, get_logger
from listener.observability.metrics import Metrics, default_metrics
from listener.observability.redaction import (
    MASK,
    is_secret_key,
    redact,
    redact_value,
    register_secret,
)

__all__ = [
    "MASK",
    "HealthServer",
    "HealthState",
    "Metrics",
    "check_health",
    "configure_logging",
    "default_metrics",
    "get_logger",
    "health_url",
    "is_secret_key",
    "poll_recorder",
    "redact",
    "redact_value",
    "register_secret",
]
