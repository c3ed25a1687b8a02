"""End-to-end fixtures: the token server, the EWS emulator and the Graph emulator beside it (one
mail store) in this process, the daemon in another.

Nothing is mocked: the daemon is the real ``ews-listener`` command, talking HTTPS to the emulators
through the real exchangelib, the real Graph client and the real token providers. Schema
validation is on for each protocol whose description is there (``$EWS_SCHEMA_DIR`` or
``../shared/ews-schema``; ``$GRAPH_SCHEMA_DIR`` or ``../shared/graph-schema``), and a test fails
when one of its exchanges violated it; under ``CI=true`` a missing Graph description fails the
Graph tests (``graph_schema_required``) instead of leaving them unchecked.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer
from tests import REPO
from tests.configs import emulated_credentials, table
from tests.e2e import receipts

SCHEMA_DIR = os.environ.get("EWS_SCHEMA_DIR") or (
    str(REPO.parent / "shared" / "ews-schema")
    if (REPO.parent / "shared" / "ews-schema").is_dir()
    else None
)
_GRAPH_SCHEMA = Path(os.environ.get("GRAPH_SCHEMA_DIR") or REPO.parent / "shared" / "graph-schema")
GRAPH_SCHEMA_DIR = _GRAPH_SCHEMA if _GRAPH_SCHEMA.is_dir() else None
TENANT = "contoso.onmicrosoft.com"
EWS_SCOPE = "https://outlook.office365.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
APPS = {
    "sales": ("11111111-aaaa-4bbb-8ccc-000000000001", "sales-secret/+=&x"),
    "support": ("11111111-aaaa-4bbb-8ccc-000000000002", "support-secret%2F:y"),
}


@dataclass
class World:
    """The emulated tenant: token server, EWS and Graph endpoints on one mail store, and where the
    test writes its files."""

    ca: EmulatorCA
    tokens: TokenServer
    ews: EwsEmulator
    graph: GraphEmulator
    root: Path
    receipts: Path = field(init=False)
    state: Path = field(init=False)

    def __post_init__(self) -> None:
        self.receipts = self.root / "receipts.jsonl"
        self.state = self.root / "state.db"

    def deliver(self, mailbox: str, subject: str, *, folder: str = "inbox", **kw: object) -> str:
        """File a new message in ``folder``; returns its EWS item id."""
        return self.deliver_mail(mailbox, subject, folder=folder, **kw)[0]

    def deliver_mail(
        self,
        mailbox: str,
        subject: str,
        *,
        folder: str = "inbox",
        received_at: datetime | None = None,
        **kw: object,
    ) -> tuple[str, str]:
        """File a new message in ``folder``; returns (its EWS item id, its Message-ID)."""
        msg = EmailMessage()
        msg["From"] = str(kw.get("sender", "Customer <customer@example.net>"))
        msg["To"] = mailbox
        msg["Subject"] = subject
        message_id = f"<{time.monotonic_ns()}.{abs(hash(subject))}@example.net>"
        msg["Message-ID"] = message_id
        msg.set_content(str(kw.get("body", f"Body of {subject}")))
        item_id = self.ews.deliver(mailbox, msg.as_bytes(), folder=folder, received_at=received_at)
        return item_id, message_id

    def graph_get(self, path: str, *, app: str = "sales") -> dict[str, Any]:
        """GET ``path`` (below ``/v1.0``) from the Graph emulator as ``app``, as a person's tool
        would: to see what the daemon did, through the other protocol."""
        client_id, secret = APPS[app]
        with httpx.Client(verify=self.ca.client_context(), trust_env=False, timeout=30) as http:
            answer = http.post(
                self.tokens.token_endpoint(TENANT),
                data={
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": secret,
                    "scope": GRAPH_SCOPE,
                },
            )
            answer.raise_for_status()
            bearer = answer.json()["access_token"]
            auth = {"Authorization": f"Bearer {bearer}"}
            got = http.get(f"{self.graph.url}/{path}", headers=auth)
        got.raise_for_status()
        body: dict[str, Any] = got.json()
        return body

    def synced(self) -> bool:
        """The daemon has made its first sync (start_from = "new" begins after that)."""
        if not self.state.exists():
            return False
        try:
            with sqlite3.connect(self.state) as db:
                # Not the "#watched-since" marker the poller writes just before its first sync.
                rows = db.execute("SELECT 1 FROM sync_state WHERE folder NOT LIKE '%#%'")
                return bool(list(rows))
        except sqlite3.Error:
            return False

    def receipts_log(self) -> list[dict[str, object]]:
        return receipts.read(self.receipts)

    def config(
        self,
        mailboxes: dict[str, dict[str, object]],
        *,
        extra: str = "",
        name: str = "config.toml",
    ) -> Path:
        """Write a configuration with both credentials, the receipt handler and ``mailboxes``.

        A mailbox with ``source = "graph"`` gets the Graph emulator as its endpoint, and then the
        credentials name both resources (one token per resource), as a tenant moving off EWS
        writes them; a configuration of EWS mailboxes only names Exchange's scope alone.
        """
        graph = any(given.get("source") == "graph" for given in mailboxes.values())
        lines = emulated_credentials(
            APPS,
            token_endpoint=self.tokens.token_endpoint(TENANT),
            ca_file=self.ca.ca_file,
            env_prefix="E2E_SECRET_",
            **({"scopes": [EWS_SCOPE, GRAPH_SCOPE]} if graph else {}),
        )
        for mb_name, given in mailboxes.items():
            options = {
                "endpoint": self.graph.url if given.get("source") == "graph" else self.ews.url,
                "ca_bundle": str(self.ca.ca_file),
                "interval": 1,
                "routes": [{"handlers": ["receipts"]}],
                **given,
            }
            lines += table(f"mailboxes.{mb_name}", options)
        lines += [
            "[handlers.receipts]",
            'type = "python"',
            'target = "tests.e2e.receipts:record"',
            "",
            "[state]",
            f'url = "sqlite:///{self.state}"',
            "",
            "[service]",
            "jitter = 0",
            "shutdown_grace = 20",
            extra,
        ]
        path = self.root / name
        path.write_text("\n".join(lines))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            E2E_SECRET_SALES=APPS["sales"][1],
            E2E_SECRET_SUPPORT=APPS["support"][1],
            E2E_RECEIPTS=str(self.receipts),
            PYTHONPATH=str(REPO),
        )
        env.update(extra)
        return env

    def cli(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``ews-listener ARGS`` to completion."""
        return subprocess.run(
            [sys.executable, "-m", "listener", *args],
            cwd=REPO,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def daemon(self, config: Path, *args: str, **env: str) -> subprocess.Popen[str]:
        """Start ``ews-listener run`` in the background."""
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "listener",
                "--log-format",
                "json",
                "run",
                "--config",
                str(config),
                *args,
            ],
            cwd=REPO,
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ca = EmulatorCA(tmp_path / "ca")
    tokens = TokenServer(ca=ca, token_lifetime=3600)
    tokens.start()
    tokens.add_tenant(TENANT)
    for client_id, secret in APPS.values():
        tokens.register_app(TENANT, client_id, secret=secret)
    ews = EwsEmulator(tokens, ca, schema_dir=SCHEMA_DIR)
    graph = GraphEmulator.beside(ews, tokens, ca, schema_dir=GRAPH_SCHEMA_DIR)
    ews.start()
    graph.start()
    try:
        yield World(ca, tokens, ews, graph, tmp_path)
    finally:
        graph.stop()
        ews.stop()
        tokens.stop()
    if SCHEMA_DIR:
        invalid = [r for r in ews.request_log if r.schema_valid is False]
        assert not invalid, f"requests the schema rejects: {invalid[:3]}"
    # Answers that violate Microsoft's OpenAPI description or the documented OData annotations.
    violations = [r for r in graph.request_log if r.schema_valid is False]
    assert not violations, f"Graph exchanges the schema rejects: {violations[:3]}"


@pytest.fixture
def graph_schema_required() -> None:
    """Graph tests validate every exchange; under ``CI=true`` a missing description fails."""
    if GRAPH_SCHEMA_DIR is None and os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            f"CI=true but the Graph OpenAPI description is missing at {_GRAPH_SCHEMA}: set "
            "GRAPH_SCHEMA_DIR (the Graph end-to-end tests validate every exchange against it)"
        )


def wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> str:
    """Signal the daemon, wait for it, and return what it printed."""
    process.send_signal(sig)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        raise AssertionError(f"daemon did not stop within {timeout} s:\n{out[-3000:]}") from None
    return out


def free_port() -> int:
    """A TCP port nothing listens on now (for the daemon's ``http_port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metric(port: int, sample: str) -> float:
    """The value of one sample of the daemon's ``/metrics`` (``name{labels}``, labels in the
    order the exposition writes them); 0 when absent or the daemon is not answering."""
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return 0.0


def polls_ok(port: int, mailbox: str) -> float:
    """How many polls of ``mailbox`` the running daemon finished without error."""
    return metric(port, f'ews_listener_polls_total{{mailbox="{mailbox}",outcome="ok"}}')


def settle(port: int, mailboxes: Iterable[str], polls: int = 2, timeout: float = 60) -> None:
    """Wait until each mailbox finished ``polls`` more successful polls: whatever the daemon was
    going to hand over from the mail it has seen is handed over by then (no sleeping)."""
    goal = {name: polls_ok(port, name) + polls for name in mailboxes}
    wait_for(
        lambda: all(polls_ok(port, name) >= n for name, n in goal.items()),
        timeout,
        f"{polls} more polls of {', '.join(goal)}",
    )
