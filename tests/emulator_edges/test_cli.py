"""``python -m ews_listener_emulators`` in a subprocess: files, working snippets, clean SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ews_listener_emulators.cli import DEFAULT_CLIENT_ID, build_parser

ROOT = Path(__file__).resolve().parents[2]


def _wait_for_file(process: subprocess.Popen[str], path: Path, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if path.exists():
            return dict(json.loads(path.read_text()))
        pause.wait(0.05)
    raise AssertionError(f"{path} did not appear within {timeout} s")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict, Path]]:
    """The emulator CLI in a subprocess with the demo seed and a feed; stopped afterwards."""
    state = tmp_path / "state"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ews_listener_emulators",
            "--state-dir",
            str(state),
            "--seed",
            "demo",
            "--feed",
            "20",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = _wait_for_file(process, state / "emulator.json")
        yield process, info, state
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_cli_writes_files_serves_and_stops_on_sigterm(
    running: tuple[subprocess.Popen[str], dict, Path],
) -> None:
    """Files are written, the admin API answers, the banner is printed, SIGTERM exits 0."""
    process, info, state = running
    assert info["client_id"] == DEFAULT_CLIENT_ID
    assert info["ews_url"].startswith("https://127.0.0.1:")
    assert Path(info["ca_file"]) == state / "ca.pem"
    assert (state / "emulator.json").stat().st_mode & 0o077 == 0  # the secret is not world-read
    toml = (state / "listener.toml").read_text()
    assert f'value = "{info["client_secret"]}"' in toml
    assert f'endpoint = "{info["ews_url"]}"' in toml

    # The admin API answers, over plain HTTP on its own port.
    health = httpx.get(f"{info['admin_url']}/health").json()
    assert health == {"ok": True, "ews": info["ews_url"]}

    os.kill(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "EWS emulator stopped" in out
    assert info["client_secret"] in out
    snippet = out.split("# exchangelib\n", 1)[1].split("-" * 78 + "\n")[1]
    assert "account.inbox.all()" in snippet


def test_printed_exchangelib_snippet_reads_the_demo_mail(tmp_path: Path) -> None:
    """exchangelib code pasted from the banner lists the seeded demo messages."""
    state = tmp_path / "state"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ews_listener_emulators",
            "--state-dir",
            str(state),
            "--seed",
            "demo",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_file(process, state / "emulator.json")
        banner = ""
        assert process.stdout is not None
        while "Ctrl-C or SIGTERM" not in banner:
            line = process.stdout.readline()
            assert line, "the emulator closed stdout before the banner ended"
            banner += line
        snippet = banner.split("# exchangelib\n", 1)[1].split("-" * 78 + "\n")[1]
        (tmp_path / "snippet.py").write_text(snippet)
        result = subprocess.run(
            [sys.executable, str(tmp_path / "snippet.py")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 6  # the six sample shapes seeded into orders@
        assert all("@" in line for line in lines)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
    assert process.returncode == 0


def test_listener_toml_is_accepted_by_the_listener_config(
    running: tuple[subprocess.Popen[str], dict, Path],
) -> None:
    """The written listener.toml loads with the listener's own configuration models."""
    from listener.config.loading import load_settings

    _, info, state = running
    settings = load_settings(state / "listener.toml", env={})
    assert sorted(settings.mailboxes) == ["orders", "support"]
    assert settings.mailboxes["orders"].endpoint == info["ews_url"]
    assert str(settings.credentials["demo"].ca_bundle) == info["ca_file"]


def test_parser_defaults() -> None:
    """Defaults: HTTPS, any free ports, ./var/emulator, no seed, no feed."""
    options = build_parser().parse_args([])
    assert (options.http, options.port, options.token_port) == (False, 0, 0)
    assert options.state_dir == Path("var/emulator")
    assert (options.seed, options.feed) == ("none", 0.0)


def test_run_in_process_plain_http_with_feed(tmp_path: Path) -> None:
    """--http: no CA, no ca_bundle lines; --feed keeps delivering; the stop event ends run()."""
    import io

    from ews_listener_emulators.cli import run

    options = build_parser().parse_args(
        ["--http", "--state-dir", str(tmp_path), "--feed", "100", "--mailbox", "a@x.example"]
    )
    stop = threading.Event()
    out = io.StringIO()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(run(options, stop, out)))
    thread.start()
    try:
        info = _wait_for_thread_file(thread, tmp_path / "emulator.json")
        assert info["ews_url"].startswith("http://")
        assert info["ca_file"] is None
        assert "ca_bundle" not in (tmp_path / "listener.toml").read_text()
        items_url = f"{info['admin_url']}/mailboxes/a@x.example/items"
        deadline = time.monotonic() + 10
        while len(httpx.get(items_url).json()) < 3 and time.monotonic() < deadline:
            threading.Event().wait(0.02)
        assert len(httpx.get(items_url).json()) >= 3
    finally:
        stop.set()
        thread.join(20)
    assert codes == [0]
    assert "OAUTHLIB_INSECURE_TRANSPORT" in out.getvalue()
    assert out.getvalue().rstrip().endswith("EWS emulator stopped")


def _wait_for_thread_file(thread: threading.Thread, path: Path, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert thread.is_alive(), "run() returned before it was ready"
        if path.exists():
            return dict(json.loads(path.read_text()))
        threading.Event().wait(0.02)
    raise AssertionError(f"{path} did not appear within {timeout} s")
