"""Fixtures of the bad-configuration and operations corpus.

Configuration cases run ``ews-listener check-config`` in this process (``listener.cli.main``): the
same code path as the console script, without paying an interpreter start per case. Operations
cases reuse the end-to-end world (token server + EWS emulator in this process, the real
``ews-listener once`` in a subprocess) from ``tests.e2e.conftest``; a few of them run that
subprocess inside a private mount namespace (``unshare --mount``) to give it a read-only state
directory or a full disk without touching the rest of the machine.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ews_listener_emulators.token_server import TokenRejected
from listener.cli import main
from tests.e2e.conftest import REPO, World, world  # noqa: F401 - the fixture is re-exported

# An inline secret that must never show up in any output of any case.
SECRET = "Sup3r-S3cret/+=&value"

BASE: dict[str, Any] = {
    "credentials": {
        "sales": {
            "client_id": "11111111-aaaa-4bbb-8ccc-000000000001",
            "token_endpoint": "https://login.microsoftonline.com/contoso.com/oauth2/v2.0/token",
            "scopes": "https://outlook.office365.com/.default",
            "secret": {"source": "inline", "value": SECRET},
        }
    },
    "mailboxes": {
        "orders": {
            "address": "orders@contoso.com",
            "credential": "sales",
            "routes": [{"subject": "(?i)order", "handlers": ["archive"]}],
        }
    },
    "handlers": {"archive": {"type": "directory", "path": "/var/lib/ews-listener/out"}},
    "state": {"url": "sqlite:////var/lib/ews-listener/state.db"},
}


def base_config() -> dict[str, Any]:
    """A deep copy of a valid configuration, for a case to break one thing in."""
    return copy.deepcopy(BASE)


def to_toml(data: Mapping[str, Any]) -> str:
    """Render nested dicts as TOML tables (enough for the corpus: no arrays of tables needed)."""
    lines: list[str] = []

    def table(prefix: str, body: Mapping[str, Any]) -> None:
        # Small tables (secret specs, on_failure) are written inline, as users write them.
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict) or _inline(v)}
        children = {k: v for k, v in body.items() if k not in scalars}
        if prefix and (scalars or not children):
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{_key(key)} = {_value(value)}")
        lines.append("")
        for key, value in children.items():
            table(f"{prefix}.{_key(key)}" if prefix else _key(key), value)

    table("", data)
    return "\n".join(lines) + "\n"


def _inline(value: Mapping[str, Any]) -> bool:
    return "source" in value or "max_attempts" in value


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


@dataclass(frozen=True)
class Checked:
    """What ``ews-listener check-config`` did: exit code and everything it printed."""

    code: int
    output: str


def check_config(path: Path, capsys: pytest.CaptureFixture[str]) -> Checked:
    """Run ``ews-listener check-config --config PATH`` in this process."""
    code = main(["check-config", "--config", str(path)])
    captured = capsys.readouterr()
    return Checked(code, captured.out + captured.err)


# --- operations --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OnceRun:
    """One ``ews-listener once --json``: exit code, the JSON summary, and the log lines."""

    code: int
    summary: dict[str, Any]
    log: str

    def mailbox(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.summary["mailboxes"][name]
        return result


def run_once(
    tenant: World,
    config: Path,
    *,
    wrapper: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> OnceRun:
    """``ews-listener once --json --config CONFIG``, optionally under ``wrapper`` (``unshare``).

    With a wrapper the command is passed to ``sh -c`` as ``"$@"`` after the wrapper's own
    script, so the wrapper can prepare mounts and then ``exec "$@"``.
    """
    argv = [sys.executable, "-m", "listener", "once", "--json", "--config", str(config)]
    done = subprocess.run(
        [*wrapper, *argv],
        cwd=REPO,
        env=tenant.env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    try:
        summary = json.loads(done.stdout) if done.stdout.strip() else {}
    except json.JSONDecodeError:
        summary = {"unparsed": done.stdout}
    return OnceRun(done.returncode, summary, done.stdout + done.stderr)


def in_mount_namespace(script: str) -> list[str]:
    """A wrapper that runs ``script`` (mounts) in a private mount namespace, then the command."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare(1) is needed for the mount-namespace cases"
    return [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-ec",
        script + '\nexec "$@"',
        "sh",
    ]


@pytest.fixture(scope="session")
def mount_namespaces() -> None:
    """Skip unless this process may create a mount namespace and mount in it (root here)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) is not installed")
    probe = subprocess.run(
        [unshare, "--mount", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount in a private mount namespace: {probe.stderr.strip()}")


class SkewedVerifier:
    """Stands between the EWS emulator and the token server to play a skewed Exchange clock.

    ``ahead``: Exchange's clock runs this many seconds ahead, so tokens expire that much earlier.
    ``reject_first``: the first N distinct tokens are refused as expired whatever their claims
    say (a token that was stale on arrival: the listener must fetch a new one and go on).
    Refusals go through the token server's own ``TokenRejected``, so the emulator answers 401 with
    ``x-ms-diagnostics`` ``token_expired`` exactly as it does for a really expired token.
    """

    def __init__(self, inner: Any, *, ahead: float = 0.0, reject_first: int = 0) -> None:
        self.inner = inner
        self.ahead = ahead
        self._reject_left = reject_first
        self._refused: set[str] = set()
        self._lock = threading.Lock()

    def verify(self, token: str, *, audience: str) -> Mapping[str, Any]:
        """The inner verifier's claims, unless this clock says the token has expired."""
        claims: Mapping[str, Any] = self.inner.verify(token, audience=audience)
        with self._lock:
            uti = str(claims.get("uti"))
            if uti in self._refused or self._reject_left > 0:
                if uti not in self._refused:
                    self._reject_left -= 1
                    self._refused.add(uti)
                raise TokenRejected("the token has expired", "token_expired")
        if time.time() + self.ahead >= float(claims.get("exp", 0)):
            raise TokenRejected("the token has expired", "token_expired")
        return claims


class EitherVerifier:
    """Accepts tokens of any of several token servers (a second, separately run identity server)."""

    def __init__(self, *servers: Any) -> None:
        self.servers = servers

    def verify(self, token: str, *, audience: str) -> Mapping[str, Any]:
        """The claims from the first server that knows the token; the last refusal otherwise."""
        refusal: TokenRejected | None = None
        for server in self.servers:
            try:
                claims: Mapping[str, Any] = server.verify(token, audience=audience)
            except TokenRejected as exc:
                refusal = exc
                continue
            return claims
        assert refusal is not None
        raise refusal


@pytest.fixture
def ops(world: World) -> World:  # noqa: F811 - builds on the re-exported fixture
    """The end-to-end world with a healthy mailbox ``good@contoso.com`` on credential ``sales``."""
    world.ews.add_mailbox("good@contoso.com")
    return world
