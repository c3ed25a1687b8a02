"""`make demo` from a fresh clone, with a new virtualenv, as a newcomer would run it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import REPO

# 19:50:09 handled orders@demo.example ← taro.yamada@shop.example 'Subject' key=d84a43c8a209
_HANDLED_LINE = re.compile(r"^\d\d:\d\d:\d\d handled \S+ ← .* key=[0-9a-f]{12}$")


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (what Ctrl-C must not leave)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(path) in cmdline or cwd.startswith(str(path)):
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


@pytest.mark.timeout(420)
def test_make_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    """make demo builds its venv, hands messages over, and Ctrl-C leaves nothing behind."""
    clone = tmp_path / "ews-listener"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    log = (tmp_path / "demo.log").open("w+")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "EWS_"))}
    demo = subprocess.Popen(
        ["make", "demo"],
        cwd=clone,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    archive = clone / "var" / "demo" / "archive"
    try:
        deadline = time.monotonic() + 360
        while time.monotonic() < deadline:
            if demo.poll() is not None:
                break
            log.seek(0)
            seen = log.read()
            # Both mailboxes: orders over EWS, support over Microsoft Graph (config/demo.toml).
            if (
                archive.is_dir()
                and len(list(archive.glob("*.json"))) >= 3
                and all(f"handled {box}@demo.example" in seen for box in ("orders", "support"))
            ):
                break
            time.sleep(0.5)
        handled = len(list(archive.glob("*.json"))) if archive.is_dir() else 0
        log.seek(0)
        output = log.read()
        assert handled >= 3, f"no messages handled; make demo said:\n{output[-4000:]}"
        # One readable line per handled message: time, mailbox, sender, subject, short key.
        readable = [line for line in output.splitlines() if _HANDLED_LINE.match(line)]
        assert readable, f"no 'handled' line; make demo said:\n{output[-4000:]}"
        assert all(len(line) <= 160 for line in readable), readable
        for box in ("orders", "support"):  # EWS and Graph
            assert any(f" {box}@demo.example " in line for line in readable), (box, readable)
        assert not re.search(r"[0-9a-f]{64}", output), "a full 64-hex key on the console"
        assert (clone / ".venv" / "bin" / "ews-listener").exists()
        # Ctrl-C in a terminal: SIGINT to the whole foreground process group.
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    time.sleep(1)
    assert _processes_under(clone) == []
    log.seek(0)
    assert "daemon.stopped" in log.read()
