"""Shared helpers of the benchmarks: the emulator in its own process, configurations, measurements.

The emulator (token server + EWS endpoint, and with ``graph=True`` the Graph endpoint beside it on
the same mail store) runs in a child process started with ``spawn`` and is driven over a
``multiprocessing`` pipe, so the daemon under test, the naive loops and the emulator never share
a GIL: a figure measured here is the listener's, not the emulator's thread scheduling. The daemon
itself always runs as a subprocess (``ews-listener once|run``).

Added latency on Graph is one delay per HTTP request (:class:`_GraphRoundTrip`), not the Graph
emulator's ``latency`` fault: that fault fires for every part of a ``$batch`` (each part runs the
whole request pipeline), so it would charge a batch of 20 twenty round trips where the network
charges one. The same class counts the HTTP requests; the emulator's request log has a record
per ``$batch`` part as well, which is what Graph's throttling counts.

This file also holds the benchmark handler, :func:`count`, imported by the daemon as
``_harness:count``.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "GRAPH_DELTA",
    "GRAPH_SCOPE",
    "REALISTIC_MIX",
    "REPO",
    "TENANT",
    "EmulatorProcess",
    "EmulatorStats",
    "Endpoints",
    "ProcessSampler",
    "Series",
    "count",
    "daemon_argv",
    "daemon_env",
    "free_port",
    "make_messages",
    "make_realistic_messages",
    "print_table",
    "scrape_metrics",
    "scrape_metrics_or_none",
    "sleeping_count",
    "stamp",
    "svg_line_chart",
    "workdir",
    "write_config",
]

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: tests.configs lives beside the package

from tests.configs import emulated_credentials, table, toml_value  # noqa: E402 - after the path fix

if TYPE_CHECKING:
    from ews_listener_emulators.faults import FaultEngine

TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "22222222-bbbb-4ccc-8ddd-000000000001"
# A throw-away secret for the emulated tenant only; it reaches the daemon through the environment.
_SECRET_ENV = "BENCH_SECRET_BENCH"
CLIENT_SECRET = "bench-secret-not-real"
_COUNT_FILE_ENV = "BENCH_COUNT_FILE"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
#: The operation the Graph emulator logs for a delta round of a folder's messages.
GRAPH_DELTA = "user.mailFolder.message_delta"


# --- the emulator in a child process ---------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Where the emulated tenant answers, and the CA bundle that trusts it."""

    ews_url: str
    token_endpoint: str
    ca_file: Path
    graph_url: str | None = None  # the Graph service root, when the emulator serves Graph


@dataclass(frozen=True)
class EmulatorStats:
    """What the emulator saw since the last :meth:`EmulatorProcess.clear_log`."""

    by_operation: Counter[str]
    by_error: Counter[str]
    requests: int  # HTTP requests (round trips); a Graph $batch is one
    server_seconds: float  # sum of per-request handling time inside the emulator
    token_requests: int  # since the emulator started (the token server cannot be reset)
    cpu_seconds: float  # the emulator process's CPU time since it started
    mailboxes_seen: int  # distinct mailboxes that were sent a SyncFolderItems (Graph: a delta)
    # Graph only: every request the emulator served, $batch parts each on their own and the
    # $batch envelopes left out (what Graph's throttling counts); empty for EWS.
    calls_by_operation: Counter[str] = field(default_factory=Counter)

    @property
    def calls(self) -> int:
        return sum(self.calls_by_operation.values())


def _graph_round_trip() -> type:
    """The Graph emulator's handler with one added delay and one count per HTTP request.

    A subclass, not a fault rule: see the module docstring. The delay is slept once the request
    line and headers are read, before the emulator serves it (a WAN round trip). ``$batch``
    parts are served by another class (``graph.batch._Part``) and are neither delayed nor
    counted here.
    """
    from ews_listener_emulators.graph._handler import GraphHandler

    class _GraphRoundTrip(GraphHandler):
        delay = 0.0
        # (operation, mailbox, seconds served) per HTTP request
        served: ClassVar[list[tuple[str, str, float]]] = []
        lock = threading.Lock()

        def _round_trip(self, serve: Any) -> None:
            if self.delay:
                time.sleep(self.delay)
            started = time.perf_counter()
            serve()
            seconds = time.perf_counter() - started
            record = getattr(self, "_record", {})  # what the emulator logged for it
            entry = (record.get("operation") or "?", record.get("mailbox") or "", seconds)
            with self.lock:
                self.served.append(entry)

        def do_GET(self) -> None:
            self._round_trip(super().do_GET)

        def do_POST(self) -> None:
            self._round_trip(super().do_POST)

        def do_PATCH(self) -> None:
            self._round_trip(super().do_PATCH)

        def do_PUT(self) -> None:
            self._round_trip(super().do_PUT)

        def do_DELETE(self) -> None:
            self._round_trip(super().do_DELETE)

    return _GraphRoundTrip


def set_latency(faults: FaultEngine, seconds: float) -> None:
    """Every EWS request waits ``seconds`` before it is answered (a WAN round trip): the figure
    replaces any earlier one (0: none); other fault rules stay."""
    for rule in faults.rules():
        if rule.kind == "latency":
            faults.remove(rule.rule_id)
    if seconds > 0:
        faults.add("latency", probability=1.0, delay=seconds)


def _serve(
    conn: Connection, directory: str, token_lifetime: float, schema_dir: str | None, graph_on: bool
) -> None:
    """The child: start the servers, answer commands until ``stop``."""
    # Imported here so the parent never loads the emulator (nor lxml's schema machinery).
    from ews_listener_emulators.ca import EmulatorCA
    from ews_listener_emulators.server import EwsEmulator
    from ews_listener_emulators.token_server import TokenServer

    ca = EmulatorCA(Path(directory) / "ca")
    tokens = TokenServer(ca=ca, token_lifetime=token_lifetime)
    tokens.add_tenant(TENANT)
    tokens.register_app(TENANT, CLIENT_ID, secret=CLIENT_SECRET)
    tokens.start()
    ews = EwsEmulator(tokens, ca, schema_dir=schema_dir, request_log_size=2_000_000)
    ews.start()
    graph, round_trip = None, None
    if graph_on:
        from ews_listener_emulators.graph.server import GraphEmulator

        # Validation as for EWS: only with an explicit schema_dir, not from $GRAPH_SCHEMA_DIR.
        os.environ.pop("GRAPH_SCHEMA_DIR", None)
        os.environ.pop("GRAPH_SAMPLES_DIR", None)
        graph = GraphEmulator.beside(
            ews, tokens, ca, schema_dir=schema_dir, request_log_size=2_000_000
        )
        round_trip = _graph_round_trip()
        # LoopbackServer takes its handler class at construction only; swap it before start().
        graph.http_server._handler_class = round_trip
        graph.start()
    conn.send((ews.url, tokens.token_endpoint(TENANT), str(ca.ca_file), graph and graph.url))
    try:
        while True:
            command, args = conn.recv()
            if command == "stop":
                conn.send(None)
                return
            if command == "add_mailboxes":
                for address in args:
                    ews.add_mailbox(address)
                conn.send(len(args))
            elif command == "deliver":
                address, mimes = args
                conn.send([ews.deliver(address, raw) for raw in mimes])
            elif command == "deliver_timed":
                # (address, mime) pairs, each filed with the wall-clock time it was filed at.
                filed = []
                for address, raw in args:
                    ews.deliver(address, raw)
                    filed.append(time.time())
                conn.send(filed)
            elif command == "notification_latency":
                if graph is None:
                    conn.send(RuntimeError("the emulator serves no Graph endpoint"))
                    continue
                # Graph → receiver crosses the same WAN: each notification POST waits this long.
                subs, delay = graph.subscriptions, float(args)
                post = getattr(subs, "_bench_post", None) or subs._post
                subs._bench_post = post  # type: ignore[attr-defined]

                def delayed(*a: Any, _post: Any = post, _delay: float = delay) -> Any:
                    time.sleep(_delay)
                    return _post(*a)

                subs._post = delayed if delay > 0 else post  # type: ignore[method-assign,assignment]
                conn.send(None)
            elif command == "deliveries":
                if graph is None:
                    conn.send(RuntimeError("the emulator serves no Graph endpoint"))
                    continue
                done = [d for d in graph.subscriptions.deliveries if d.kind == "notification"]
                conn.send((len(done), sum(1 for d in done if d.status and d.status < 300)))
            elif command == "unread":
                conn.send(sum(1 for item in ews.items(args, "inbox") if not item.is_read))
            elif command == "latency":
                if ews.faults is None:
                    conn.send(RuntimeError("the emulator has no fault engine"))
                    continue
                set_latency(ews.faults, args)
                conn.send(None)
            elif command == "graph_latency":
                if round_trip is None:
                    conn.send(RuntimeError("the emulator serves no Graph endpoint"))
                    continue
                round_trip.delay = args
                conn.send(None)
            elif command == "streaming":
                from ews_listener_emulators.ops import notifications

                minute, keepalive = args
                notifications.configure(ews, minute=minute, keepalive=keepalive)
                conn.send(None)
            elif command == "streams":
                from ews_listener_emulators.ops import notifications

                registry = notifications.subscriptions(ews)
                conn.send(sum(registry.streams(address) for address in args))
            elif command == "clear_log":
                ews.request_log.clear()
                if graph is not None and round_trip is not None:
                    graph.request_log.clear()
                    with round_trip.lock:
                        round_trip.served.clear()
                conn.send(None)
            elif command == "graph_stats":
                if graph is None or round_trip is None:
                    conn.send(RuntimeError("the emulator serves no Graph endpoint"))
                    continue
                with round_trip.lock:
                    served = list(round_trip.served)
                records = list(graph.request_log)
                conn.send(
                    EmulatorStats(
                        by_operation=Counter(op for op, _, _ in served),
                        by_error=Counter(r.error_code for r in records if r.error_code),
                        requests=len(served),
                        server_seconds=sum(seconds for _, _, seconds in served),
                        token_requests=tokens.request_count(),
                        cpu_seconds=time.process_time(),
                        mailboxes_seen=len({m for op, m, _ in served if op == GRAPH_DELTA}),
                        calls_by_operation=Counter(
                            r.operation or "?" for r in records if r.operation != "$batch"
                        ),
                    )
                )
            elif command == "stats":
                log = list(ews.request_log)
                conn.send(
                    EmulatorStats(
                        by_operation=Counter(r.operation or "?" for r in log),
                        by_error=Counter(r.error_code for r in log if r.error_code),
                        requests=len(log),
                        server_seconds=sum(r.duration for r in log),
                        token_requests=tokens.request_count(),
                        cpu_seconds=time.process_time(),
                        mailboxes_seen=len(
                            {r.mailbox for r in log if r.operation == "SyncFolderItems"}
                        ),
                    )
                )
            else:
                conn.send(ValueError(f"unknown command {command!r}"))
    finally:
        if graph is not None:
            graph.stop()
        ews.stop()
        tokens.stop()


class EmulatorProcess:
    """The token server and the EWS emulator (and Graph, ``graph=True``) in a ``spawn``-ed child
    process."""

    def __init__(
        self,
        directory: Path,
        *,
        token_lifetime: float = 3600,
        schema_dir: str | None = None,
        graph: bool = False,
    ) -> None:
        self._directory = directory
        self._token_lifetime = token_lifetime
        self._schema_dir = schema_dir
        self._graph = graph
        self._conn: Connection | None = None
        self._process: Any = None
        self.endpoints: Endpoints | None = None

    def start(self, timeout: float = 60) -> Endpoints:
        """Start the child and wait until both servers listen."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(child, str(self._directory), self._token_lifetime, self._schema_dir, self._graph),
            name="ews-emulator",
            daemon=True,
        )
        self._process.start()
        child.close()
        if not parent.poll(timeout):
            self._process.kill()
            raise RuntimeError(f"the emulator did not start within {timeout} s")
        ews_url, token_endpoint, ca_file, graph_url = parent.recv()
        self._conn = parent
        self.endpoints = Endpoints(ews_url, token_endpoint, Path(ca_file), graph_url)
        return self.endpoints

    @property
    def pid(self) -> int:
        return int(self._process.pid)

    def _call(self, command: str, args: object = None) -> Any:
        assert self._conn is not None, "start() first"
        self._conn.send((command, args))
        answer = self._conn.recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def add_mailboxes(self, addresses: Sequence[str]) -> None:
        self._call("add_mailboxes", list(addresses))

    def deliver(self, address: str, mimes: Sequence[bytes], *, chunk: int = 500) -> int:
        """File ``mimes`` in the inbox of ``address`` as new mail; returns how many."""
        done = 0
        for start in range(0, len(mimes), chunk):
            done += len(self._call("deliver", (address, list(mimes[start : start + chunk]))))
        return done

    def deliver_timed(self, pairs: Sequence[tuple[str, bytes]]) -> list[float]:
        """File each (address, mime) as new mail; the wall-clock time each was filed at."""
        times: list[float] = self._call("deliver_timed", list(pairs))
        return times

    def set_notification_latency(self, seconds: float) -> None:
        """Delay every change-notification POST from Graph to its receiver by ``seconds``."""
        self._call("notification_latency", seconds)

    def notification_deliveries(self) -> tuple[int, int]:
        """(notification POSTs made, of them answered 2xx) since the emulator started."""
        made, ok = self._call("deliveries")
        return int(made), int(ok)

    def unread(self, address: str) -> int:
        return int(self._call("unread", address))

    def set_latency(self, seconds: float) -> None:
        """Delay every EWS answer by ``seconds`` from now on, instead of any earlier figure (0:
        none; the emulator's fault engine)."""
        self._call("latency", seconds)

    def set_graph_latency(self, seconds: float) -> None:
        """Delay every HTTP request to Graph by ``seconds`` from now on (0: none); a ``$batch``
        waits once (``_GraphRoundTrip``)."""
        self._call("graph_latency", seconds)

    def set_streaming(self, minute: float = 60.0, keepalive: float | None = None) -> None:
        """The EWS emulator's protocol minute and streaming keep-alive (seconds)."""
        self._call("streaming", (minute, keepalive))

    def streams(self, anchors: Sequence[str]) -> int:
        """GetStreamingEvents connections open now, impersonating one of ``anchors``."""
        return int(self._call("streams", list(anchors)))

    def clear_log(self) -> None:
        self._call("clear_log")

    def stats(self, source: str = "ews") -> EmulatorStats:
        """What the ``source`` ("ews" or "graph") endpoint saw since :meth:`clear_log`."""
        stats: EmulatorStats = self._call("graph_stats" if source == "graph" else "stats")
        return stats

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, EOFError):
                self._call("stop")
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- mail, configuration, the daemon's command line ------------------------------------------


def make_messages(count: int, to: str, *, tag: str = "m") -> list[bytes]:
    """``count`` small plain-text messages with unique Message-IDs (a typical order mail)."""
    stamp = time.time_ns()
    return [
        (
            f"From: Customer {n} <customer{n % 97}@example.net>\r\nTo: {to}\r\n"
            f"Subject: Order {n}\r\nMessage-ID: <{tag}.{n}.{stamp}@example.net>\r\n"
            "Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"Please ship order {n}: 3 x widget, 1 x gadget.\r\n"
        ).encode()
        for n in range(count)
    ]


#: The realistic mix (weights of ``ews_listener_emulators.feed.SHAPES``): half HTML (a newsletter,
#: an HTML mail with an inline image), half plain text, three in ten with attachments (a PDF, a
#: CSV, a forwarded message, the inline image).
REALISTIC_MIX = {
    "order_text": 30,
    "newsletter_html": 40,
    "invoice_pdf": 10,
    "inline_image": 10,
    "report_csv": 5,
    "forwarded": 5,
}


def make_realistic_messages(count: int, to: str, *, seed: int) -> list[bytes]:
    """``count`` messages of ``REALISTIC_MIX``'s shapes from the emulator's ``SampleFactory``
    (non-ASCII names and subjects, HTML with a text alternative, attachments); seeded."""
    from ews_listener_emulators.feed import SampleFactory

    factory = SampleFactory(seed, domain="bench.example")
    shapes = random.Random(seed).choices(
        list(REALISTIC_MIX), weights=list(REALISTIC_MIX.values()), k=count
    )
    return [factory.message(to, shape) for shape in shapes]


def write_config(
    path: Path,
    endpoints: Endpoints,
    addresses: Iterable[str],
    *,
    state_url: str,
    batch_size: int = 100,
    interval: float = 60,
    jitter: float = 0,
    start_from: str = "all",
    max_workers: int = 8,
    max_connections: int = 4,
    log_level: str = "warning",
    source: str = "ews",
    handler: Mapping[str, object] | None = None,
    handler_concurrency: int | None = None,
    handler_workers: int | None = None,
    mailbox_options: Mapping[str, object] | None = None,
    extra: Sequence[str] = (),
) -> Path:
    """A configuration: one credential, one mailbox per address, the counting handler.

    ``source = "graph"``: the mailboxes read Microsoft Graph at ``endpoints.graph_url`` and the
    credential asks for Graph's scope; anything else as for EWS. ``handler``: the
    ``[handlers.count]`` table instead of the counting python handler. ``handler_concurrency``
    and ``handler_workers``: written only when given (None: the listener's defaults).
    """
    graph: dict[str, object] = {}
    if source == "graph":
        assert endpoints.graph_url, "EmulatorProcess(graph=True) serves Graph"
        graph = {"scopes": GRAPH_SCOPE}
    lines = emulated_credentials(
        {"bench": (CLIENT_ID, CLIENT_SECRET)},
        token_endpoint=endpoints.token_endpoint,
        ca_file=endpoints.ca_file,
        env_prefix="BENCH_SECRET_",
        max_connections=max_connections,
        **graph,
    )
    for n, address in enumerate(addresses):
        options: dict[str, object] = {
            "address": address,
            "credential": "bench",
            "endpoint": endpoints.ews_url,
            "ca_bundle": str(endpoints.ca_file),
            "interval": interval,
            "start_from": start_from,
            "batch_size": batch_size,
            "routes": [{"handlers": ["count"]}],
        }
        if handler_concurrency is not None:
            options["handler_concurrency"] = handler_concurrency
        if source == "graph":
            options = {"source": "graph", **options, "endpoint": endpoints.graph_url}
        options.update(mailbox_options or {})
        lines += table(f"mailboxes.box{n}", options)
    lines += table("handlers.count", handler or {"type": "python", "target": "_harness:count"})
    lines += [
        "[state]",
        f"url = {toml_value(state_url)}",
        "",
        "[service]",
        f"jitter = {toml_value(jitter)}",
        f"max_workers = {max_workers}",
        *([f"handler_workers = {handler_workers}"] if handler_workers is not None else []),
        f"log_level = {toml_value(log_level)}",
        'log_format = "json"',
        "shutdown_grace = 10",
        "watchdog = false",
        "",
        *extra,
    ]
    path.write_text("\n".join(lines))
    return path


def daemon_argv(command: str, config: Path, *extra: str, profile: Path | None = None) -> list[str]:
    """``ews-listener COMMAND --config CONFIG`` as a subprocess command line (under a CPU profile
    written to ``profile``: ``listener_runner``)."""
    return [sys.executable, *listener_runner(profile), command, "--config", str(config), *extra]


def listener_runner(profile: Path | None = None) -> list[str]:
    """What follows the interpreter to run ``ews-listener``: ``-m listener``, or with a
    ``profile`` path ``_profiled.py`` (a CPU profile of every thread, written there at exit;
    SIGUSR1 starts its window)."""
    if profile is None:
        return ["-m", "listener"]
    profile.parent.mkdir(parents=True, exist_ok=True)
    return [str(BENCH_DIR / "_profiled.py"), str(profile)]


def daemon_env(
    count_file: Path | None = None, *, stamp_file: Path | None = None, **extra: str
) -> dict[str, str]:
    """The daemon's environment: the secret, the import path of the handler, its count file."""
    env = dict(os.environ)
    env.update(extra)
    if stamp_file is not None:
        env[_STAMP_FILE_ENV] = str(stamp_file)
    env[_SECRET_ENV] = CLIENT_SECRET
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(BENCH_DIR), *filter(None, [env.get("PYTHONPATH")])]
    )
    if count_file is not None:
        env[_COUNT_FILE_ENV] = str(count_file)
    return env


@contextlib.contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    """A scratch directory for CA files, configurations and state databases."""
    path = Path(tempfile.mkdtemp(prefix="ews-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


# --- the benchmark handler (runs inside the daemon) ------------------------------------------

_handled = 0
_handled_lock = threading.Lock()


def _write_count() -> None:
    target = os.environ.get(_COUNT_FILE_ENV)
    if target:
        Path(target).write_text(str(_handled))


def count(message: Any) -> None:
    """The trivial handler: count the message (written to ``$BENCH_COUNT_FILE`` at exit)."""
    global _handled  # noqa: PLW0603 - one counter per daemon process is the point
    with _handled_lock:
        if _handled == 0:
            atexit.register(_write_count)
        _handled += 1


_STAMP_FILE_ENV = "BENCH_STAMP_FILE"
_stamp_lock = threading.Lock()


def stamp(message: Any) -> None:
    """A handler that notes when it started, per Message-ID (``$BENCH_STAMP_FILE``, one
    ``message-id<TAB>unix time`` line each), for delivery → handler latency."""
    started = time.time()
    line = f"{message.internet_message_id}\t{started:.6f}\n"
    with _stamp_lock, open(os.environ[_STAMP_FILE_ENV], "a") as out:
        out.write(line)


def sleeping_count(seconds: float) -> Any:
    """A factory (``options = { seconds = … }``): a handler that sleeps ``seconds`` (a handler
    waiting on a slow service), then counts the message as :func:`count` does."""

    def handle(message: Any) -> None:
        time.sleep(seconds)
        count(message)

    return handle


# --- measuring the daemon --------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_sample(pid: int) -> tuple[float, float]:
    """(RSS in MB, CPU seconds) of ``pid`` from /proc (psutil is not a dependency)."""
    rss_kb = 0.0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = float(line.split()[1])
                break
    return rss_kb / 1024, cpu_seconds(pid)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        # Fields after the ")" of the command name; utime and stime are fields 14 and 15.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def add_profile_options(parser: Any, subject: str, window: str, name: str) -> None:
    """``--profile DIR`` and ``--top N``: ``subject`` runs under ``_profiled.py`` over ``window``,
    its profile written to ``DIR/<name>.pstats``."""
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help=f"{subject} under a CPU profile of all its threads (benchmarks/_profiled.py) "
        f"{window}, written to DIR/{name}.pstats; the top is printed",
    )
    parser.add_argument("--top", type=int, default=30, help="--profile: functions printed")


def print_profile(path: Path, name: str, top: int, per: float, unit: str = "poll") -> None:
    """The window's CPU profile in ``path``: its most costly functions, own and cumulative
    (profiling doubles CPU time roughly: the shares say where it goes, not the seconds)."""
    import pstats  # only with --profile

    if not path.exists():
        print(f"{name}: no profile written (see {path.parent})")
        return
    stats = pstats.Stats(str(path))
    total = sum(tt for _, _, tt, _, _ in stats.stats.values())  # type: ignore[attr-defined]
    print(
        f"{name}: profiled CPU {total:.1f} s over the window "
        f"({1000 * total / per if per else float('nan'):.2f} ms per {unit}, profiled)"
    )
    for key in ("tottime", "cumulative"):
        stats.sort_stats(key).print_stats(top)


@dataclass
class ProcessSampler:
    """Samples a process's RSS and CPU time every ``period`` seconds in a background thread."""

    pid: int
    period: float = 1.0
    samples: list[tuple[float, float, float]] = field(default_factory=list)  # (t, MB, cpu s)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> ProcessSampler:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.period):
                return

    def sample(self) -> tuple[float, float, float] | None:
        try:
            rss, cpu = _proc_sample(self.pid)
        except (OSError, IndexError, ValueError):
            return None  # the process is gone
        point = (time.monotonic(), rss, cpu)
        self.samples.append(point)
        return point

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def window(self, since: float) -> list[tuple[float, float, float]]:
        return [s for s in self.samples if s[0] >= since]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a daemon's HTTP server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_metrics_or_none(port: int) -> dict[str, float]:
    """``scrape_metrics``, or ``{}`` while the daemon does not answer (starting, stopped)."""
    try:
        return scrape_metrics(port)
    except OSError:
        return {}


def scrape_metrics(port: int, timeout: float = 10) -> dict[str, float]:
    """The daemon's ``/metrics``, summed per metric name over labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        with contextlib.suppress(ValueError):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain aligned table on stdout."""
    text = [[str(h) for h in headers], *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    for n, row in enumerate(text):
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


# --- an SVG line chart (no plotting dependency) ----------------------------------------------

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class Series:
    """One line of :func:`svg_line_chart`: its legend label, (x, y) points and look."""

    label: str
    points: Sequence[tuple[float, float]]
    color: int = 0  # index into the palette
    dashed: bool = False  # a bound or a reference, not a measurement
    markers: bool = True


def _ticks_log(low: float, high: float) -> list[float]:
    import math

    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks


def svg_line_chart(
    path: Path,
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_ticks: Sequence[float],
    log_y: bool = True,
    width: int = 720,
    height: int = 440,
) -> Path:
    """Write a line chart with axes, grid and legend as a standalone SVG file (plain text, so the
    figure diffs and needs nothing installed). ``log_y``: a logarithmic y axis (rates that span
    decades). Points with y <= 0 are left out on a log axis."""
    import math
    from html import escape

    left, right, top, bottom = 70, 190, 40, 55
    plot_w, plot_h = width - left - right, height - top - bottom
    ys = [y for s in series for _, y in s.points if y > 0 or not log_y]
    x_low, x_high = min(x_ticks), max(x_ticks)
    if log_y:
        y_low = 10 ** math.floor(math.log10(min(ys)))
        y_high = 10 ** math.ceil(math.log10(max(ys)))
        y_ticks = _ticks_log(y_low, y_high)

        def fy(y: float) -> float:
            span = math.log10(y_high) - math.log10(y_low)
            return top + plot_h * (1 - (math.log10(y) - math.log10(y_low)) / span)
    else:
        y_low, y_high = 0.0, max(ys) * 1.1
        step = 10 ** math.floor(math.log10(y_high / 5))
        y_ticks = [n * step for n in range(int(y_high / step) + 1)]

        def fy(y: float) -> float:
            return top + plot_h * (1 - (y - y_low) / (y_high - y_low))

    def fx(x: float) -> float:
        return left + plot_w * (x - x_low) / ((x_high - x_low) or 1)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left + plot_w / 2}" y="22" text-anchor="middle" font-size="14">'
        f"{escape(title)}</text>",
    ]
    for y in y_ticks:
        py = fy(y)
        out.append(
            f'<line x1="{left}" y1="{py:.1f}" x2="{left + plot_w}" y2="{py:.1f}" stroke="#ddd"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{y:,.0f}</text>'
            if y >= 1
            else f'<text x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{y:g}</text>'
        )
    for x in x_ticks:
        px = fx(x)
        out.append(
            f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{top + plot_h}" stroke="#eee"/>'
        )
        out.append(f'<text x="{px:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{x:g}</text>')
    out += [
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="black"/>',
        f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text transform="translate(18 {top + plot_h / 2}) rotate(-90)" text-anchor="middle">'
        f"{escape(y_label)}</text>",
    ]
    for n, s in enumerate(series):
        color = _PALETTE[s.color % len(_PALETTE)]
        points = [(fx(x), fy(y)) for x, y in s.points if y > 0 or not log_y]
        dash = ' stroke-dasharray="5 4"' if s.dashed else ""
        if points:
            line = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(
                f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"{dash}/>'
            )
        if s.markers:
            out += [
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}"/>' for px, py in points
            ]
        ly = top + 10 + 20 * n
        lx = left + plot_w + 15
        out.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 28}" y2="{ly}" stroke="{color}" '
            f'stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{lx + 34}" y="{ly + 4}">{escape(s.label)}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")
    return path
