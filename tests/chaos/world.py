"""The chaos run's world: token server, EWS and Graph emulators in this process, the daemon in
another.

``ChaosWorld`` builds the emulated tenant (two app registrations, any number of mailboxes, one
mail store served over EWS and Graph), writes
the daemon's configuration, and starts, kills and restarts the real ``ews-listener run`` process,
keeping for each lifetime its pid, how it ended, its log file and its RSS samples.
``RecordingTokenServer`` remembers every access token it issued, so the run can prove that none of
them reached a log line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.graph.subscriptions import NotificationSettings
from ews_listener_emulators.ops import notifications as streaming
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer
from tests import REPO
from tests.configs import emulated_credentials, table

__all__ = [
    "APPS",
    "CLIENT_STATE",
    "REPO",
    "TENANT",
    "ChaosWorld",
    "Lifetime",
    "RecordingTokenServer",
    "rss_mb",
]

TENANT = "contoso.onmicrosoft.com"
# Throw-away secrets of the emulated tenant; characters that need form-encoding on purpose, so a
# leak in either spelling is caught.
APPS = {
    "sales": ("11111111-aaaa-4bbb-8ccc-0000000000c1", "chaos-sales-secret/+=&x"),
    "support": ("11111111-aaaa-4bbb-8ccc-0000000000c2", "chaos-support-secret%2F:y"),
}
HANDLER = "tests.chaos.handler:record"
EWS_SCOPE = "https://outlook.office365.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
CLIENT_STATE = "chaos-client-state/+=z"  # the Graph subscriptions' clientState secret
_STATE_ENV = "CHAOS_CLIENT_STATE"


class RecordingTokenServer(TokenServer):
    """A ``TokenServer`` that keeps every access token it signs (for the log scan)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.issued: list[str] = []
        self._issued_lock = threading.Lock()

    def _mint(self, *args: Any, **kw: Any) -> tuple[str, int]:
        token, expires_in = super()._mint(*args, **kw)
        with self._issued_lock:
            self.issued.append(token)
        return token, expires_in

    def issued_tokens(self) -> list[str]:
        with self._issued_lock:
            return list(self.issued)


def rss_mb(pid: int) -> float | None:
    """VmRSS of ``pid`` in MB from /proc, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class Lifetime:
    """One run of the daemon process, from start to the signal that ended it (or its crash)."""

    number: int
    process: subprocess.Popen[bytes]
    log: Path
    started: float
    ended: float | None = None
    ended_by: str | None = None  # "SIGKILL", "SIGTERM", or "crash"
    returncode: int | None = None
    rss: list[tuple[float, float]] = field(default_factory=list)  # (time.time(), MB)

    @property
    def pid(self) -> int:
        return self.process.pid


class ChaosWorld:
    """The emulated tenant plus the daemon's lifetimes; see the module docstring."""

    def __init__(
        self,
        root: Path,
        *,
        token_lifetime: float,
        seed: int,
        fail_rate: float,
        rss_every: float,
        schema_dir: str | None = None,
        log_level: str = "info",
    ) -> None:
        self.root = root
        self.receipts = root / "receipts.jsonl"
        self.attempts = root / "attempts"
        self.attempts.mkdir(parents=True, exist_ok=True)
        self.state = root / "state.db"
        self.seed = seed
        self.fail_rate = fail_rate
        self.rss_every = rss_every
        self.log_level = log_level
        self.ca = EmulatorCA(root / "ca")
        self.tokens = RecordingTokenServer(ca=self.ca, token_lifetime=token_lifetime)
        self.tokens.start()
        self.tokens.add_tenant(TENANT)
        for client_id, secret in APPS.values():
            self.tokens.register_app(TENANT, client_id, secret=secret)
        self.ews = EwsEmulator(self.tokens, self.ca, schema_dir=schema_dir)
        self.ews.start()
        # A protocol minute of 10 s: the daemon's 1-minute streaming connections roll over every
        # 10 s, so a CI run crosses several "30-minute" limits.
        self.streams = streaming.configure(self.ews, minute=10.0, keepalive=0.5)
        # Graph's retry back-off (60 s first, for 4 hours) cut to seconds: a receiver down for a
        # kill's restart is retried, and one down longer ends in ``missed``.
        settings = NotificationSettings(first_retry=0.3, max_retry=1.0, retry_for=4.0)
        self.graph = GraphEmulator.beside(self.ews, self.tokens, self.ca, notifications=settings)
        self.graph.start()
        self.lifetimes: list[Lifetime] = []
        self._sampler_stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_rss, name="rss", daemon=True)
        self._sampler.start()

    # --- configuration -------------------------------------------------------------------------

    def config(
        self,
        mailboxes: dict[str, dict[str, object]],
        *,
        service: dict[str, object],
        notifications: dict[str, object] | None = None,
    ) -> Path:
        """Write the daemon's TOML: both credentials, the chaos handler, ``mailboxes`` (a
        ``source = "graph"`` one gets the Graph endpoint, and the credentials both scopes) and
        the ``[notifications]`` table when given (its ``graph`` entry: ``public_url``; the
        clientState is read from the environment)."""
        graph = any(given.get("source") == "graph" for given in mailboxes.values())
        lines = emulated_credentials(
            APPS,
            token_endpoint=self.tokens.token_endpoint(TENANT),
            ca_file=self.ca.ca_file,
            env_prefix="CHAOS_SECRET_",
            timeout=5,
            **({"scopes": [EWS_SCOPE, GRAPH_SCOPE]} if graph else {}),
        )
        for name, given in mailboxes.items():
            options = {
                "endpoint": self.graph.url if given.get("source") == "graph" else self.ews.url,
                "ca_bundle": str(self.ca.ca_file),
                "routes": [{"handlers": ["chaos"]}],
                **given,
            }
            lines += table(f"mailboxes.{name}", options)
        lines += [
            "[handlers.chaos]",
            'type = "python"',
            f'target = "{HANDLER}"',
            "",
            "[state]",
            f'url = "sqlite:///{self.state}"',
            "",
        ]
        lines += table("service", service)
        if notifications is not None:
            flat = {k: v for k, v in notifications.items() if not isinstance(v, dict)}
            lines += table("notifications", flat)
            for sub, body in notifications.items():
                if isinstance(body, dict):
                    secret = {"source": "env", "name": _STATE_ENV}
                    extra = {"client_state": secret} if sub == "graph" else {}
                    lines += table(f"notifications.{sub}", {**body, **extra})
        path = self.root / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CHAOS_SECRET_SALES=APPS["sales"][1],
            CHAOS_SECRET_SUPPORT=APPS["support"][1],
            **{_STATE_ENV: CLIENT_STATE},
            CHAOS_RECEIPTS=str(self.receipts),
            CHAOS_ATTEMPTS=str(self.attempts),
            CHAOS_SEED=str(self.seed),
            CHAOS_FAIL_RATE=str(self.fail_rate),
            PYTHONPATH=str(REPO),
        )
        return env

    # --- the daemon ----------------------------------------------------------------------------

    @property
    def current(self) -> Lifetime | None:
        """The lifetime still running, if any."""
        last = self.lifetimes[-1] if self.lifetimes else None
        return last if last is not None and last.ended is None else None

    def start_daemon(self, config: Path) -> Lifetime:
        """Start ``ews-listener run`` with its output in a log file of its own."""
        number = len(self.lifetimes) + 1
        log = self.root / f"daemon-{number:03d}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "listener",
                    "--log-format",
                    "json",
                    "--log-level",
                    self.log_level,
                    "run",
                    "--config",
                    str(config),
                ],
                cwd=REPO,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        lifetime = Lifetime(number, process, log, time.time())
        self.lifetimes.append(lifetime)
        return lifetime

    def end_daemon(self, sig: signal.Signals, *, timeout: float) -> Lifetime:
        """Signal the running daemon and wait for it; a daemon that outlives ``timeout`` is
        SIGKILLed and its lifetime marked ``"hung"``."""
        lifetime = self.current
        assert lifetime is not None, "no daemon is running"
        lifetime.ended = time.time()
        lifetime.ended_by = sig.name
        lifetime.process.send_signal(sig)
        try:
            lifetime.returncode = lifetime.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(lifetime.pid, signal.SIGKILL)
            lifetime.returncode = lifetime.process.wait()
            lifetime.ended_by = f"{sig.name}-hung"
        return lifetime

    def check_crash(self) -> Lifetime | None:
        """The running lifetime if it exited on its own (a crash), marked so; else None."""
        lifetime = self.current
        if lifetime is None or lifetime.process.poll() is None:
            return None
        lifetime.ended = time.time()
        lifetime.ended_by = "crash"
        lifetime.returncode = lifetime.process.returncode
        return lifetime

    def _sample_rss(self) -> None:
        while not self._sampler_stop.wait(self.rss_every):
            lifetime = self.current
            if lifetime is None:
                continue
            value = rss_mb(lifetime.pid)
            if value is not None and lifetime.ended is None:
                lifetime.rss.append((time.time(), value))

    def close(self) -> None:
        """Stop the daemon (SIGKILL), the sampler and the servers."""
        self._sampler_stop.set()
        if self.current is not None:
            self.end_daemon(signal.SIGKILL, timeout=10)
        self.graph.stop()
        self.ews.stop()
        self.tokens.stop()
