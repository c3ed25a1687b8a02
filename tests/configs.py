"""Writing listener configurations for the daemon under test (e2e, chaos run, benchmarks).

Small tables with the values a test chooses, written as a user writes them: one ``[table]`` per
credential, mailbox and handler, lists and small tables inline.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["emulated_credentials", "push_service", "table", "toml_value"]

SCOPE = "https://outlook.office365.com/.default"


def toml_value(value: object) -> str:
    """``value`` as a TOML value: strings quoted, lists and dicts inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def table(name: str, body: Mapping[str, object]) -> list[str]:
    """The lines of ``[name]`` with one ``key = value`` line per entry, and a blank line."""
    return [f"[{name}]", *(f"{key} = {toml_value(value)}" for key, value in body.items()), ""]


def emulated_credentials(
    apps: Mapping[str, tuple[str, str]],
    *,
    token_endpoint: str,
    ca_file: object,
    env_prefix: str,
    **extra: object,
) -> list[str]:
    """One ``[credentials.NAME]`` per app of the emulated tenant, its secret read from
    ``{env_prefix}{NAME}`` (upper case). The first app authenticates in the body (msal), the
    others with HTTP Basic (the RFC 6749 client), so both token paths are exercised."""
    lines: list[str] = []
    for n, (name, (client_id, _secret)) in enumerate(apps.items()):
        body: dict[str, object] = {
            "client_id": client_id,
            "token_endpoint": token_endpoint,
            "scopes": SCOPE,
            "auth_method": "body" if n == 0 else "basic",
            "ca_bundle": str(ca_file),
            "secret": {"source": "env", "name": f"{env_prefix}{name.upper()}"},
            **extra,
        }
        lines += table(f"credentials.{name}", body)
    return lines


def push_service(port: int, healthy_interval: float, *notifications: str) -> list[str]:
    """The service's HTTP server on ``port`` and a ``[notifications]`` table for push tests: a
    short debounce, the safety net at ``healthy_interval`` while the channel is connected, and
    ``notifications`` (more lines of the table, e.g. its ``[notifications.graph]``)."""
    return [
        f"http_port = {port}",
        "",
        *table("notifications", {"debounce": 0.2, "healthy_interval": healthy_interval})[:-1],
        *notifications,
    ]
