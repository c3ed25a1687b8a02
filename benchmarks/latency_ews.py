"""Delivery → handler start over EWS: streaming notifications against polling (issue 15).

Usage::

    .venv/bin/python benchmarks/latency_ews.py [--mailboxes 10] [--messages 40] [--rate 2]
        [--poll-interval 60] [--latency MS] [--quick]

The emulator (token server + EWS) runs in a spawned child process and the daemon is the real CLI
(``python -m listener run``). Messages are delivered to the mailboxes in turn at ``--rate`` per
second; the handler (:func:`stamp`, inside the daemon) appends the wall-clock time it started
and the message's subject, and the delivery time is the parent's clock just before the delivery
call (same machine, same clock). Two runs:

- **streaming**: ``[notifications] default = "push"``, one GetStreamingEvents connection for
  all mailboxes, the interval an hour (only pushes hand mail over);
- **polling**: no notifications, ``--poll-interval`` seconds (60 by default: expect about half
  of it at p50 and nearly all of it at p99).

Requests per message are the emulator's, from the first delivery until the last hand-over
(GetStreamingEvents counts once per connection, not per envelope). No figure is asserted.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    EmulatorProcess,
    daemon_argv,
    daemon_env,
    print_table,
    workdir,
    write_config,
)

_STAMPS_ENV = "BENCH_STAMPS"


def stamp(message: object) -> None:
    """The handler: the time it started and the message's subject, one line each."""
    started = time.time()
    subject = getattr(message, "subject", "")
    with open(os.environ[_STAMPS_ENV], "a") as out:
        out.write(f"{started:.6f} {subject}\n")


def _mime(to: str, n: int) -> bytes:
    return (
        f"From: Customer <customer@example.net>\r\nTo: {to}\r\nSubject: lat-{n}\r\n"
        f"Message-ID: <lat.{n}.{time.time_ns()}@example.net>\r\n"
        "Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nOrder.\r\n"
    ).encode()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run(mode: str, args: argparse.Namespace, root: Path) -> list[object]:
    addresses = [f"lat{n}@contoso.com" for n in range(args.mailboxes)]
    with EmulatorProcess(root / mode) as emulator:
        assert emulator.endpoints is not None
        emulator.add_mailboxes(addresses)
        emulator.set_latency(args.latency / 1000)
        emulator.set_streaming(minute=60.0, keepalive=30.0)
        interval = 3600 if mode == "streaming" else args.poll_interval
        config = write_config(
            root / f"{mode}.toml",
            emulator.endpoints,
            addresses,
            state_url=f"sqlite:///{root / mode}.db",
            interval=interval,
            jitter=min(interval, args.poll_interval),
            start_from="new",
            handler={"type": "python", "target": "latency_ews:stamp"},
        )
        if mode == "streaming":
            with config.open("a") as out:
                out.write('\n[notifications]\ndefault = "push"\n')
        stamps = root / f"{mode}.stamps"
        env = {**daemon_env(), _STAMPS_ENV: str(stamps)}
        daemon = subprocess.Popen(
            daemon_argv("run", config), env=env, stdout=subprocess.DEVNULL, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 120
            # Ready: every mailbox synced once (streaming: and the stream open).
            while time.monotonic() < deadline:
                synced = emulator.stats().mailboxes_seen == len(addresses)
                if synced and (mode != "streaming" or emulator.streams(addresses[:1]) == 1):
                    break
                time.sleep(0.2)
            time.sleep(1.0)  # the wake polls that follow each new subscription
            emulator.clear_log()
            delivered: dict[str, float] = {}
            gap = 1 / args.rate
            for n in range(args.messages):
                address = addresses[n % len(addresses)]
                delivered[f"lat-{n}"] = time.time()
                emulator.deliver(address, [_mime(address, n)])
                time.sleep(gap)
            wait_until = time.monotonic() + interval * 2 + 30
            handled: dict[str, float] = {}
            while time.monotonic() < wait_until and len(handled) < len(delivered):
                if stamps.exists():
                    for line in stamps.read_text().splitlines():
                        at, _, subject = line.partition(" ")
                        handled.setdefault(subject, float(at))
                time.sleep(0.2)
            requests = emulator.stats().requests
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
    delays = [handled[s] - t for s, t in delivered.items() if s in handled]
    if not delays:
        return [mode, interval, f"0/{len(delivered)}", "-", "-", "-", "-", "-"]
    return [
        mode,
        interval,
        f"{len(delays)}/{len(delivered)}",
        f"{_percentile(delays, 50):.3f}",
        f"{_percentile(delays, 95):.3f}",
        f"{_percentile(delays, 99):.3f}",
        f"{statistics.fmean(delays):.3f}",
        f"{requests / len(delivered):.2f}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--rate", type=float, default=2.0, help="messages per second")
    parser.add_argument("--poll-interval", type=float, default=60.0)
    parser.add_argument("--latency", type=float, default=0.0, help="ms added to each EWS answer")
    parser.add_argument("--modes", default="streaming,polling")
    parser.add_argument("--quick", action="store_true", help="20 messages, polling at 5 s")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.poll_interval = 20, 5.0
    rows = []
    with workdir() as root:
        for mode in args.modes.split(","):
            rows.append(run(mode, args, root))
    print(
        f"{args.mailboxes} mailboxes, {args.messages} messages at {args.rate}/s, "
        f"+{args.latency:.0f} ms per EWS answer"
    )
    print_table(
        ["mode", "interval s", "handed over", "p50 s", "p95 s", "p99 s", "mean s", "req/msg"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
