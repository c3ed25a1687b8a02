"""Throughput: ``ews-listener once`` against the naive exchangelib loop, on the same messages.

Usage::

    .venv/bin/python benchmarks/throughput.py [--messages 5000] [--batch-size 100]
        [--mailboxes 1] [--quick] [--sweep] [--no-naive] [--source ews|graph]
        [--mail plain|realistic] [--latency MS [MS ...]]
        [--handler count|webhook|amqp|nats|redis_stream] [--handler-latency MS]
        [--concurrency N] [--grid [--grid-latencies MS ...] [--grid-concurrency N ...]]

What runs where: the emulator (token server + EWS) in a spawned child process; the daemon as a
subprocess (the real CLI, ``python -m listener once``) with a python handler that only counts;
the naive loop in this process, against a fresh copy of the same messages in other mailboxes::

    for m in inbox.filter(is_read=False):
        handle(m); m.is_read = True; m.save(update_fields=["is_read"])

repeated until a pass finds nothing (marking items read while paging a filter on ``is_read=False``
shifts FindItem's offsets, so a single pass skips messages; the passes are reported).

``--source graph``: the same ``ews-listener once`` with ``source = "graph"`` mailboxes (the Graph
endpoint of the same emulator process, same mail store), and the loop a user writes by hand with
httpx and a client-credentials token::

    GET users/{u}/mailFolders/inbox/messages?$filter=isRead eq false&$select=id,subject&$top=100
    for each: GET users/{u}/messages/{id}/$value; handle(mime); PATCH {"isRead": true}

again until a pass finds nothing (the emulator pages with ``$skip``, as Graph does for this query,
so marking read while paging skips some). It runs at each ``--latency`` (default 0 and 80 ms): a
delay of that many ms per HTTP request to Graph, a ``$batch`` being one request (``_harness``
explains why this is not the emulator's per-part ``latency`` fault). Requests are counted as
HTTP requests (round trips; the goal) and as Graph calls (every ``$batch`` part on its own, what
Graph's throttling counts). Mail: ``--mail realistic`` (the default with Graph;
``_harness.REALISTIC_MIX``: half HTML, three in ten with attachments) or ``plain`` (EWS's
default: one small text/plain order mail).

``--sweep`` runs the daemon at batch sizes 10, 25, 50, 100, 200, 512 and writes
``benchmarks/results/throughput_sweep.csv`` (batch_size, messages, seconds, messages_per_s,
ews_requests, requests_per_message, token_requests).

``--handler`` (issue 14): the daemon's handler. ``count`` is the python counter (with
``--handler-latency MS`` it sleeps that long per message, and so does the naive loop's);
``webhook`` POSTs to a threaded HTTP receiver this script starts, which answers 200 after the
latency; ``amqp``, ``nats`` and ``redis_stream`` publish with confirms to the real servers on
127.0.0.1 (a queue or stream created for the run and removed after it; ``_targets`` has the
details). Every figure is printed beside the **limit** it could reach::

    limit = 1 / (EWS requests per message x round trip + handler time / concurrency)

the round trip being the emulator's mean time per request (added latency included), the handler
time the latency or, for webhook and brokers, the listener's own handler timed in this process
(``_targets.Target.probe``), and the concurrency the hand-overs in flight
(``handler_concurrency``, capped by ``service.handler_workers``). It leaves CPU out: a figure far
below its limit is CPU-bound (the output says whose).

``--grid`` runs ``once`` at each ``--grid-latencies`` (default 0 10 50 100 200 ms) for each
``--grid-concurrency`` (default 1 4 16 64; ``handler_workers`` raised to match), about
``GRID_SECONDS`` a point, and writes ``handler_grid.csv`` and ``handler_grid.svg`` (messages/s
against handler latency, a line and its limit per concurrency; drawn by ``_harness``, no plotting
library) to ``--results`` (default ``benchmarks/results``).

What limits the figures (the printed output repeats this with the measured CPU split):

- Both processes share 2 cores with the emulator; the emulator parses and renders SOAP with lxml
  in Python threads, so at large batches it is the emulator's CPU, not the listener's, that sets
  the pace (compare "emulator CPU" with the wall time).
- The daemon is one Python process: exchangelib's XML parsing of GetItem responses and the
  conversion to ``Message`` hold the GIL, so more worker threads do not help one mailbox.
- End to end includes interpreter start, imports (exchangelib, pydantic, SQLAlchemy), the token
  request and the folder resolution: about a second that does not depend on N; the rate net of
  that fixed cost is printed beside it.
- SQLite commits once per page (WAL); with batch 10 that is 10 fsyncs per 100 messages.
- The naive loop is bound by round trips: one UpdateItem per message plus FindItem pages, each a
  TLS request with a full SOAP envelope; its rate is the emulator's latency per request.
"""

from __future__ import annotations

import argparse
import csv
import os
import ssl
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    CLIENT_ID,
    CLIENT_SECRET,
    GRAPH_SCOPE,
    REALISTIC_MIX,
    EmulatorProcess,
    EmulatorStats,
    Endpoints,
    Series,
    daemon_argv,
    daemon_env,
    make_messages,
    make_realistic_messages,
    print_table,
    svg_line_chart,
    workdir,
    write_config,
)
from _targets import HANDLERS, Target, TargetUnavailable, make_target

__all__ = ["DaemonRun", "NaiveRun", "main", "run_daemon_once", "run_graph_by_hand", "run_naive"]


SWEEP_SIZES = (10, 25, 50, 100, 200, 512)
#: --grid: handler latencies (ms) against handler_concurrency, one ``once`` per point.
GRID_LATENCIES = (0.0, 10.0, 50.0, 100.0, 200.0)
GRID_CONCURRENCY = (1, 4, 16, 64)


@dataclass(frozen=True)
class GoalRun:
    """One configuration of ``--goals``: what issue 14 measures at default settings."""

    name: str
    handler: str  # --handler
    handler_latency: float  # --handler-latency, ms
    latency: float  # --latency, ms added to every EWS answer
    naive_messages: int | None  # the naive loop's messages (None: as many; 0: no naive loop)


#: ``--goals``: every goal of issue 14, one configuration each, one after the other in one run
#: (one emulator, the brokers of this machine), then one table of goals.
#: Each run sets the emulator's added latency (``set_latency`` replaces the last figure).
GOAL_RUNS = (
    GoalRun("loopback, counting handler", "count", 0, 0, None),
    GoalRun("50 ms handler", "count", 50, 0, 200),
    GoalRun("amqp with confirms", "amqp", 0, 0, 0),
    GoalRun("nats JetStream with acks", "nats", 0, 0, 0),
    GoalRun("redis_stream", "redis_stream", 0, 0, 0),
    GoalRun("+80 ms per EWS answer", "count", 0, 80, 500),
)
#: --grid: a point runs about this many seconds (messages = the limit's rate x this).
GRID_SECONDS = 8.0
GRID_SECONDS_QUICK = 1.5
#: Graph: the latencies of a default run (ms per HTTP request), and the hand-written loop's
#: messages above 0 ms (two round trips a message: 500 take ~90 s at 80 ms; 100 with --quick).
GRAPH_LATENCIES = (0.0, 80.0)
GRAPH_SLOW_HAND_MESSAGES = 500
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class DaemonRun:
    """One ``ews-listener once`` over freshly delivered messages."""

    batch_size: int
    messages: int
    handled: int
    seconds: float
    exit_code: int
    cpu_seconds: float
    peak_rss_mb: float
    emulator: EmulatorStats
    emulator_cpu: float
    tokens: int
    handler: str = "count"
    handler_seconds: float = 0.0  # one handler call (the sleep, or probed: see _targets)
    concurrency: int = 8  # hand-overs in flight at most (handler_concurrency, handler_workers)

    @property
    def rate(self) -> float:
        return self.handled / self.seconds if self.seconds else 0.0

    @property
    def round_trip(self) -> float:
        """Mean seconds the emulator took per request (added latency included)."""
        return self.emulator.server_seconds / max(self.emulator.requests, 1)

    @property
    def limit(self) -> float:
        """The rate this run could reach: one message costs its share of the round trips plus
        its handler time over the hand-overs in flight (requests x round trip + handler time /
        concurrency, per message); CPU is not in it."""
        per_message = self.emulator.requests / max(self.handled, 1) * self.round_trip
        per_message += self.handler_seconds / max(self.concurrency, 1)
        return 1 / per_message if per_message else float("inf")


@dataclass(frozen=True)
class NaiveRun:
    """The hand-written exchangelib loop over the same messages."""

    messages: int
    handled: int
    passes: int
    seconds: float
    emulator: EmulatorStats
    emulator_cpu: float
    tokens: int

    @property
    def rate(self) -> float:
        return self.handled / self.seconds if self.seconds else 0.0


def _deliver(
    emu: EmulatorProcess, addresses: list[str], total: int, tag: str, mail: str = "plain"
) -> None:
    emu.add_mailboxes(addresses)
    for n, address in enumerate(addresses):
        share = total // len(addresses) + (1 if n < total % len(addresses) else 0)
        if mail == "realistic":
            seed = zlib.crc32(f"{tag}{n}".encode())
            emu.deliver(address, make_realistic_messages(share, address, seed=seed))
        else:
            emu.deliver(address, make_messages(share, address, tag=f"{tag}{n}"))


def run_daemon_once(
    emu: EmulatorProcess,
    root: Path,
    *,
    messages: int,
    batch_size: int,
    mailboxes: int,
    tag: str,
    timeout: float = 900,
    source: str = "ews",
    mail: str = "plain",
    target: Target | None = None,
    handler_concurrency: int | None = None,
    handler_workers: int | None = None,
    handler_seconds: float | None = None,
) -> DaemonRun:
    """Deliver ``messages`` to fresh mailboxes, then time one ``ews-listener once`` over them.

    ``target``: the handler and where it delivers (default: the counting python handler);
    ``handler_seconds``: its time per call for the limit (default: ``target.probe()``).
    Peak RSS is the daemon's ``ru_maxrss`` from ``wait4()`` (the kernel's high-water mark).
    """
    assert emu.endpoints is not None
    target = target or Target(0.0)
    if handler_seconds is None:
        handler_seconds = target.probe() if messages else 0.0
    addresses = [f"{tag}-{n}@contoso.com" for n in range(mailboxes)]
    _deliver(emu, addresses, messages, tag, mail)
    run_dir = root / tag
    run_dir.mkdir()
    config = write_config(
        run_dir / "config.toml",
        emu.endpoints,
        addresses,
        state_url=f"sqlite:///{run_dir / 'state.db'}",
        batch_size=batch_size,
        start_from="all",
        source=source,
        handler=target.table,
        handler_concurrency=handler_concurrency,
        handler_workers=handler_workers,
    )
    count_file = run_dir / "handled"
    log_file = run_dir / "output"
    received = 0 if target.counted_in_daemon else target.received()
    emu.clear_log()
    before = emu.stats(source)
    started = time.perf_counter()
    with log_file.open("w") as sink:
        process = subprocess.Popen(
            daemon_argv("once", config),
            env={**daemon_env(count_file), **target.env},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    exit_code, usage = _wait(process, timeout)
    seconds = time.perf_counter() - started
    output = log_file.read_text()
    after = emu.stats(source)
    if target.counted_in_daemon:
        handled = int(count_file.read_text()) if count_file.exists() else 0
    else:
        handled = target.received() - received
    if exit_code != 0 or handled != messages:
        print(f"!! once exited {exit_code}, handled {handled}/{messages}:\n{output[-3000:]}")
    left = sum(emu.unread(a) for a in addresses)
    if left:
        print(f"!! {left} messages are still unread after once")
    default_concurrency, default_workers = listener_defaults()
    workers = handler_workers or default_workers
    per_mailbox = handler_concurrency or default_concurrency
    return DaemonRun(
        batch_size=batch_size,
        messages=messages,
        handled=handled,
        seconds=seconds,
        exit_code=exit_code,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        emulator=after,
        emulator_cpu=after.cpu_seconds - before.cpu_seconds,
        tokens=after.token_requests - before.token_requests,
        handler=target.kind,
        handler_seconds=handler_seconds,
        concurrency=min(per_mailbox * mailboxes, workers),
    )


def listener_defaults() -> tuple[int, int]:
    """The listener's ``handler_concurrency`` and ``service.handler_workers`` defaults."""
    from listener.config.models import MailboxConfig, ServiceConfig

    return (
        int(MailboxConfig.model_fields["handler_concurrency"].default),
        int(ServiceConfig.model_fields["handler_workers"].default),
    )


def _wait(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any]:
    """Reap ``process`` with ``wait4()``: its exit code and resource usage (``ru_maxrss``: the
    kernel's high-water mark of its RSS; CPU time to the end, which /proc sampling misses)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if not pid and time.monotonic() > deadline:
            process.kill()
            pid, status, usage = os.wait4(process.pid, 0)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage
        time.sleep(0.02)


# --- the naive loop --------------------------------------------------------------------------


def _naive_account(endpoints: Endpoints, address: str) -> Any:
    """An exchangelib account the way a user wires app-only OAuth by hand (version pinned)."""
    # Imported here: only the naive loop needs exchangelib in this process.
    import httpx
    import requests.adapters
    from exchangelib import (
        IMPERSONATION,
        OAUTH2,
        Account,
        Configuration,
        Identity,
        OAuth2AuthorizationCodeCredentials,
        Version,
    )
    from exchangelib.protocol import BaseProtocol
    from exchangelib.version import EXCHANGE_2016

    ca_file = str(endpoints.ca_file)
    tls = ssl.create_default_context(cafile=ca_file)

    def fetch_token() -> str:
        # trust_env=False: REQUESTS_CA_BUNDLE and proxies must not apply to the emulator.
        with httpx.Client(verify=tls, trust_env=False, timeout=30) as client:
            response = client.post(
                endpoints.token_endpoint,
                data={
                    "grant_type": "client_credentials",
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "scope": "https://outlook.office365.com/.default",
                },
            )
            response.raise_for_status()
            return str(response.json()["access_token"])

    class CaAdapter(requests.adapters.HTTPAdapter):
        # requests lets REQUESTS_CA_BUNDLE override a session's verify; force ours.
        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            super().cert_verify(conn=conn, url=url, verify=ca_file, cert=cert)  # type: ignore[no-untyped-call]

        def get_connection_with_tls_context(
            self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
        ) -> Any:
            return super().get_connection_with_tls_context(
                request=request, verify=ca_file, proxies=proxies, cert=cert
            )

    class TokenCredentials(OAuth2AuthorizationCodeCredentials):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(
                access_token=self._token(),
                identity=Identity(primary_smtp_address=address),
                client_id=CLIENT_ID,
            )

        @staticmethod
        def _token() -> dict[str, Any]:
            return {
                "access_token": fetch_token(),
                "token_type": "Bearer",
                "expires_in": 3000,
                "expires_at": time.time() + 3000,
            }

        def refresh(self, session: Any) -> None:
            self.access_token = self._token()

    BaseProtocol.HTTP_ADAPTER_CLS = CaAdapter
    config = Configuration(
        service_endpoint=endpoints.ews_url,
        credentials=TokenCredentials(),
        auth_type=OAUTH2,
        version=Version(build=EXCHANGE_2016),
    )
    return Account(address, access_type=IMPERSONATION, config=config, autodiscover=False)


#: Seconds the naive loop's handler takes per message (``--handler-latency``), as the daemon's.
_NAIVE_HANDLER_SECONDS = 0.0


def _handle(message: Any) -> None:
    """The naive loop's handler: as trivial as the daemon's counter, or as slow
    (``--handler-latency``)."""
    if _NAIVE_HANDLER_SECONDS:
        time.sleep(_NAIVE_HANDLER_SECONDS)


def run_naive(
    emu: EmulatorProcess,
    *,
    messages: int,
    mailboxes: int,
    tag: str,
    max_passes: int = 50,
    mail: str = "plain",
) -> NaiveRun:
    """Deliver ``messages`` to fresh mailboxes and process them with the hand-written loop."""
    assert emu.endpoints is not None
    addresses = [f"{tag}-{n}@contoso.com" for n in range(mailboxes)]
    _deliver(emu, addresses, messages, tag, mail)
    emu.clear_log()
    before = emu.stats()
    started = time.perf_counter()
    handled = passes = 0
    for address in addresses:  # one mailbox after the other, as a simple script does
        account = _naive_account(emu.endpoints, address)
        inbox = account.inbox
        for n in range(1, max_passes + 1):
            seen = 0
            for m in inbox.filter(is_read=False):
                _handle(m)
                m.is_read = True
                m.save(update_fields=["is_read"])
                seen += 1
            handled += seen
            passes = max(passes, n)
            if not seen:
                break
        account.protocol.close()
    seconds = time.perf_counter() - started
    after = emu.stats()
    return NaiveRun(
        messages=messages,
        handled=handled,
        passes=passes,
        seconds=seconds,
        emulator=after,
        emulator_cpu=after.cpu_seconds - before.cpu_seconds,
        tokens=after.token_requests - before.token_requests,
    )


# --- the hand-written Graph loop ---------------------------------------------------------------


def _graph_token(endpoints: Endpoints) -> str:
    """A client-credentials token for Graph, as a user's script gets one (one for the run)."""
    import httpx

    tls = ssl.create_default_context(cafile=str(endpoints.ca_file))
    with httpx.Client(verify=tls, trust_env=False, timeout=30) as client:
        response = client.post(
            endpoints.token_endpoint,
            data={
                "grant_type": "client_credentials",
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "scope": GRAPH_SCOPE,
            },
        )
        response.raise_for_status()
        return str(response.json()["access_token"])


def run_graph_by_hand(
    emu: EmulatorProcess,
    *,
    messages: int,
    mailboxes: int,
    tag: str,
    mail: str,
    max_passes: int = 50,
) -> NaiveRun:
    """Deliver ``messages`` to fresh mailboxes and process them with the loop a user writes with
    httpx: list the unread, GET each ``$value``, PATCH each ``isRead``; passes until none left."""
    import httpx

    assert emu.endpoints is not None
    assert emu.endpoints.graph_url
    addresses = [f"{tag}-{n}@contoso.com" for n in range(mailboxes)]
    _deliver(emu, addresses, messages, tag, mail)
    emu.clear_log()
    before = emu.stats("graph")
    started = time.perf_counter()
    handled = passes = 0
    client = httpx.Client(
        base_url=emu.endpoints.graph_url + "/",
        verify=ssl.create_default_context(cafile=str(emu.endpoints.ca_file)),
        trust_env=False,
        timeout=60,
        headers={"Authorization": f"Bearer {_graph_token(emu.endpoints)}"},
    )
    with client:
        for address in addresses:  # one mailbox after the other, as a simple script does
            user = f"users/{quote(address)}"
            for n in range(1, max_passes + 1):
                seen = 0
                url: str | None = f"{user}/mailFolders/inbox/messages"
                query: dict[str, str] | None = {
                    "$filter": "isRead eq false",
                    "$select": "id,subject",
                    "$top": "100",
                }
                while url:
                    page = client.get(url, params=query)
                    page.raise_for_status()
                    for m in page.json()["value"]:
                        item = f"{user}/messages/{quote(m['id'], safe='')}"
                        mime = client.get(f"{item}/$value")
                        mime.raise_for_status()
                        _handle(mime.content)
                        client.patch(item, json={"isRead": True}).raise_for_status()
                        seen += 1
                    url, query = page.json().get("@odata.nextLink"), None
                handled += seen
                passes = max(passes, n)
                if not seen:
                    break
    seconds = time.perf_counter() - started
    after = emu.stats("graph")
    return NaiveRun(
        messages=messages,
        handled=handled,
        passes=passes,
        seconds=seconds,
        emulator=after,
        emulator_cpu=after.cpu_seconds - before.cpu_seconds,
        tokens=after.token_requests - before.token_requests,
    )


# --- reporting -------------------------------------------------------------------------------


def _per_message(stats: EmulatorStats, messages: int) -> str:
    ops = ", ".join(f"{op} {n}" for op, n in stats.by_operation.most_common())
    return f"{stats.requests / max(messages, 1):.4f} ({stats.requests} requests: {ops})"


def _limits(run: DaemonRun, fixed: float) -> list[str]:
    """What limited this run, from the measured CPU split (2 cores on the reference box)."""
    lines = [
        f"daemon CPU {run.cpu_seconds:.1f} s of {run.seconds:.1f} s wall "
        f"({100 * run.cpu_seconds / run.seconds:.0f}% of one core: one Python process, the GIL "
        "serialises XML parsing and Message conversion)",
        f"emulator CPU {run.emulator_cpu:.1f} s ({100 * run.emulator_cpu / run.seconds:.0f}% of "
        f"one core), time inside its handlers {run.emulator.server_seconds:.1f} s",
        f"fixed cost (start, imports, token, folder, empty sync) ~{fixed:.1f} s of the wall time",
    ]
    busiest = max(run.cpu_seconds, run.emulator_cpu)
    if busiest > 0.8 * run.seconds:
        who = "the daemon" if run.cpu_seconds >= run.emulator_cpu else "the emulator"
        lines.append(f"=> CPU-bound: {who} saturates a core")
    elif run.cpu_seconds + run.emulator_cpu > 1.6 * run.seconds:
        lines.append("=> both cores busy: daemon and emulator compete for 2 cores")
    else:
        lines.append("=> latency-bound: round trips (TLS, SOAP) and SQLite commits, not CPU")
    return lines


def _baseline(emu: EmulatorProcess, root: Path, source: str = "ews", tag: str = "empty") -> float:
    """Wall time of ``once`` on an empty mailbox: the cost that does not depend on N."""
    run = run_daemon_once(
        emu, root, messages=0, batch_size=100, mailboxes=1, tag=tag, source=source
    )
    return run.seconds


def _sweep(emu: EmulatorProcess, root: Path, args: argparse.Namespace, fixed: float) -> None:
    rows = []
    for size in SWEEP_SIZES:
        run = run_daemon_once(
            emu,
            root,
            messages=args.messages,
            batch_size=size,
            mailboxes=args.mailboxes,
            tag=f"sweep{size}",
        )
        rows.append(
            {
                "batch_size": size,
                "messages": run.handled,
                "seconds": round(run.seconds, 3),
                "messages_per_s": round(run.rate, 1),
                "net_messages_per_s": round(run.handled / max(run.seconds - fixed, 1e-6), 1),
                "ews_requests": run.emulator.requests,
                "requests_per_message": round(run.emulator.requests / max(run.handled, 1), 4),
                "token_requests": run.tokens,
                "daemon_cpu_s": round(run.cpu_seconds, 2),
                "emulator_cpu_s": round(run.emulator_cpu, 2),
            }
        )
        print(
            f"  batch {size:>3}: {run.rate:7.1f} msg/s, {rows[-1]['requests_per_message']} req/msg"
        )
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / ("throughput_sweep_quick.csv" if args.quick else "throughput_sweep.csv")
    with target.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print()
    print_table(list(rows[0]), [list(r.values()) for r in rows])
    print(f"\nwritten: {target}")
    _plot(rows, target.with_suffix(".png"))


def _plot(rows: list[dict[str, Any]], target: Path) -> None:
    """messages/s and EWS requests per message against batch size, as a PNG (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a server or in CI
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    sizes = [r["batch_size"] for r in rows]
    figure, rate_axis = plt.subplots(figsize=(7, 4))
    rate_axis.plot(sizes, [r["messages_per_s"] for r in rows], "o-", label="end to end")
    rate_axis.plot(sizes, [r["net_messages_per_s"] for r in rows], "s--", label="net of start-up")
    rate_axis.set_xscale("log")
    rate_axis.set_xticks(sizes, [str(s) for s in sizes])
    rate_axis.set_xlabel("batch size (SyncFolderItems MaxChangesReturned, GetItem batch)")
    rate_axis.set_ylabel("messages / s")
    request_axis = rate_axis.twinx()
    request_axis.plot(
        sizes, [r["requests_per_message"] for r in rows], "^:", color="grey", label="EWS req/msg"
    )
    request_axis.set_ylabel("EWS requests per message")
    lines = rate_axis.get_legend_handles_labels()
    extra = request_axis.get_legend_handles_labels()
    rate_axis.legend(lines[0] + extra[0], lines[1] + extra[1], loc="center right")
    rate_axis.set_title(f"ews-listener once, {rows[0]['messages']} messages")
    figure.tight_layout()
    figure.savefig(target, dpi=110)
    plt.close(figure)
    print(f"written: {target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--mailboxes", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="500 messages: under 30 s")
    parser.add_argument("--sweep", action="store_true", help="batch sizes 10..512 to CSV")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    parser.add_argument(
        "--latency",
        type=float,
        nargs="+",
        default=None,
        metavar="MS",
        help="milliseconds added to every EWS answer (a WAN round trip; loopback is ~1 ms); with "
        "--source graph to every HTTP request, one run per value (default: 0 80)",
    )
    parser.add_argument(
        "--naive-messages",
        type=int,
        default=None,
        help="messages for the naive loop (default N; Graph above 0 ms: at most "
        f"{GRAPH_SLOW_HAND_MESSAGES}, 100 with --quick)",
    )
    parser.add_argument(
        "--source", choices=("ews", "graph"), default="ews", help="the mailboxes' protocol"
    )
    parser.add_argument(
        "--mail",
        choices=("plain", "realistic"),
        default=None,
        help="plain text orders (EWS's default) or the realistic mix (Graph's default)",
    )
    parser.add_argument(
        "--handler",
        choices=HANDLERS,
        default="count",
        help="the daemon's handler: count (python), webhook (a local receiver), or a broker on "
        "this machine (amqp, nats, redis_stream; a queue or stream of the run)",
    )
    parser.add_argument(
        "--handler-latency",
        type=float,
        default=0.0,
        metavar="MS",
        help="milliseconds the handler takes per message (count: a sleep; webhook: the receiver "
        "answers after it); the naive loop's handler takes as long",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="the mailboxes' handler_concurrency (default: the listener's)",
    )
    parser.add_argument(
        "--grid",
        action="store_true",
        help="msg/s against --grid-latencies for each --grid-concurrency: CSV and SVG in "
        "benchmarks/results/",
    )
    parser.add_argument(
        "--grid-latencies",
        type=float,
        nargs="+",
        default=list(GRID_LATENCIES),
        metavar="MS",
        help="handler latencies of --grid",
    )
    parser.add_argument(
        "--grid-concurrency",
        type=int,
        nargs="+",
        default=list(GRID_CONCURRENCY),
        metavar="N",
        help="handler_concurrency values of --grid",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        metavar="DIR",
        help="where --grid writes its CSV and SVG (default: benchmarks/results)",
    )
    parser.add_argument(
        "--goals",
        action="store_true",
        help="every goal of issue 14 in one run: loopback, +80 ms, a 50 ms handler and the three "
        "brokers, one after the other at default settings, then one table of goals",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 500)
    if args.goals:
        if args.sweep or args.grid or args.source == "graph" or args.handler != "count":
            parser.error(
                "--goals runs its own configurations: no --sweep, --grid, --source, --handler"
            )
        if args.latency or args.handler_latency or args.concurrency or args.no_naive:
            parser.error("--goals measures default settings: no --latency, --handler-latency, ...")
        args.mail = args.mail or "plain"
        with workdir(args.keep) as root, EmulatorProcess(root) as emu:
            return _all_goals(args, root, emu)
    if args.messages < args.mailboxes:
        parser.error("--messages must be at least --mailboxes")
    if args.handler_latency and args.handler not in ("count", "webhook"):
        parser.error(
            f"--handler-latency applies to count and webhook; {args.handler}'s handler time is "
            "the broker's own confirm"
        )
    if args.source == "graph":
        if args.sweep or args.grid:
            parser.error("--sweep and --grid measure EWS; they do not take --source graph")
        if args.handler != "count" or args.handler_latency:
            parser.error("--source graph runs the counting handler (no --handler options)")
    if args.sweep and args.grid:
        parser.error("give --sweep or --grid, not both")
    if args.grid and args.handler not in ("count", "webhook"):
        parser.error("--grid varies the handler latency: --handler count or webhook")
    if args.source == "graph":
        if args.sweep:
            parser.error("--sweep measures EWS batch sizes; it does not take --source graph")
        args.latency = list(args.latency or GRAPH_LATENCIES)
        args.mail = args.mail or "realistic"
        with workdir(args.keep) as root, EmulatorProcess(root, graph=True) as emu:
            return _graph(args, root, emu)
    if args.latency is not None and len(args.latency) > 1:
        parser.error("--latency takes one value with --source ews")
    args.latency = args.latency[0] if args.latency else 0.0
    args.mail = args.mail or "plain"
    global _NAIVE_HANDLER_SECONDS  # noqa: PLW0603 - the naive loop's handler, set once per run
    _NAIVE_HANDLER_SECONDS = args.handler_latency / 1000

    try:
        target = make_target(args.handler, args.handler_latency / 1000)
        with workdir(args.keep) as root, EmulatorProcess(root) as emu, target:
            return _ews(args, root, emu, target)
    except TargetUnavailable as e:
        print(f"error: --handler {args.handler}: {e}", file=sys.stderr)
        return 69  # EX_UNAVAILABLE, as the daemon's own exit code for an unreachable service


def _ews(args: argparse.Namespace, root: Path, emu: EmulatorProcess, target: Target) -> int:
    """EWS: the default run (``once`` and the naive loop), ``--sweep`` or ``--grid``."""
    print(
        f"scratch {root}; emulator pid {emu.pid}; "
        f"daemon: {' '.join(daemon_argv('once', Path('CONFIG'))[1:])}; "
        f"handler {target.kind}, {target.latency * 1000:g} ms"
    )
    emu.set_latency(args.latency / 1000)
    fixed = _baseline(emu, root)
    print(f"fixed cost of one `once` (empty mailbox): {fixed:.2f} s\n")
    if args.sweep:
        _sweep(emu, root, args, fixed)
        return 0
    if args.grid:
        return _grid(emu, root, args, target, fixed)
    run = run_daemon_once(
        emu,
        root,
        messages=args.messages,
        batch_size=args.batch_size,
        mailboxes=args.mailboxes,
        tag="daemon",
        mail=args.mail,
        target=target,
        handler_concurrency=args.concurrency,
    )
    naive = None
    if args.handler != "count" and not args.no_naive:
        print(f"(no naive loop with --handler {args.handler}: it would only count)\n")
    elif not args.no_naive:
        naive = run_naive(
            emu,
            messages=args.naive_messages or args.messages,
            mailboxes=args.mailboxes,
            tag="naive",
            mail=args.mail,
        )
    _report(args, run, naive, fixed)
    return 0 if run.exit_code == 0 and run.handled == args.messages else 1


def _all_goals(args: argparse.Namespace, root: Path, emu: EmulatorProcess) -> int:
    """``--goals``: each of ``GOAL_RUNS`` in turn, its report, then every goal in one table."""
    global _NAIVE_HANDLER_SECONDS  # noqa: PLW0603 - the naive loop's handler, set per run
    goals: list[tuple[str, str]] = []
    ok = True
    for n, goal in enumerate(GOAL_RUNS):
        print(f"\n=== {n + 1}/{len(GOAL_RUNS)}: {goal.name} ===")
        run_args = argparse.Namespace(**vars(args))
        run_args.handler = goal.handler
        run_args.handler_latency = goal.handler_latency
        run_args.latency = goal.latency
        run_args.no_naive = goal.naive_messages == 0
        quick_naive = None if goal.naive_messages is None else min(goal.naive_messages, 100)
        naive_messages = quick_naive if args.quick else goal.naive_messages
        run_args.naive_messages = naive_messages or None
        _NAIVE_HANDLER_SECONDS = goal.handler_latency / 1000
        emu.set_latency(goal.latency / 1000)
        try:
            with make_target(goal.handler, goal.handler_latency / 1000) as target:
                fixed = _baseline(emu, root, tag=f"goal{n}-empty")
                run = run_daemon_once(
                    emu,
                    root,
                    messages=args.messages,
                    batch_size=args.batch_size,
                    mailboxes=args.mailboxes,
                    tag=f"goal{n}",
                    mail=args.mail,
                    target=target,
                )
                naive = None
                if not run_args.no_naive:
                    naive = run_naive(
                        emu,
                        messages=run_args.naive_messages or args.messages,
                        mailboxes=args.mailboxes,
                        tag=f"goal{n}-naive",
                        mail=args.mail,
                    )
        except TargetUnavailable as e:
            ok = False
            goals.append((goal.name, f"{goal.handler} unreachable: {e}: NOT met"))
            continue
        _report(run_args, run, naive, fixed)
        ok = ok and run.exit_code == 0 and run.handled == args.messages
        goals += [(goal.name, line) for line in _goals(run_args, run, naive)]
    emu.set_latency(0)
    print(
        f"\nissue 14 goals, one run, default settings ({args.messages} messages, "
        f"{args.mailboxes} mailbox(es), batch {args.batch_size}):"
    )
    print_table(["run", "goal: measured: met?"], [list(row) for row in goals])
    if args.quick:
        print(
            "(--quick: 500 messages a run, where start-up and the first requests weigh most; "
            "the goals are judged at the default 5,000)"
        )
    return 0 if ok else 1


def _limit_text(run: DaemonRun) -> str:
    """How the limit of ``run`` is computed, with its numbers."""
    per_message = run.emulator.requests / max(run.handled, 1)
    return (
        f"limit {run.limit:,.0f} msg/s = 1 / ({per_message:.4f} req/msg x "
        f"{run.round_trip * 1000:.1f} ms round trip + {run.handler_seconds * 1000:.1f} ms "
        f"handler / {run.concurrency} in flight); measured {run.rate:.1f} msg/s = "
        f"{100 * run.rate / run.limit:.0f}% of it"
        + (
            " (above it: the next batch's fetch overlaps the last batch's mark-read, so two "
            "requests are in flight where the formula counts them one after the other)"
            if run.rate > run.limit
            else ""
        )
    )


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _report(args: argparse.Namespace, run: DaemonRun, naive: NaiveRun | None, fixed: float) -> None:
    net = run.handled / max(run.seconds - fixed, 1e-6)
    rows: list[list[object]] = [
        [
            "ews-listener once",
            f"{run.handled}/{run.messages}",
            f"{run.seconds:.2f}",
            f"{run.rate:.1f}",
            f"{net:.1f}",
            f"{run.limit:,.0f}",
            f"{run.emulator.requests / max(run.handled, 1):.4f}",
            run.tokens,
        ]
    ]
    if naive is not None:
        # The naive loop's limit: one message is its round trips plus its handler, in turn.
        per_request = _naive_round_trip(naive)
        per_message = naive.emulator.requests / max(naive.handled, 1) * per_request
        naive_limit = 1 / (per_message + _NAIVE_HANDLER_SECONDS)
        rows.append(
            [
                f"naive loop ({naive.passes} passes)",
                f"{naive.handled}/{naive.messages}",
                f"{naive.seconds:.2f}",
                f"{naive.rate:.1f}",
                "-",
                f"{naive_limit:,.0f}",
                f"{naive.emulator.requests / max(naive.handled, 1):.4f}",
                naive.tokens,
            ]
        )
    concurrency = args.concurrency or "default"
    print(
        f"{args.messages} messages, {args.mailboxes} mailbox(es), batch size {args.batch_size}, "
        f"added EWS latency {args.latency:g} ms, handler {run.handler} "
        f"{args.handler_latency:g} ms, handler_concurrency {concurrency} "
        f"({run.concurrency} in flight at most)\n"
    )
    headers = ["", "handled", "seconds", "msg/s", "msg/s net", "limit msg/s", "EWS req/msg"]
    print_table([*headers, "token req"], rows)
    print()
    print(f"ews-listener once: {_limit_text(run)}")
    print(f"daemon EWS requests per message: {_per_message(run.emulator, run.handled)}")
    if run.emulator.by_error:
        print(f"daemon EWS errors: {dict(run.emulator.by_error)}")
    print(f"daemon peak RSS {run.peak_rss_mb:.0f} MB (ru_maxrss)")
    if naive is not None:
        print(f"naive EWS requests per message: {_per_message(naive.emulator, naive.handled)}")
        print(
            "naive loop: limit = 1 / (req/msg x its measured round trip + handler), one "
            "message after the other"
        )
    print("\ngoals (issue 14, default settings):")
    for line in _goals(args, run, naive):
        print(f"  {line}")
    print("\nwhat limits these figures:")
    for line in _limits(run, fixed):
        print(f"  - {line}")
    if naive is not None:
        per_request = _naive_round_trip(naive) * 1000
        print(
            f"  - naive loop: {per_request:.1f} ms per round trip, "
            f"{naive.emulator.requests} round trips: latency-bound by design"
        )


def _naive_round_trip(naive: NaiveRun) -> float:
    """Seconds of one of the naive loop's round trips, as it saw them (its handler's time out)."""
    waiting = naive.seconds - naive.handled * _NAIVE_HANDLER_SECONDS
    return max(waiting, 0.0) / max(naive.emulator.requests, 1)


def _goals(args: argparse.Namespace, run: DaemonRun, naive: NaiveRun | None) -> list[str]:
    """The goals of issue 14 this run measures, each met or not."""
    lines = []
    ratio = run.rate / naive.rate if naive is not None and naive.rate else None
    plain = args.handler == "count" and not args.handler_latency
    if plain and args.latency == 0:
        lines.append(f"loopback >= 1,500 msg/s: {run.rate:,.0f}: {_met(run.rate >= 1500)}")
        if ratio is not None:
            lines.append(f"loopback >= 4x the naive loop: {ratio:.1f}x: {_met(ratio >= 4)}")
    if plain and args.latency >= 80 and ratio is not None:
        lines.append(
            f">= 20x the naive loop at +{args.latency:g} ms: {ratio:.1f}x: {_met(ratio >= 20)}"
        )
    if args.handler == "count" and args.handler_latency == 50 and args.mailboxes == 1:
        lines.append(
            f"50 ms handler, one mailbox >= 100 msg/s: {run.rate:.1f}: {_met(run.rate >= 100)}"
        )
    if args.handler in ("amqp", "nats", "redis_stream"):
        lines.append(
            f"{args.handler} >= 500 msg/s end to end with confirms: {run.rate:.0f}: "
            f"{_met(run.rate >= 500)}"
        )
    per_message = run.emulator.requests / max(run.handled, 1)
    if args.batch_size == 100:
        lines.append(
            f"<= 0.023 EWS requests per message at batch 100: {per_message:.4f}: "
            f"{_met(per_message <= 0.023)}"
        )
    if run.messages >= 5000:
        lines.append(
            f"peak RSS of once over {run.messages:,} messages < 250 MB: "
            f"{run.peak_rss_mb:.0f} MB: {_met(run.peak_rss_mb < 250)}"
        )
    return lines


def _grid_messages(args: argparse.Namespace, latency_ms: float, concurrency: int) -> int:
    """Messages for one grid point: about ``GRID_SECONDS`` at the handler's bound, at least 20
    (50 without --quick), at most ``--messages``."""
    seconds = GRID_SECONDS_QUICK if args.quick else GRID_SECONDS
    floor = 20 if args.quick else 50
    if not latency_ms:
        return int(args.messages)
    bound = concurrency / (latency_ms / 1000)
    return int(max(min(floor, args.messages), min(args.messages, bound * seconds)))


def _grid(
    emu: EmulatorProcess, root: Path, args: argparse.Namespace, target: Target, fixed: float
) -> int:
    """``once`` at each handler latency for each handler_concurrency; CSV, SVG, a table."""
    _, default_workers = listener_defaults()
    rows: list[dict[str, Any]] = []
    ok = True
    for concurrency in args.grid_concurrency:
        # A single mailbox: handler_workers caps it too; raised so the curve is concurrency's.
        workers = max(default_workers, concurrency)
        for latency in args.grid_latencies:
            target.latency = latency / 1000
            messages = _grid_messages(args, latency, concurrency)
            run = run_daemon_once(
                emu,
                root,
                messages=messages,
                batch_size=args.batch_size,
                mailboxes=1,
                tag=f"grid-c{concurrency}-{latency:g}ms".replace(".", "_"),
                mail=args.mail,
                target=target,
                handler_concurrency=concurrency,
                handler_workers=workers,
            )
            ok = ok and run.exit_code == 0 and run.handled == messages
            net = run.handled / max(run.seconds - fixed, 1e-6)
            rows.append(
                {
                    "handler_concurrency": concurrency,
                    "handler_workers": workers,
                    "handler_ms": latency,
                    "messages": run.handled,
                    "seconds": round(run.seconds, 3),
                    "messages_per_s": round(run.rate, 1),
                    "net_messages_per_s": round(net, 1),
                    "limit_messages_per_s": round(run.limit, 1),
                    "percent_of_limit": round(100 * run.rate / run.limit, 1),
                    "requests_per_message": round(run.emulator.requests / max(run.handled, 1), 4),
                    "daemon_cpu_s": round(run.cpu_seconds, 2),
                    "peak_rss_mb": round(run.peak_rss_mb, 1),
                }
            )
            print(
                f"  concurrency {concurrency:>3}, handler {latency:>5g} ms: {run.rate:8.1f} msg/s"
                f" (net {net:.1f}), limit {run.limit:,.0f}, {run.handled} messages"
            )
    args.results.mkdir(parents=True, exist_ok=True)
    name = f"handler_grid_{target.kind}" if target.kind != "count" else "handler_grid"
    target_csv = args.results / (f"{name}_quick.csv" if args.quick else f"{name}.csv")
    with target_csv.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print()
    columns = [
        "handler_concurrency",
        "handler_ms",
        "messages",
        "messages_per_s",
        "net_messages_per_s",
        "limit_messages_per_s",
        "percent_of_limit",
    ]
    print_table(columns, [[r[c] for c in columns] for r in rows])
    print(
        "\nlimit = 1 / (EWS req/msg x round trip + handler time / concurrency); "
        f"fixed cost of one once {fixed:.2f} s (net: without it)"
    )
    print(f"written: {target_csv}")
    series = []
    for n, concurrency in enumerate(args.grid_concurrency):
        mine = [r for r in rows if r["handler_concurrency"] == concurrency]
        series.append(
            Series(
                f"concurrency {concurrency}",
                [(r["handler_ms"], r["messages_per_s"]) for r in mine],
                color=n,
            )
        )
        series.append(
            Series(
                f"  limit, {concurrency}",
                [(r["handler_ms"], r["limit_messages_per_s"]) for r in mine],
                color=n,
                dashed=True,
                markers=False,
            )
        )
    svg = svg_line_chart(
        target_csv.with_suffix(".svg"),
        series,
        title=f"ews-listener once, one mailbox, {target.kind} handler: msg/s by handler latency",
        x_label="handler latency per message (ms)",
        y_label="messages / s (log scale), end to end",
        x_ticks=args.grid_latencies,
    )
    print(f"written: {svg}")
    return 0 if ok else 1


# --- Graph -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphPoint:
    """``once`` and the hand-written loop at one added latency."""

    latency: float  # ms per HTTP request
    fixed: float  # seconds of one ``once`` on an empty mailbox at that latency
    daemon: DaemonRun
    by_hand: NaiveRun | None


def _graph(args: argparse.Namespace, root: Path, emu: EmulatorProcess) -> int:
    assert emu.endpoints is not None
    print(
        f"scratch {root}; emulator pid {emu.pid}; Graph {emu.endpoints.graph_url}; "
        f"daemon: {' '.join(daemon_argv('once', Path('CONFIG'))[1:])} (source = graph)"
    )
    mix = ", ".join(f"{shape} {weight}%" for shape, weight in REALISTIC_MIX.items())
    print(f"mail: {args.mail}" + (f" ({mix})" if args.mail == "realistic" else "") + "\n")
    points: list[GraphPoint] = []
    for latency in args.latency:
        emu.set_graph_latency(latency / 1000)
        name = f"{latency:g}ms".replace(".", "_")
        fixed = _baseline(emu, root, "graph", tag=f"empty-{name}")
        run = run_daemon_once(
            emu,
            root,
            messages=args.messages,
            batch_size=args.batch_size,
            mailboxes=args.mailboxes,
            tag=f"graph-{name}",
            source="graph",
            mail=args.mail,
        )
        by_hand = None
        if not args.no_naive:
            slow = 100 if args.quick else GRAPH_SLOW_HAND_MESSAGES
            count = args.naive_messages or (
                args.messages if latency == 0 else min(args.messages, slow)
            )
            by_hand = run_graph_by_hand(
                emu,
                messages=max(count, args.mailboxes),
                mailboxes=args.mailboxes,
                tag=f"hand-{name}",
                mail=args.mail,
            )
        points.append(GraphPoint(latency, fixed, run, by_hand))
        print(
            f"  +{latency:g} ms: once {run.rate:.1f} msg/s"
            + (f", by hand {by_hand.rate:.1f} msg/s" if by_hand else "")
        )
    emu.set_graph_latency(0)
    _report_graph(args, points)
    ok = all(p.daemon.exit_code == 0 and p.daemon.handled == args.messages for p in points)
    return 0 if ok else 1


def _report_graph(args: argparse.Namespace, points: list[GraphPoint]) -> None:
    print(
        f"\n{args.messages} messages ({args.mail}), {args.mailboxes} mailbox(es), batch size "
        f"{args.batch_size}, delta page {_graph_page_limit()}; latency added per HTTP request\n"
    )
    rows: list[list[object]] = []
    for point in points:
        run = point.daemon
        net = run.handled / max(run.seconds - point.fixed, 1e-6)
        rows.append(
            [
                f"once, +{point.latency:g} ms",
                f"{run.handled}/{run.messages}",
                f"{run.seconds:.2f}",
                f"{run.rate:.1f}",
                f"{net:.1f}",
                f"{run.emulator.requests / max(run.handled, 1):.4f}",
                f"{run.emulator.calls / max(run.handled, 1):.3f}",
                run.tokens,
            ]
        )
        hand = point.by_hand
        if hand is not None:
            rows.append(
                [
                    f"by hand ({hand.passes} passes), +{point.latency:g} ms",
                    f"{hand.handled}/{hand.messages}",
                    f"{hand.seconds:.2f}",
                    f"{hand.rate:.1f}",
                    "-",
                    f"{hand.emulator.requests / max(hand.handled, 1):.4f}",
                    f"{hand.emulator.calls / max(hand.handled, 1):.3f}",
                    hand.tokens,
                ]
            )
    headers = ["", "handled", "seconds", "msg/s", "msg/s net", "HTTP req/msg", "calls/msg"]
    print_table([*headers, "token req"], rows)
    print(
        "\nHTTP req: round trips ($batch = 1); calls: every request Graph serves ($batch parts "
        "each, envelopes not), what its throttling counts"
    )
    for point in points:
        run = point.daemon
        print(f"\n+{point.latency:g} ms:")
        print(f"  once HTTP requests per message: {_per_message(run.emulator, run.handled)}")
        calls = ", ".join(f"{op} {n}" for op, n in run.emulator.calls_by_operation.most_common())
        print(f"  once Graph calls: {run.emulator.calls} ({calls})")
        if run.emulator.by_error:
            print(f"  once Graph errors: {dict(run.emulator.by_error)}")
        print(
            f"  once: fixed cost {point.fixed:.2f} s, daemon CPU {run.cpu_seconds:.1f} s of "
            f"{run.seconds:.1f} s wall, emulator CPU {run.emulator_cpu:.1f} s, "
            f"peak RSS {run.peak_rss_mb:.0f} MB"
        )
        if point.by_hand is not None:
            hand = point.by_hand
            print(
                f"  by hand HTTP requests per message: {_per_message(hand.emulator, hand.handled)}"
            )
            per_request = hand.seconds / max(hand.emulator.requests, 1) * 1000
            print(f"  by hand: {per_request:.1f} ms per round trip")
            ratio = run.rate / hand.rate if hand.rate else float("inf")
            print(f"  ratio once / by hand: {ratio:.1f}x end to end")
    first = points[0].daemon
    per_message = first.emulator.requests / max(first.handled, 1)
    print(
        f"\ngoal <= 0.12 Graph (HTTP) requests per message at default settings: {per_message:.4f}"
        f" at batch size {args.batch_size}: {'met' if per_message <= 0.12 else 'NOT met'}"
    )
    slow = [p for p in points if p.latency >= 80 and p.by_hand is not None and p.by_hand.rate]
    for point in slow:
        assert point.by_hand is not None
        ratio = point.daemon.rate / point.by_hand.rate
        print(
            f"goal >= 10x the hand-written loop at 80 ms: {ratio:.1f}x at +{point.latency:g} ms: "
            f"{'met' if ratio >= 10 else 'NOT met'}"
        )


def _graph_page_limit() -> int:
    from listener.sources.graph.source import DEFAULT_PAGE_LIMIT

    return DEFAULT_PAGE_LIMIT


if __name__ == "__main__":
    sys.exit(main())
