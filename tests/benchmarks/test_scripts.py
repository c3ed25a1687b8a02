"""The benchmark scripts still run end to end (their figures are theirs to print, not ours to time).

A change to the benchmarks' harness once broke ``throughput.py``'s naive loop without any test
noticing. These runs are short (``--quick``) and assert what must hold whatever the machine's
speed: exit 0 and every message handed over.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests import REPO
from tests.handlers.brokers import AMQP, NATS, REDIS, require_server
from tests.store.conftest import postgres_admin

__all__ = ["postgres_admin"]  # the fixture: PostgreSQL reachable, or fail under CI

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
def test_throughput_goals_quick_runs_every_goal_and_hands_over_every_message() -> None:
    """throughput.py --goals --quick: the six configurations of issue 14 in one run (loopback and
    +80 ms against the naive loop, a 50 ms handler, the three brokers), each handing over every
    message, then one table with each goal (500 messages: figures not judged)."""
    out = _run(str(BENCH / "throughput.py"), "--goals", "--quick")
    once = [line for line in out.splitlines() if line.startswith("ews-listener once ")]
    naive = [line for line in out.splitlines() if line.startswith("naive loop ")]
    assert [row.split()[2] for row in once] == ["500/500"] * 6, out
    assert [row.split()[4] for row in naive] == [
        "500/500",
        "100/100",
        "100/100",
    ]
    table = out.split("issue 14 goals, one run")[1]
    for goal in (
        "loopback >= 1,500 msg/s",
        "loopback >= 4x the naive loop",
        ">= 20x the naive loop at +80 ms",
        "50 ms handler, one mailbox >= 100 msg/s",
        "amqp >= 500 msg/s",
        "nats >= 500 msg/s",
        "redis_stream >= 500 msg/s",
    ):
        assert goal in table, table
    assert "unreachable" not in table, table


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


def _once_row(out: str) -> list[str]:
    [row] = [line for line in out.splitlines() if line.startswith("ews-listener once ")]
    return row.split()


@pytest.mark.slow
def test_throughput_handler_latency_prints_the_limit_beside_both_loops() -> None:
    """--handler-latency: once and the naive loop (whose handler sleeps as long) hand every
    message over, and each row has its limit; the goals are printed, met or not."""
    out = _run(
        str(BENCH / "throughput.py"),
        "--messages",
        "40",
        "--naive-messages",
        "10",
        "--handler-latency",
        "5",
    )
    assert "40/40" in _once_row(out), out
    assert any(line.startswith("naive loop (") and "10/10" in line for line in out.splitlines())
    assert "limit msg/s" in out, out
    assert "ews-listener once: limit " in out, out
    assert "5.0 ms handler / 8 in flight" in out, out
    assert "<= 0.023 EWS requests per message at batch 100" in out, out


@pytest.mark.slow
def test_throughput_webhook_handler_posts_every_message_to_the_receiver() -> None:
    """--handler webhook: the benchmark's receiver answers 200 after the latency and counts
    every message."""
    out = _run(
        str(BENCH / "throughput.py"),
        "--handler",
        "webhook",
        "--handler-latency",
        "5",
        "--messages",
        "40",
        "--no-naive",
    )
    assert "40/40" in _once_row(out), out
    assert "handler webhook" in out, out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("handler", "what", "address"),
    [("amqp", "RabbitMQ", AMQP), ("nats", "NATS", NATS), ("redis_stream", "Redis", REDIS)],
)
def test_throughput_broker_handler_delivers_every_message(
    handler: str, what: str, address: tuple[str, int]
) -> None:
    """--handler amqp|nats|redis_stream: every message reaches the run's own queue or stream
    (counted there), with the broker's confirm; fails in CI when the server is unreachable."""
    require_server(what, address)
    out = _run(str(BENCH / "throughput.py"), "--handler", handler, "--messages", "40")
    assert "40/40" in _once_row(out), out
    assert f"{handler} >= 500 msg/s end to end with confirms" in out, out


@pytest.mark.slow
def test_throughput_grid_writes_the_csv_and_the_svg(tmp_path: Path) -> None:
    """--grid: one once per (concurrency, latency), a table, a CSV row each and an SVG chart
    with a line and a limit per concurrency."""
    out = _run(
        str(BENCH / "throughput.py"),
        "--grid",
        "--quick",
        "--grid-latencies",
        "0",
        "10",
        "--grid-concurrency",
        "1",
        "4",
        "--messages",
        "30",
        "--results",
        str(tmp_path),
    )
    with (tmp_path / "handler_grid_quick.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["handler_concurrency"], r["handler_ms"]) for r in rows] == [
        ("1", "0.0"),
        ("1", "10.0"),
        ("4", "0.0"),
        ("4", "10.0"),
    ], out
    assert all(float(r["messages_per_s"]) > 0 for r in rows), rows
    assert all(float(r["limit_messages_per_s"]) > 0 for r in rows), rows
    svg = (tmp_path / "handler_grid_quick.svg").read_text()
    ElementTree.fromstring(svg)  # well-formed
    for legend in ("concurrency 1", "concurrency 4", "limit, 4"):
        assert legend in svg, svg
    assert "percent_of_limit" in out, out


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_admin")
def test_cluster_quick_loses_nothing_and_balances_after_every_change() -> None:
    """cluster.py --quick on the local PostgreSQL: every message handed over, repeats only from
    a killed or paused replica (exit 0), and every spread after a change is fair."""
    out = _run(str(BENCH / "cluster.py"), "--quick")
    assert " lost 0" in out, out
    assert "0 from others" in out, out
    spreads = [line for line in out.splitlines() if line.startswith("balance ")]
    assert len(spreads) == 8, out  # start, 2 per signal (--kills 1), the pause, 2 for the 4th
    assert all(line.endswith("yes)") for line in spreads), spreads


@pytest.mark.slow
def test_latency_quick_hands_every_message_over_in_every_mode() -> None:
    """latency.py --quick: Graph polling, the Graph webhook and EWS streaming each hand every
    message over, and the push runs received notifications while the polling run got none
    (figures not checked)."""
    out = _run(str(BENCH / "latency.py"), "--quick")
    rows = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line.startswith(("polling ", "webhook ", "streaming "))
    }
    assert set(rows) == {"polling", "webhook", "streaming"}, out
    assert {row[3] for row in rows.values()} == {"20/20"}, out  # after "+0", "ms"
    # ..., polls, notifications, daemon CPU ms/poll, emulator CPU ms/poll
    assert rows["polling"][-3] == "0", out
    assert int(rows["webhook"][-3]) > 0, out
    assert int(rows["streaming"][-3]) > 0, out
    assert all(float(row[-2]) > 0 and float(row[-1]) > 0 for row in rows.values()), out


@pytest.mark.slow
def test_latency_profile_writes_the_window_of_each_run(tmp_path: Path) -> None:
    """latency.py --profile DIR: the daemon runs under benchmarks/_profiled.py, its profile of
    the delivery window is written per run and its top printed, and every message still comes
    through."""
    out = _run(
        str(BENCH / "latency.py"), "--quick", "--modes", "webhook", "--profile", str(tmp_path)
    )
    assert (tmp_path / "webhook-0.pstats").stat().st_size > 0, out
    assert "webhook +0 ms: profiled CPU" in out, out
    assert "listener/poller.py" in out, out  # the poll is in the window
    rows = [line.split() for line in out.splitlines()]
    [row] = [r for r in rows if r[:3] == ["webhook", "+0", "ms"]]  # not "+0 ms: profiled"
    assert row[3] == "20/20", out
