"""Idle cost: many empty mailboxes watched by ``ews-listener run``: RSS, CPU %, requests per poll.

Usage::

    .venv/bin/python benchmarks/idle.py [--mailboxes 1000] [--interval 60] [--duration 180]
        [--quick] [--source ews|graph]

The emulator (token server + EWS) runs in a spawned child process; the daemon is the real CLI
(``python -m listener run``) in a subprocess, with ``service.jitter`` equal to the interval so
the polls of a minute are spread over the minute instead of arriving together. The first poll of
every mailbox happens within about two seconds of the start (the scheduler's design) and does
more than an idle poll (folder resolution, the first SyncFolderItems that sets the sync state,
the token); that is the warm-up, reported separately. The steady-state window starts once every
mailbox has finished its first poll; in it, polls are counted from the daemon's own ``/metrics``
(``ews_listener_polls_total``) and requests from the emulator's request log, so "requests per
idle poll" does not assume what a poll sends.

RSS and CPU come from /proc/PID (psutil is not a dependency). CPU % is of one core.

``--source graph``: the same with ``source = "graph"`` mailboxes on the emulator's Graph endpoint.
A first poll there resolves the folder (``GET mailFolders/inbox``) and, ``start_from = "new"``,
walks the delta round to its ``@odata.deltaLink`` (ids only, pages of 1,000); an idle poll is one
delta GET of that link. Requests are HTTP requests as the emulator counted them (``_harness``).

What limits the figures (repeated in the output):

- Warm-up: every mailbox's first poll lands at once; the worker pool (``service.max_workers``)
  and the emulator's CPU (lxml, TLS handshakes: exchangelib opens up to ``max_connections``
  sessions per credential) set how long it takes, not the listener's idle cost.
- Steady state: each idle poll is one HTTPS round trip; the daemon's CPU per poll is exchangelib
  building and parsing one SOAP envelope plus the SQLite read of the pending queue and the
  APScheduler bookkeeping, all under one GIL.
- RSS is dominated by imports (exchangelib, lxml, pydantic, SQLAlchemy, structlog) plus per
  mailbox objects (an exchangelib ``Account`` and cached folder, a poller, a scheduler job).
- The machine has 2 cores shared with the emulator; a busier box shows higher poll latency, not
  more requests.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    EmulatorProcess,
    ProcessSampler,
    daemon_argv,
    daemon_env,
    free_port,
    print_table,
    scrape_metrics_or_none,
    workdir,
    write_config,
)

__all__ = ["main"]

_POLLS = "ews_listener_polls_total"
_POLL_SECONDS = "ews_listener_poll_duration_seconds_sum"
_POLL_COUNT = "ews_listener_poll_duration_seconds_count"
_TOKENS = "ews_listener_token_requests_total"


def _wait(predicate: object, timeout: float, period: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(period)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mailboxes", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--duration", type=float, default=180.0, help="whole run, seconds")
    parser.add_argument("--max-workers", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="100 mailboxes, 5 s, 25 s")
    parser.add_argument(
        "--source", choices=("ews", "graph"), default="ews", help="the mailboxes' protocol"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.mailboxes, args.interval, args.duration = 100, 5.0, 25.0

    graph = args.source == "graph"
    with workdir(args.keep) as root, EmulatorProcess(root, graph=graph) as emu:
        assert emu.endpoints is not None
        addresses = [f"idle-{n}@contoso.com" for n in range(args.mailboxes)]
        emu.add_mailboxes(addresses)
        config = write_config(
            root / "config.toml",
            emu.endpoints,
            addresses,
            state_url=f"sqlite:///{root / 'state.db'}",
            interval=args.interval,
            jitter=args.interval,
            start_from="new",
            max_workers=args.max_workers,
            source=args.source,
        )
        port = free_port()
        argv_ = daemon_argv("run", config, "--metrics-port", str(port))
        print(f"scratch {root}; daemon: {' '.join(argv_[1:3])} run ...; metrics :{port}")
        log_path = root / "daemon.log"
        with log_path.open("w") as log:
            started = time.monotonic()
            daemon = subprocess.Popen(argv_, env=daemon_env(), stdout=log, stderr=subprocess.STDOUT)
            sampler = ProcessSampler(daemon.pid, period=1.0).start()
            try:
                return _measure(args, emu, daemon, sampler, port, started, log_path)
            finally:
                sampler.stop()
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait()


def _measure(
    args: argparse.Namespace,
    emu: EmulatorProcess,
    daemon: subprocess.Popen[bytes],
    sampler: ProcessSampler,
    port: int,
    started: float,
    log_path: Path,
) -> int:
    n = args.mailboxes
    warm_timeout = max(args.duration - args.interval, args.duration / 2)
    warmed = _wait(
        lambda: daemon.poll() is not None or scrape_metrics_or_none(port).get(_POLLS, 0) >= n,
        warm_timeout,
    )
    if daemon.poll() is not None:
        print(f"!! the daemon exited with {daemon.returncode}:\n{log_path.read_text()[-3000:]}")
        return 1
    warm_stats = emu.stats(args.source)
    warm_metrics = scrape_metrics_or_none(port)
    warm_at = time.monotonic()
    warm_sample = sampler.sample()
    emu.clear_log()
    if not warmed:
        print(
            f"!! only {warm_metrics.get(_POLLS, 0):.0f} of {n} first polls "
            f"within {warm_timeout:.0f} s"
        )

    time.sleep(max(0.0, started + args.duration - time.monotonic()))
    end_stats = emu.stats(args.source)
    end_metrics = scrape_metrics_or_none(port)
    end_sample = sampler.sample()
    end_at = time.monotonic()

    daemon.send_signal(signal.SIGTERM)
    stop_started = time.monotonic()
    with contextlib.suppress(subprocess.TimeoutExpired):
        daemon.wait(60)
    stop_seconds = time.monotonic() - stop_started

    polls = end_metrics.get(_POLLS, 0) - warm_metrics.get(_POLLS, 0)
    window = end_at - warm_at
    expected = n * window / args.interval
    per_poll = end_stats.requests / polls if polls else float("nan")
    poll_time = (end_metrics.get(_POLL_SECONDS, 0) - warm_metrics.get(_POLL_SECONDS, 0)) / max(
        end_metrics.get(_POLL_COUNT, 0) - warm_metrics.get(_POLL_COUNT, 0), 1
    )
    samples = sampler.samples
    first = samples[0] if samples else (started, 0.0, 0.0)
    assert warm_sample is not None
    assert end_sample is not None
    warm_cpu = 100 * (warm_sample[2] - first[2]) / max(warm_sample[0] - started, 1e-6)
    steady_cpu = 100 * (end_sample[2] - warm_sample[2]) / max(window, 1e-6)
    steady = sampler.window(warm_at)
    rss_steady = [s[1] for s in steady] or [end_sample[1]]
    slope = 0.0
    if len(steady) >= 2 and steady[-1][0] > steady[0][0]:
        slope = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0]) * 60
    peak = max(s[1] for s in samples)
    emulator_cpu = end_stats.cpu_seconds - warm_stats.cpu_seconds
    protocol = "Graph" if args.source == "graph" else "EWS"

    print(
        f"\n{n} idle mailboxes, interval {args.interval:g} s, jitter {args.interval:g} s, "
        f"{args.max_workers} workers; run {end_at - started:.0f} s "
        f"(warm-up {warm_at - started:.1f} s, steady {window:.0f} s)\n"
    )
    rows: list[list[object]] = [
        ["warm-up: first polls", f"{warm_metrics.get(_POLLS, 0):.0f} of {n}"],
        [
            f"warm-up: {protocol} requests",
            f"{warm_stats.requests} ({_ops(warm_stats.by_operation)})",
        ],
        ["warm-up: token requests", f"{warm_stats.token_requests}"],
        ["warm-up: daemon CPU", f"{warm_cpu:.0f}% of one core"],
        ["steady: polls (at the interval)", f"{polls:.0f} ({expected:.0f})"],
        ["steady: effective mean interval", f"{n * window / polls if polls else 0:.1f} s"],
        [
            f"steady: {protocol} requests",
            f"{end_stats.requests} ({_ops(end_stats.by_operation)})",
        ],
        ["steady: requests per idle poll", f"{per_poll:.3f}  (goal 1)"],
        ["steady: mean poll duration", f"{poll_time * 1000:.1f} ms"],
        ["steady: daemon CPU", f"{steady_cpu:.1f}% of one core"],
        ["steady: emulator CPU", f"{100 * emulator_cpu / max(window, 1e-6):.1f}% of one core"],
        [
            "steady: token requests",
            f"{end_stats.token_requests - warm_stats.token_requests}",
        ],
        ["RSS after warm-up", f"{warm_sample[1]:.0f} MB"],
        ["RSS end / peak", f"{end_sample[1]:.0f} / {peak:.0f} MB  (goal < 300)"],
        ["RSS slope in steady state", f"{slope:+.2f} MB/min"],
        ["RSS min..max in steady state", f"{min(rss_steady):.0f}..{max(rss_steady):.0f} MB"],
        ["SIGTERM -> exit", f"{stop_seconds:.1f} s, exit code {daemon.returncode}"],
    ]
    if end_stats.by_error or warm_stats.by_error:
        rows.append([f"{protocol} errors", f"{dict(warm_stats.by_error + end_stats.by_error)}"])
    print_table(["figure", "value"], rows)
    print("\nRSS over time (s: MB):", _timeline(samples, started))
    print("\nwhat limits these figures:")
    steady = (
        f"steady: one HTTPS round trip per idle poll ({poll_time * 1000:.0f} ms); daemon CPU is "
    )
    ews_limits = (
        f"warm-up: {n} first polls at once on {args.max_workers} workers; each resolves the "
        "folder and sets the sync state (more than one request), and the emulator shares the "
        "2 cores",
        steady + "exchangelib SOAP build/parse + SQLite + APScheduler under one GIL",
        "jitter is a random first-run offset per mailbox; the interval itself is exact",
        "RSS: imports (exchangelib, lxml, pydantic, SQLAlchemy) plus one Account, folder cache, "
        "poller and scheduler job per mailbox",
    )
    graph_limits = (
        f"warm-up: {n} first polls at once on {args.max_workers} workers; each resolves the "
        "folder and walks the delta round to its deltaLink, one httpx pool of "
        "max_connections for the credential, and the emulator shares the 2 cores",
        steady + "httpx + JSON + SQLite + APScheduler under one GIL",
        "jitter is a random first-run offset per mailbox; the interval itself is exact",
        "RSS: imports (httpx, pydantic, SQLAlchemy, structlog, APScheduler) plus "
        "one GraphMailSource, poller and scheduler job per mailbox (one GraphClient in all)",
    )
    for line in graph_limits if protocol == "Graph" else ews_limits:
        print(f"  - {line}")
    goals_met = per_poll <= 1.0001 and peak < 300
    print(f"\ngoals (1 request per idle poll, RSS < 300 MB): {'met' if goals_met else 'NOT met'}")
    return 0 if daemon.returncode == 0 else 1


def _ops(counter: object) -> str:
    assert hasattr(counter, "most_common")
    return ", ".join(f"{op} {k}" for op, k in counter.most_common())


def _timeline(samples: list[tuple[float, float, float]], started: float, points: int = 10) -> str:
    if not samples:
        return "-"
    step = max(1, len(samples) // points)
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return "  ".join(f"{t - started:.0f}: {rss:.0f}" for t, rss, _ in picked)


if __name__ == "__main__":
    sys.exit(main())
