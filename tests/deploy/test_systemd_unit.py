"""deploy/systemd/ews-listener.service: systemd-analyze verify and security, and its contents."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "ews-listener.service"


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not Path(path).exists():
        pytest.fail("systemd-analyze is missing: `apt-get install -y systemd` (Debian package)")
    return path


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_systemd_analyze(), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single warning."""
    copy = tmp_path / UNIT.name
    shutil.copy(UNIT, copy)
    result = _verify(copy)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """A misspelt directive makes verify complain, so the clean run above means something."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    result = _verify(copy)
    assert "WatchdogSecs" in result.stderr + result.stdout


def test_security_exposure_is_low(tmp_path: Path) -> None:
    """`systemd-analyze security --offline` rates the sandboxing at most 2.5 of 10."""
    copy = tmp_path / UNIT.name
    shutil.copy(UNIT, copy)
    result = subprocess.run(
        [
            _systemd_analyze(),
            "security",
            "--offline=yes",
            "--threshold=25",
            "--no-pager",
            str(copy),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "Overall exposure level" in result.stdout


def test_unit_has_what_operations_need() -> None:
    """Type=notify, the watchdog, the sandbox, restart rules and the stop timeout are set."""
    d = _directives(UNIT.read_text())

    def one(key: str) -> str:
        assert key in d, key
        return d[key][-1]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("ExecStart").endswith("ews-listener run --config /etc/ews-listener/config.toml")
    assert one("WatchdogSec") == "60"
    assert one("DynamicUser") == "yes"
    assert one("StateDirectory") == "ews-listener"
    assert one("ProtectSystem") == "strict"
    for key in ("ProtectHome", "NoNewPrivileges", "PrivateTmp", "LockPersonality"):
        assert one(key) == "yes", key
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert one("CapabilityBoundingSet") == ""
    assert one("Restart") == "on-failure"
    assert "78" in one("RestartPreventExitStatus").split()
    # Longer than the default shutdown grace (service.shutdown_grace = 30 s).
    assert float(one("TimeoutStopSec").rstrip("s")) > 30
    assert float(one("RestartSec").rstrip("s")) > 0


def test_load_credential_examples_match_the_file_source() -> None:
    """The commented LoadCredential= example names the credential the config snippet reads."""
    text = UNIT.read_text()
    assert "#LoadCredential=entra-client-secret:" in text
    assert 'secret = { source = "file", credential = "entra-client-secret" }' in text
