"""The benchmark scripts still run end to end (their figures are theirs to print, not ours to time).

A change to the benchmarks' harness once broke ``throughput.py``'s naive loop without any test
noticing. These runs are short (``--quick``) and assert what must hold whatever the machine's
speed: exit 0 and every message handed over.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests import REPO

BENCH = REPO / "benchmarks"


def _run(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_throughput_quick_hands_over_every_message_both_ways() -> None:
    out = _run(str(BENCH / "throughput.py"), "--quick")
    rows = [
        line for line in out.splitlines() if line.startswith(("ews-listener once ", "naive loop "))
    ]
    assert len(rows) == 2, out
    assert all("500/500" in row for row in rows), rows


@pytest.mark.slow
def test_idle_quick_polls_and_stops_cleanly() -> None:
    out = _run(str(BENCH / "idle.py"), "--quick")
    assert "exit code 0" in out, out


@pytest.mark.slow
def test_memory_quick_hands_the_attachment_over_intact() -> None:
    """memory.py --quick: both handlers get the 3 MiB attachment byte for byte (no RSS checked)."""
    out = _run(str(BENCH / "memory.py"), "--quick")
    rows = [line.split() for line in out.splitlines() if line.startswith(("directory ", "bytes "))]
    assert [(row[0], row[-1]) for row in rows] == [
        ("directory", "-"),
        ("directory", "intact"),
        ("bytes", "-"),
        ("bytes", "intact"),
    ], out


@pytest.mark.slow
def test_throughput_graph_prints_both_loops_at_each_latency() -> None:
    """throughput.py --source graph: once and the hand-written httpx loop hand over every message
    at both latencies, and the requests-per-message figures and goals are printed."""
    out = _run(
        str(BENCH / "throughput.py"),
        "--source",
        "graph",
        "--messages",
        "60",
        "--naive-messages",
        "20",
        "--latency",
        "0",
        "5",
    )
    rows = [line for line in out.splitlines() if line.startswith(("once, +", "by hand ("))]
    assert len(rows) == 4, out
    assert [row.split()[-7] for row in rows] == ["60/60", "20/20", "60/60", "20/20"], rows
    assert "mail: realistic" in out, out
    assert "once HTTP requests per message:" in out, out
    assert "goal <= 0.12 Graph (HTTP) requests per message" in out, out


@pytest.mark.slow
def test_idle_graph_polls_and_stops_cleanly() -> None:
    """idle.py --source graph: Graph mailboxes poll, requests per idle poll and RSS printed."""
    out = _run(
        str(BENCH / "idle.py"),
        "--source",
        "graph",
        "--mailboxes",
        "20",
        "--interval",
        "2",
        "--duration",
        "10",
    )
    assert "steady: Graph requests" in out, out
    assert "steady: requests per idle poll" in out, out
    assert "RSS end / peak" in out, out
    assert "exit code 0" in out, out
