"""Delivery → handler start: polling against push notifications (issue 15).

Usage::

    .venv/bin/python benchmarks/latency.py [--modes polling,webhook,streaming] [--mailboxes 10]
        [--latency 0 80] [--interval 60] [--rate 1] [--duration 120] [--burst 0] [--idle 120]
        [--max-connections 4] [--max-workers 8] [--quick] [--profile DIR [--top 30]]

For each mode and added latency, one ``ews-listener run`` (a subprocess) watches ``--mailboxes``
mailboxes of the emulator (its own ``spawn``-ed process), Graph or EWS by mode. Mail is filed at
``--rate`` messages a second, round-robin over the mailboxes, for ``--duration`` seconds (``--burst
N`` files N at once every ten seconds instead); the handler (``_harness:stamp``) notes when it
started for each Message-ID, and the emulator when it filed it. Printed per run: delivery → handler
start p50 / p95 / p99 / max, requests to the mode's endpoint per message (the delivery window; an
EWS ``GetStreamingEvents`` counts once per connection, not per envelope), and requests per idle
mailbox-minute (``--idle`` seconds with no mail afterwards, first poll and subscription set-up left
out).

Modes (a mode is a row of ``MODES``: the mailboxes' source and what wakes their polls, so EWS
streaming is one more row):

- ``polling``: ``notifications = "off"``, polled every ``--interval`` seconds (60: the default).
- ``webhook``: Graph change notifications to the daemon's ``/notifications/graph``
  (``notifications = "webhook"``), the same interval as the safety net, stretched to
  ``healthy_interval`` (300 s) while the subscription is connected.
- ``streaming``: EWS mailboxes with streaming notifications (``notifications = "streaming"``),
  one ``GetStreamingEvents`` connection per credential for all of them, the same safety net.
- ``polling-ews``: EWS mailboxes polled every ``--interval`` seconds (the EWS baseline).

Added latency (``--latency MS``): every HTTP request from the daemon to Graph waits MS before the
emulator serves it (``_harness._GraphRoundTrip``), and so does every notification POST from Graph
to the daemon (both cross the same WAN); for EWS, every answer of the EWS endpoint.

CPU per poll (the daemon's and the emulator's, from /proc): each process's CPU time from the
start of delivery until every message was handed over, over the polls of that window. Both are
single-interpreter Python processes, so a burst of N polls takes at least N times either figure
of one core. ``--profile DIR`` runs each daemon under ``_profiled.py`` (every thread's CPU
profile) from delivery to its exit and prints the top; profiling slows it several times over, so
a profiled run's latencies mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    EmulatorProcess,
    Series,
    add_profile_options,
    cpu_seconds,
    daemon_argv,
    daemon_env,
    free_port,
    make_messages,
    print_profile,
    print_table,
    scrape_metrics_or_none,
    svg_line_chart,
    workdir,
    write_config,
)

__all__ = ["MODES", "Mode", "main"]

_POLLS = "ews_listener_polls_total"
_EVENTS = "ews_listener_notification_events_total"
_WAITING = "ews_listener_polls_waiting"


@dataclass(frozen=True)
class Mode:
    """How the mailboxes of one run are configured."""

    source: str  # "graph" or "ews"
    notifications: str  # the mailboxes' ``notifications``
    needs_receiver: bool  # Graph posts to the daemon: http_port and [notifications.graph]


MODES = {
    "polling": Mode("graph", "off", needs_receiver=False),
    "webhook": Mode("graph", "webhook", needs_receiver=True),
    "streaming": Mode("ews", "streaming", needs_receiver=False),
    "polling-ews": Mode("ews", "off", needs_receiver=False),
}


def _modes(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    return names


def _connected(port: int) -> int:
    """Mailboxes whose notification channel is connected (from the daemon's ``/metrics``)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return 0
    return sum(
        1
        for line in text.splitlines()
        if line.startswith("ews_listener_notification_channel_state{")
        and 'state="connected"' in line
        and line.endswith(" 1.0")
    )


def _settle(port: int, timeout: float) -> bool:
    """Wait until no poll waits for a worker and none ended for a second (push modes: with a
    connected channel nothing polls unasked)."""
    last: list[float] = []

    def quiet() -> bool:
        metrics = scrape_metrics_or_none(port)
        polls = metrics.get(_POLLS, -1.0)
        still = bool(last) and polls == last[-1] and metrics.get(_WAITING, 0.0) == 0
        last.append(polls)
        return still

    return _wait(quiet, timeout, period=1.0)


def _wait(predicate: object, timeout: float, period: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(period)
    return False


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _message_id(mime: bytes) -> str:
    for line in mime.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise ValueError("no Message-ID")


@dataclass
class Run:
    mode: str
    latency_ms: float
    messages: int
    handed: int
    latencies: list[float]
    requests_per_message: float
    idle_requests_per_mailbox_minute: float
    polls: float
    notifications: int
    exit_code: int
    daemon_cpu: float  # CPU seconds over the delivery window (until every hand-over)
    emulator_cpu: float
    busy_polls: float  # polls over the delivery window


def run_one(args: argparse.Namespace, mode_name: str, latency_ms: float, root: Path) -> Run:
    mode = MODES[mode_name]
    with EmulatorProcess(root, graph=True) as emu:
        assert emu.endpoints is not None
        addresses = [f"lat-{mode_name}-{n}@contoso.com" for n in range(args.mailboxes)]
        emu.add_mailboxes(addresses)
        if mode.source == "ews":
            # Exchange's minute; keep-alives every 30 s as Exchange sends them.
            emu.set_streaming(minute=60.0, keepalive=30.0)
        port = free_port()
        extra: list[str] = [f"http_port = {port}", ""]
        options: dict[str, object] = {"notifications": mode.notifications}
        if mode.notifications != "off":
            extra += [
                "[notifications]",
                f"debounce = {args.debounce}",
                f"healthy_interval = {args.healthy_interval}",
                "",
            ]
        if mode.needs_receiver:
            extra += [
                "[notifications.graph]",
                f'public_url = "http://127.0.0.1:{port}/notifications/graph"',
                'client_state = { source = "env", name = "BENCH_CLIENT_STATE" }',
                "",
            ]
        config = write_config(
            root / f"{mode_name}-{latency_ms:g}.toml",
            emu.endpoints,
            addresses,
            state_url=f"sqlite:///{root / f'{mode_name}-{latency_ms:g}.db'}",
            interval=args.interval,
            jitter=args.interval,  # first polls spread over the interval, as in production
            start_from="new",
            source=mode.source,
            handler={"type": "python", "target": "_harness:stamp"},
            max_workers=args.max_workers,
            max_connections=args.max_connections,
            mailbox_options=options,
            extra=extra,
        )
        stamps = root / f"{mode_name}-{latency_ms:g}.stamps"
        stamps.touch()
        env = daemon_env(stamp_file=stamps, BENCH_CLIENT_STATE="bench-client-state-0123456789")
        log_path = root / f"{mode_name}-{latency_ms:g}.log"
        profile = _profile_path(args, mode_name, latency_ms) if args.profile else None
        argv = daemon_argv("run", config, profile=profile)
        with log_path.open("w") as log:
            daemon = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                return _measure(args, mode_name, latency_ms, emu, daemon, port, stamps, addresses)
            finally:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()


def _measure(
    args: argparse.Namespace,
    mode_name: str,
    latency_ms: float,
    emu: EmulatorProcess,
    daemon: subprocess.Popen[bytes],
    port: int,
    stamps: Path,
    addresses: list[str],
) -> Run:
    n = len(addresses)
    mode = MODES[mode_name]
    if args.startup and mode.notifications != "off":
        # A restart while mail flows: deliver once every channel is connected, the start-up's
        # first and catch-up polls still queued.
        ready = _wait(
            lambda: daemon.poll() is not None or _connected(port) >= n,
            args.interval + 60 + n * 0.3,
        )
    else:
        # Warm-up: every mailbox's first poll (the delta round begins) and, with push, its
        # channel, then the start-up's queue of polls drained (``polls_waiting`` 0 and no poll
        # for a second: the catch-up polls that follow the subscriptions are done), so that
        # what follows measures the steady state, not the start-up.
        ready = _wait(
            lambda: daemon.poll() is not None or scrape_metrics_or_none(port).get(_POLLS, 0) >= n,
            args.interval + 60 + n * 0.3,  # an EWS mailbox's first poll is 4 requests, an Account
        )
        if mode.notifications != "off":
            ready = ready and _wait(lambda: _connected(port) >= n, 60 + n / 10)
            ready = ready and _settle(port, 60 + n / 10)
    if daemon.poll() is not None or not ready:
        raise RuntimeError(f"{mode_name}: the daemon did not warm up (exit {daemon.poll()})")
    if mode.source == "graph":
        emu.set_graph_latency(latency_ms / 1000)
        emu.set_notification_latency(latency_ms / 1000)
    else:
        emu.set_latency(latency_ms / 1000)
    emu.clear_log()
    polls_before = scrape_metrics_or_none(port).get(_POLLS, 0)
    notified_before = emu.notification_deliveries()[1]
    if args.profile:
        daemon.send_signal(signal.SIGUSR1)  # the profile's window: delivery until the end
    cpu_before = (cpu_seconds(daemon.pid), cpu_seconds(emu.pid))

    # Delivery: a steady rate, or bursts every ten seconds.
    filed: dict[str, float] = {}
    started = time.monotonic()
    sent = 0
    batches = 0
    while time.monotonic() - started < args.duration:
        if args.burst:
            size, period = args.burst, 10.0
        else:
            size, period = 1, 1.0 / args.rate
        pairs = []
        for _ in range(size):
            address = addresses[sent % n]
            [mime] = make_messages(1, address, tag=f"{mode_name}{latency_ms:g}.{sent}")
            pairs.append((address, mime))
            sent += 1
        for (_, mime), at in zip(pairs, emu.deliver_timed(pairs), strict=True):
            filed[_message_id(mime)] = at
        batches += 1
        time.sleep(max(0.0, started + batches * period - time.monotonic()))
    # Every message handed over: within one interval (polling) plus a margin.
    _wait(lambda: _count(stamps) >= sent, args.interval + 60, period=0.5)
    busy = emu.stats(mode.source)
    cpu_after = (cpu_seconds(daemon.pid), cpu_seconds(emu.pid))
    busy_polls = scrape_metrics_or_none(port).get(_POLLS, 0) - polls_before

    # Idle: no mail; what the mailboxes cost per minute (polls, renewals).
    emu.clear_log()
    time.sleep(args.idle)
    idle = emu.stats(mode.source)
    polls = scrape_metrics_or_none(port).get(_POLLS, 0) - polls_before
    notified = emu.notification_deliveries()[1] - notified_before
    if mode.source == "ews":
        notified = int(scrape_metrics_or_none(port).get(_EVENTS, 0))

    daemon.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        daemon.wait(60)
    started_at = _read(stamps)
    latencies = [started_at[m] - t for m, t in filed.items() if m in started_at]
    return Run(
        mode=mode_name,
        latency_ms=latency_ms,
        messages=sent,
        handed=len(latencies),
        latencies=latencies,
        requests_per_message=busy.requests / sent if sent else float("nan"),
        idle_requests_per_mailbox_minute=idle.requests / (n * args.idle / 60),
        polls=polls,
        notifications=notified,
        exit_code=daemon.returncode if daemon.returncode is not None else -1,
        daemon_cpu=cpu_after[0] - cpu_before[0],
        emulator_cpu=cpu_after[1] - cpu_before[1],
        busy_polls=busy_polls,
    )


def _profile_path(args: argparse.Namespace, mode_name: str, latency_ms: float) -> Path:
    return args.profile / f"{mode_name}-{latency_ms:g}.pstats"


def _per_poll(cpu: float, polls: float) -> str:
    return f"{1000 * cpu / polls:.1f}" if polls else "-"


def _count(stamps: Path) -> int:
    with stamps.open() as f:
        return sum(1 for _ in f)


def _read(stamps: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in stamps.read_text().splitlines():
        message_id, _, at = line.partition("\t")
        out.setdefault(message_id, float(at))  # the first start counts
    return out


def _plot(path: Path, lines: list[tuple[str, float, list[float]]]) -> None:
    """Latency by percentile, one line per (label, added latency, latencies)."""
    series = [
        Series(
            label,
            [(q, max(_percentile(values, q), 1e-3)) for q in range(1, 100)],
            color=n,
            dashed=latency_ms > 0,
            markers=False,
        )
        for n, (label, latency_ms, values) in enumerate(lines)
    ]
    svg_line_chart(
        path,
        series,
        title="Delivery to handler start, by percentile",
        x_label="percentile of messages",
        y_label="seconds (log)",
        x_ticks=[1, 25, 50, 75, 95, 99],
    )


def _replot(path: Path, csvs: list[Path]) -> int:
    """The plot of runs made apart (each with ``--csv``): one line per (mode, added latency)."""
    lines: dict[tuple[str, float], list[float]] = {}
    for csv in csvs:
        for row in csv.read_text().splitlines()[1:]:
            mode, latency_ms, seconds = row.split(",")
            lines.setdefault((mode, float(latency_ms)), []).append(float(seconds))
    _plot(path, [(f"{m} +{ms:g} ms", ms, values) for (m, ms), values in lines.items()])
    print(f"plot: {path} ({len(lines)} lines from {len(csvs)} CSV files)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--modes",
        type=_modes,
        default=["polling", "webhook", "streaming"],
        help=f"comma-separated, of {', '.join(MODES)}",
    )
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 80.0], help="ms")
    parser.add_argument("--interval", type=float, default=60.0, help="poll interval, s")
    parser.add_argument("--healthy-interval", type=float, default=300.0)
    parser.add_argument("--debounce", type=float, default=0.25)
    parser.add_argument(
        "--max-connections", type=int, default=4, help="the credential's (default: the listener's)"
    )
    parser.add_argument(
        "--max-workers", type=int, default=8, help="service.max_workers (default: the listener's)"
    )
    parser.add_argument("--rate", type=float, default=1.0, help="messages per second")
    parser.add_argument("--burst", type=int, default=0, help="N messages at once every 10 s")
    parser.add_argument("--duration", type=float, default=120.0, help="delivery window, s")
    parser.add_argument("--idle", type=float, default=120.0, help="idle window, s")
    parser.add_argument(
        "--startup",
        action="store_true",
        help="push modes: deliver as soon as every channel is connected, the start-up polls "
        "still queued (a restart while mail flows)",
    )
    parser.add_argument("--quick", action="store_true", help="3 mailboxes, 5 s interval, 10 s")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--plot", type=Path, help="write the latency distributions as an SVG")
    parser.add_argument("--csv", type=Path, help="write every latency (mode, ms, seconds)")
    add_profile_options(parser, "each daemon", "from delivery to its exit", "<mode>-<latency>")
    parser.add_argument(
        "--replot",
        type=Path,
        nargs="+",
        metavar="CSV",
        help="run nothing: write --plot from the CSV files of earlier runs (--csv)",
    )
    args = parser.parse_args(argv)
    if args.replot:
        if not args.plot:
            parser.error("--replot needs --plot")
        return _replot(args.plot, args.replot)
    if args.quick:
        args.mailboxes, args.interval, args.duration, args.idle = 3, 5.0, 10.0, 10.0
        args.rate, args.latency = 2.0, [0.0]
    runs: list[Run] = []
    with workdir(args.keep) as root:
        for mode in args.modes:
            for latency in args.latency:
                print(f"-- {mode}, +{latency:g} ms ...", flush=True)
                runs.append(run_one(args, mode, latency, root))
    what = f"{args.burst} at once every 10 s" if args.burst else f"{args.rate:g} msg/s"
    print(
        f"\n{args.mailboxes} mailboxes, interval {args.interval:g} s, {what} for "
        f"{args.duration:g} s, idle window {args.idle:g} s\n"
    )
    rows = []
    for run in runs:
        lat = run.latencies
        rows.append(
            [
                run.mode,
                f"+{run.latency_ms:g} ms",
                f"{run.handed}/{run.messages}",
                f"{_percentile(lat, 50):.2f}",
                f"{_percentile(lat, 95):.2f}",
                f"{_percentile(lat, 99):.2f}",
                f"{max(lat) if lat else float('nan'):.2f}",
                f"{statistics.fmean(lat) if lat else float('nan'):.2f}",
                f"{run.requests_per_message:.2f}",
                f"{run.idle_requests_per_mailbox_minute:.2f}",
                f"{run.polls:.0f}",
                f"{run.notifications}",
                _per_poll(run.daemon_cpu, run.busy_polls),
                _per_poll(run.emulator_cpu, run.busy_polls),
            ]
        )
    print_table(
        [
            "mode",
            "latency",
            "handed over",
            "p50 s",
            "p95 s",
            "p99 s",
            "max s",
            "mean s",
            "req/msg",
            "idle req/mbx-min",
            "polls",
            "notifications",
            "daemon CPU ms/poll",
            "emulator CPU ms/poll",
        ],
        rows,
    )
    print(
        "\nrequests: HTTP requests to the mode's endpoint (Graph: $batch = 1; EWS: a "
        "GetStreamingEvents connection = 1); req/msg over the delivery window, idle per "
        "mailbox-minute over the idle window; notifications: POSTs Graph made that the daemon "
        "answered 2xx (webhook), events the daemon counted over the run (streaming); CPU ms/poll: "
        "the process's CPU time from delivery's start until every message was handed over, "
        "over the polls of that window (a push mode's notifications and channel included)"
    )
    if args.profile:
        for run in runs:
            path = _profile_path(args, run.mode, run.latency_ms)
            print_profile(path, f"{run.mode} +{run.latency_ms:g} ms", args.top, run.busy_polls)
    if args.csv:
        with args.csv.open("w") as out:
            out.write("mode,added_latency_ms,seconds\n")
            for run in runs:
                out.writelines(f"{run.mode},{run.latency_ms:g},{x:.4f}\n" for x in run.latencies)
        print(f"latencies: {args.csv}")
    if args.plot:
        _plot(
            args.plot, [(f"{r.mode} +{r.latency_ms:g} ms", r.latency_ms, r.latencies) for r in runs]
        )
        print(f"plot: {args.plot}")
    lost = [r for r in runs if r.handed != r.messages or r.exit_code != 0]
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
