"""End-to-end fixtures: the token server and EWS emulator in this process, the daemon in another.

Nothing is mocked: the daemon is the real ``ews-listener`` command, talking HTTPS to the emulator
through the real exchangelib and token providers.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest

from ews_listener_emulators.ca import EmulatorCA
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
TENANT = "contoso.onmicrosoft.com"
APPS = {
    "sales": ("11111111-aaaa-4bbb-8ccc-000000000001", "sales-secret/+=&x"),
    "support": ("11111111-aaaa-4bbb-8ccc-000000000002", "support-secret%2F:y"),
}


@dataclass
class World:
    """The emulated tenant: token server, EWS endpoint, and where the test writes its files."""

    ca: EmulatorCA
    tokens: TokenServer
    ews: EwsEmulator
    root: Path
    receipts: Path = field(init=False)
    state: Path = field(init=False)

    def __post_init__(self) -> None:
        self.receipts = self.root / "receipts.jsonl"
        self.state = self.root / "state.db"

    def deliver(self, mailbox: str, subject: str, *, folder: str = "inbox", **kw: object) -> str:
        msg = EmailMessage()
        msg["From"] = str(kw.get("sender", "Customer <customer@example.net>"))
        msg["To"] = mailbox
        msg["Subject"] = subject
        msg["Message-ID"] = f"<{time.monotonic_ns()}.{abs(hash(subject))}@example.net>"
        msg.set_content(str(kw.get("body", f"Body of {subject}")))
        return self.ews.deliver(mailbox, msg.as_bytes(), folder=folder)

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
        """Write a configuration with both credentials, the receipt handler and ``mailboxes``."""
        lines = emulated_credentials(
            APPS,
            token_endpoint=self.tokens.token_endpoint(TENANT),
            ca_file=self.ca.ca_file,
            env_prefix="E2E_SECRET_",
        )
        for mb_name, given in mailboxes.items():
            options = {
                "endpoint": self.ews.url,
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
    ews.start()
    try:
        yield World(ca, tokens, ews, tmp_path)
    finally:
        ews.stop()
        tokens.stop()
    if SCHEMA_DIR:
        invalid = [r for r in ews.request_log if r.schema_valid is False]
        assert not invalid, f"requests the schema rejects: {invalid[:3]}"


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
