"""The chaos run: the real daemon against a misbehaving emulator, then a strict audit.

The emulator (token server + EWS endpoint) runs in this process; ``ews-listener run`` runs as a
subprocess. A steady feed of mail goes into many mailboxes (two credentials) while, on a schedule
drawn from ``--seed``, the emulator throttles (``ErrorServerBusy`` with ``BackOffMilliseconds``,
the ``MaxConcurrency`` variant, ``ErrorExceededConnectionCount`` by rule and by squeezing the
standing connection limit to zero), answers 500 and 503, drops connections, adds latency, answers
401 for expired and revoked tokens, revokes every issued token, and the token server goes down
(``--outage`` seconds: 10 in CI mode, 30 with ``--long``) with the tokens revoked as it goes, so
the daemon must wait it out. Push notifications are on for half the mailboxes (EWS streaming and
Graph change notifications to the daemon's ``/notifications/graph``; the other half polls, on EWS
and on Graph), and their faults are in the mix: EWS streams dropped mid-way, subscriptions
forgotten, ``ErrorMissedNotificationEvents`` and 30-minute rollovers (a protocol minute of 10 s);
Graph subscriptions removed, notifications missed, the receiver unreachable (and down for real
while the daemon restarts), and Graph's own 429 / 5xx / dropped connections. The handler
(``tests/chaos/handler.py``) fails transiently on a seeded 20 % of attempts and permanently for
``[poison]`` subjects. The daemon is SIGKILLed and restarted every ``--kill-every`` seconds, and
one of those stops is a SIGTERM instead.

Then the faults stop, the daemon drains, gets a SIGTERM, and ``tests/chaos/checks.py`` audits the
ledger, dead letters, pending queue, receipt log, daemon logs and RSS samples. The figures are
printed; the exit code is 1 when an invariant broke (each one is listed), else 0.

    python benchmarks/chaos.py                 # CI mode, about 2 minutes
    python benchmarks/chaos.py --long          # 21 minutes of chaos
    python benchmarks/chaos.py --seed 7 --duration 300 --mailboxes 12 --rate 5 --kill-every 30
"""

from __future__ import annotations

import argparse
import email
import json
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.policy import SMTP
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: tests.chaos lives beside the package

from ews_listener_emulators.feed import SampleFactory  # noqa: E402 - after the path fix above
from tests.chaos.checks import Delivered, drained, verify  # noqa: E402
from tests.chaos.handler import POISON  # noqa: E402
from tests.chaos.world import APPS, CLIENT_STATE, ChaosWorld  # noqa: E402

__all__ = ["Event", "main", "schedule"]

# (source, notifications) of mailbox i by i % 4 under --push half.
_KINDS = (("ews", "off"), ("ews", "streaming"), ("graph", "webhook"), ("graph", "off"))

# Rule kinds of the fault engine injected on the schedule, with their weights.
RULE_KINDS = {
    "server_busy": 4,
    "max_concurrency": 2,
    "connection_count": 2,
    "http_500": 3,
    "http_503": 3,
    "drop": 3,
    "latency": 2,
    "expire_tokens": 2,
    "revoke_tokens": 1,
}
OPERATIONS = ("*", "*", "SyncFolderItems", "GetItem", "UpdateItem")
# Faults of Graph's request path, with their weights (the Graph mailboxes' share of the mix).
GRAPH_RULE_KINDS = {"throttled": 3, "http_503": 2, "http_500": 2, "drop": 2, "latency": 1}
# Faults of the notification channels: EWS streaming (``ops/notifications.py``) and Graph
# change notifications (``graph/faults.py`` hook kinds).
STREAM_FAULTS = ("drop", "remove", "miss")
GRAPH_PUSH_FAULTS = ("subscription_removed", "notifications_missed", "receiver_unreachable")


@dataclass(frozen=True, order=True)
class Event:
    """One scheduled disturbance, ``at`` seconds after the feed starts."""

    at: float
    action: str  # rule | graph_rule | stream | graph_push | revoke | squeeze | outage | kill | term
    params: tuple[tuple[str, object], ...] = field(default=(), compare=False)


def schedule(
    seed: int,
    *,
    duration: float,
    mailboxes: Sequence[str],
    every: tuple[float, float],
    kill_every: float,
    outage: float,
    streaming: Sequence[str] = (),
    graph: Sequence[str] = (),
    webhook: Sequence[str] = (),
) -> list[Event]:
    """The seeded disturbances of a run, in time order (the same seed, the same schedule).

    ``streaming`` (EWS mailboxes with streaming notifications), ``graph`` (Graph mailboxes) and
    ``webhook`` (those with change notifications) add their faults to the mix."""
    rng = random.Random(seed)
    events: list[Event] = []
    at = 2.0
    while at < duration:
        # A share of the events goes to the push channels and to Graph, when the run has them.
        push = rng.random() if (streaming or graph or webhook) else 1.0
        roll = rng.random()
        if streaming and push < 0.12:
            fault = rng.choice(STREAM_FAULTS)
            target = rng.choice(["*", *streaming])
            events.append(Event(at, "stream", (("fault", fault), ("mailbox", target))))
        elif webhook and 0.12 <= push < 0.24:
            kind = rng.choice(GRAPH_PUSH_FAULTS)
            count = rng.randint(1, 4) if kind == "receiver_unreachable" else 1
            target = rng.choice(list(webhook))
            events.append(
                Event(at, "graph_push", (("count", count), ("kind", kind), ("mailbox", target)))
            )
        elif graph and 0.24 <= push < 0.34:
            kind = rng.choices(list(GRAPH_RULE_KINDS), weights=list(GRAPH_RULE_KINDS.values()))[0]
            rule: dict[str, object] = {
                "mailbox": rng.choice(["*", *graph]),
                "count": rng.randint(1, 3),
            }
            if kind in ("throttled", "http_503"):
                rule["retry_after"] = round(rng.uniform(0.2, 1.5), 2)
            elif kind == "latency":
                rule["delay"] = round(rng.uniform(0.2, 1.5), 2)
            events.append(Event(at, "graph_rule", (("kind", kind), *sorted(rule.items()))))
        elif roll < 0.06:
            events.append(Event(at, "revoke"))
        elif roll < 0.12:
            events.append(Event(at, "squeeze", (("seconds", round(rng.uniform(0.3, 1.5), 2)),)))
        else:
            kind = rng.choices(list(RULE_KINDS), weights=list(RULE_KINDS.values()))[0]
            params: dict[str, object] = {
                "operation": rng.choice(OPERATIONS),
                "mailbox": rng.choice(["*", *mailboxes]),
                "count": rng.randint(1, 3),
            }
            if kind == "server_busy":
                params["back_off_ms"] = rng.randint(200, 2000)
            elif kind == "http_503":
                params["retry_after"] = 1
            elif kind == "drop":
                params["after_bytes"] = rng.choice([0, 64])
            elif kind == "latency":
                params["delay"] = round(rng.uniform(0.2, 1.5), 2)
                params["count"] = rng.randint(3, 10)
            events.append(Event(at, "rule", (("kind", kind), *sorted(params.items()))))
        at += rng.uniform(*every)
    start = round(duration * 0.4, 1)
    events.append(Event(start, "outage", (("seconds", outage),)))
    count = int(duration // kill_every) + 1
    kills = [k * kill_every for k in range(1, count) if k * kill_every < duration]
    for index, when in enumerate(kills):
        # One stop of the daemon is a SIGTERM: graceful, so it must not repeat anything.
        events.append(Event(when, "term" if index == 1 or len(kills) == 1 else "kill"))
    return sorted(events)


class Feed:
    """Delivers ``rate`` realistic messages per second into random mailboxes (seeded)."""

    def __init__(
        self,
        world: ChaosWorld,
        addresses: Sequence[str],
        *,
        seed: int,
        rate: float,
        poison: float,
        graph: Sequence[str] = (),
    ) -> None:
        self.world = world
        self.addresses = list(addresses)
        self.graph = {a.lower() for a in graph}  # their items go by Graph's immutable ids
        self.rate = rate
        self.poison = poison
        self.seed = seed
        self.factory = SampleFactory(seed, domain="chaos.example")
        self.rng = random.Random(seed ^ 0x5EED)
        self.delivered: list[Delivered] = []
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def snapshot(self) -> list[Delivered]:
        with self._lock:
            return list(self.delivered)

    def _run(self) -> None:
        started = time.monotonic()
        number = 0
        while not self._stop.is_set():
            # Pace by the clock, not by sleeping a fixed step: delivery time does not drift.
            due = started + number / self.rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            number += 1
            self.deliver_one(number)

    def deliver_one(self, number: int) -> None:
        address = self.rng.choice(self.addresses)
        poisoned = self.rng.random() < self.poison
        msg = email.message_from_bytes(self.factory.message(address), policy=SMTP)
        subject = str(msg["Subject"])
        message_id = f"<chaos.{self.seed}.{number}@chaos.example>"
        msg.replace_header("Subject", f"{POISON} {subject}" if poisoned else subject)
        msg.replace_header("Message-ID", message_id)
        try:
            item_id = self.world.ews.deliver(address, msg.as_bytes(policy=SMTP))
            if address.lower() in self.graph:
                item_id = self._immutable_id(address, item_id)
        except Exception:
            self.errors += 1
            return
        with self._lock:
            self.delivered.append(Delivered(address, item_id, message_id, poisoned, time.time()))

    def _immutable_id(self, address: str, item_id: str) -> str:
        """The id a Graph client (the daemon asks for immutable ids) knows the item by."""
        store = self.world.ews.store
        mailbox = store.mailbox(address)
        item = store.item(mailbox, item_id) if mailbox is not None else None
        if item is None:
            raise LookupError(f"{address}: no item {item_id}")
        return item.immutable_id


class Chaos:
    """Applies the schedule to the world and keeps the daemon alive (restarting after crashes)."""

    def __init__(self, world: ChaosWorld, config: Path, *, grace: float) -> None:
        self.world = world
        self.config = config
        self.grace = grace
        self.injected: Counter[str] = Counter()
        self._outage_end: float | None = None
        self._squeeze_end: float | None = None
        self.notes: list[str] = []

    def wait_until(self, deadline: float) -> None:
        """Until ``deadline`` (monotonic): restart a crashed daemon, end due outages/squeezes."""
        while True:
            now = time.monotonic()
            self._tick(now)
            if now >= deadline:
                return
            time.sleep(min(0.2, deadline - now))

    def _tick(self, now: float) -> None:
        crashed = self.world.check_crash()
        if crashed is not None:
            self.notes.append(f"daemon {crashed.number} exited by itself ({crashed.returncode})")
            self.world.start_daemon(self.config)
        if self._outage_end is not None and now >= self._outage_end:
            self.world.tokens.come_back()
            self._outage_end = None
        if self._squeeze_end is not None and now >= self._squeeze_end:
            self.world.ews.faults.connection_limit = 27
            self._squeeze_end = None

    def apply(self, event: Event) -> None:
        params = dict(event.params)
        faults = self.world.ews.faults
        if event.action == "rule":
            kind = str(params.pop("kind"))
            faults.add(kind, **params)
        elif event.action == "graph_rule":
            kind = str(params.pop("kind"))
            self.world.graph.faults.add(kind, **params)
            self.injected[f"graph_{kind}_rules"] += 1
        elif event.action == "graph_push":
            kind = str(params.pop("kind"))
            self.world.graph.faults.add(kind, **params)
            self.injected[f"graph_push_{kind}_scheduled"] += 1
        elif event.action == "stream":
            mailbox = str(params["mailbox"])
            act = {
                "drop": self.world.streams.drop_streams,
                "remove": self.world.streams.remove_subscriptions,
                "miss": self.world.streams.miss_events,
            }[str(params["fault"])]
            hit = act(None if mailbox == "*" else mailbox)
            self.injected[f"ews_streaming_{params['fault']}"] += 1
            self.injected[f"ews_streaming_{params['fault']}_affected"] += hit
        elif event.action == "revoke":
            self.world.tokens.revoke()
            self.injected["token_server_revoke_all"] += 1
        elif event.action == "squeeze":
            faults.connection_limit = 0
            self._squeeze_end = time.monotonic() + float(str(params["seconds"]))
            self.injected["connection_limit_windows"] += 1
        elif event.action == "outage":
            if self._outage_end is None:
                # Tokens "expire" as the identity platform goes away: the daemon needs a new one.
                self.world.tokens.go_down()
                self.world.tokens.revoke()
                self._outage_end = time.monotonic() + float(str(params["seconds"]))
                self.injected[f"token_server_outage_{params['seconds']}s"] += 1
        elif event.action in ("kill", "term"):
            sig = signal.SIGKILL if event.action == "kill" else signal.SIGTERM
            if self.world.current is not None:
                self.world.end_daemon(sig, timeout=self.grace + 15)
            self.injected["daemon_sigkill" if event.action == "kill" else "daemon_sigterm"] += 1
            self.world.start_daemon(self.config)

    def calm(self) -> None:
        """Stop every disturbance: no rules, the standing limit back, the token server up."""
        self.world.ews.faults.clear()
        self.world.graph.faults.clear()
        self.world.ews.faults.connection_limit = 27
        self._squeeze_end = None
        if self._outage_end is not None:
            self.world.tokens.come_back()
            self._outage_end = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--long", action="store_true", help="21 minutes of chaos (default: CI)")
    parser.add_argument("--duration", type=float, help="seconds of chaos (CI 75, long 1260)")
    parser.add_argument("--mailboxes", type=int, default=8, help="on two credentials")
    parser.add_argument("--rate", type=float, default=3.0, help="messages per second, in total")
    parser.add_argument("--kill-every", type=float, help="seconds (CI 15, long 90)")
    parser.add_argument("--outage", type=float, help="token server down seconds (CI 10, long 30)")
    parser.add_argument("--poison", type=float, default=0.03, help="share of [poison] messages")
    parser.add_argument("--fail-rate", type=float, default=0.2, help="transient handler failures")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument(
        "--ordered",
        nargs="?",
        const="all",
        default="none",
        choices=("none", "half", "all"),
        help="ordered = true (one at a time, in received order) on no mailbox, every other one "
        "(half: both hand-over modes in one run, what CI runs) or all (--ordered alone)",
    )
    parser.add_argument(
        "--push",
        default="half",
        choices=("half", "off"),
        help="half (the default, what CI runs): mailbox i by i %% 4 is EWS polling, EWS "
        "streaming, Graph with change notifications, Graph polling; off: EWS polling only",
    )
    parser.add_argument("--drain-timeout", type=float, help="seconds (CI 120, long 300)")
    parser.add_argument("--rss-every", type=float, default=2.0, help="RSS sample period, seconds")
    parser.add_argument("--log-level", default="info", help="the daemon's log level")
    parser.add_argument("--schema", action="store_true", help="validate requests (slower)")
    parser.add_argument("--workdir", type=Path, help="keep the run's files here")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--plot", type=Path, help="write a PNG of the hand-over delays here (needs matplotlib)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chaos scenario; 0 when every invariant held."""
    args = _parser().parse_args(argv)
    duration = args.duration or (1260.0 if args.long else 75.0)
    kill_every = args.kill_every or (90.0 if args.long else 15.0)
    outage = args.outage if args.outage is not None else (30.0 if args.long else 10.0)
    drain_timeout = args.drain_timeout or (300.0 if args.long else 120.0)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix="chaos-", dir=args.workdir))
    else:
        root = Path(tempfile.mkdtemp(prefix="ews-chaos-"))
    schema_dir = str(REPO.parent / "shared" / "ews-schema") if args.schema else None
    world = ChaosWorld(
        root,
        token_lifetime=300,  # the daemon renews 120 s early: a natural renewal every 3 minutes
        seed=args.seed,
        fail_rate=args.fail_rate,
        rss_every=args.rss_every,
        schema_dir=schema_dir,
        log_level=args.log_level,
    )
    addresses = [f"chaos{i}@contoso.com" for i in range(args.mailboxes)]
    for address in addresses:
        world.ews.add_mailbox(address)
    credentials = list(APPS)
    grace = 15.0
    workers = min(args.mailboxes, 8)
    # Mailbox i by i % 4 (with --push half; --push off: all EWS, polling):
    # 0 EWS polling, 1 EWS streaming, 2 Graph webhook, 3 Graph polling.
    kinds = [_KINDS[i % 4] if args.push == "half" else _KINDS[0] for i in range(len(addresses))]
    http_port = _free_port()
    config = world.config(
        {
            f"box{i}": {
                "address": address,
                "credential": credentials[i % len(credentials)],
                "source": kinds[i][0],
                "notifications": kinds[i][1],
                "interval": 1,
                "start_from": "all",
                "batch_size": args.batch_size,
                "ordered": args.ordered == "all" or (args.ordered == "half" and i % 2 == 1),
                # 8 attempts: a 20 % transient failure exhausts them with probability 0.2^8.
                "on_failure": {"max_attempts": 8, "backoff": 0.5, "backoff_max": 8},
            }
            for i, address in enumerate(addresses)
        },
        service={
            "jitter": 0.2,
            "shutdown_grace": grace,
            "max_workers": workers,
            "http_port": http_port,
        },
        notifications={
            "debounce": 0.2,
            # While a channel is connected its mailbox polls every 5 s instead of every second:
            # push carries the latency, the safety net still drains what push failed to signal.
            "healthy_interval": 5,
            # One-"minute" streaming connections: a rollover every 10 s (the world's minute).
            "ews": {"connection_minutes": 1},
            "graph": {"public_url": f"http://127.0.0.1:{http_port}/notifications/graph"},
        },
    )
    by_kind = lambda wanted: [  # noqa: E731 - a local shorthand
        a for a, k in zip(addresses, kinds, strict=True) if k == wanted
    ]
    ews_addresses = [a for a, k in zip(addresses, kinds, strict=True) if k[0] == "ews"]
    graph_addresses = [a for a, k in zip(addresses, kinds, strict=True) if k[0] == "graph"]
    events = schedule(
        args.seed,
        duration=duration,
        mailboxes=ews_addresses,
        every=(1.0, 3.0) if not args.long else (1.5, 4.0),
        kill_every=kill_every,
        outage=outage,
        streaming=by_kind(("ews", "streaming")),
        graph=graph_addresses,
        webhook=by_kind(("graph", "webhook")),
    )
    print(
        f"chaos: seed {args.seed}, {duration:.0f} s, {args.mailboxes} mailboxes, "
        f"{args.rate}/s, kill every {kill_every:.0f} s, token outage {outage:.0f} s, "
        f"{len(events)} events; files in {root}",
        flush=True,
    )
    run_started = time.monotonic()
    chaos = Chaos(world, config, grace=grace)
    feed = Feed(
        world, addresses, seed=args.seed, rate=args.rate, poison=args.poison, graph=graph_addresses
    )
    try:
        world.start_daemon(config)
        feed.start()
        t0 = time.monotonic()
        for event in events:
            chaos.wait_until(t0 + event.at)
            chaos.apply(event)
        chaos.wait_until(t0 + duration)
        feed.stop()
        chaos.calm()
        chaos_seconds = time.monotonic() - t0
        delivered = feed.snapshot()
        drain_started = time.monotonic()
        left, pending = len(delivered), -1
        while time.monotonic() - drain_started < drain_timeout:
            chaos.wait_until(time.monotonic() + 1.0)
            left, pending = drained(world.state, delivered)
            if left == 0 and pending == 0:
                break
        drain_seconds = time.monotonic() - drain_started
        if world.current is not None:
            world.end_daemon(signal.SIGTERM, timeout=grace + 15)
        counters = dict(world.ews.faults.counters())
        counters.update({f"graph_{k}": v for k, v in world.graph.faults.counters().items()})
        verdict = verify(
            state=world.state,
            receipts=world.receipts,
            delivered=delivered,
            lifetimes=world.lifetimes,
            concurrency=workers,
            batch_size=args.batch_size,
            secrets=[*(secret for _, secret in APPS.values()), CLIENT_STATE],
            tokens=world.tokens.issued_tokens(),
            rss_limit=0.5 if args.long else None,
        )
    finally:
        world.close()
    if left or pending:
        verdict.fail(
            f"not drained after {drain_timeout:.0f} s: {left} outstanding, {pending} pending"
        )
    faults = {**counters, **chaos.injected}
    figures = {
        "seed": args.seed,
        "mode": "long" if args.long else "ci",
        "chaos seconds": round(chaos_seconds, 1),
        "drain seconds": round(drain_seconds, 1),
        "run seconds": round(time.monotonic() - run_started, 1),
        "mailboxes / credentials": f"{args.mailboxes} / {len(credentials)}",
        "mailboxes by source/notifications": dict(
            Counter(f"{source}/{push}" for source, push in kinds)
        ),
        **verdict.figures,
        "SIGKILLs": chaos.injected["daemon_sigkill"],
        "SIGTERMs (incl. final)": chaos.injected["daemon_sigterm"] + 1,
        "faults injected (total)": sum(faults.values()),
        "token requests": world.tokens.request_count(),
        "feed errors": feed.errors,
    }
    _print(figures, faults, verdict.failures + chaos.notes)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"figures": figures, "faults": faults, "failures": verdict.failures},
                indent=2,
                default=str,
            )
        )
    if args.plot is not None:
        _plot(args.plot, verdict.delays, world.lifetimes, figures)
    return 1 if verdict.failures else 0


def _plot(
    path: Path, delays: list[tuple[float, float]], lifetimes: Sequence[Any], figures: dict[str, Any]
) -> None:
    """Delay from delivery to hand-over, over the run and as a distribution."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    if not delays:
        return
    at, delay = zip(*delays, strict=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.scatter(at, delay, s=4, alpha=0.5)
    for lifetime in lifetimes[1:]:
        left.axvline(lifetime.started - lifetimes[0].started, color="red", lw=0.6, alpha=0.6)
    left.set_xlabel("delivered at (s into the run); red: daemon restarts")
    left.set_ylabel("delay to hand-over (s)")
    left.set_title(f"chaos run ({figures['mode']}, seed {figures['seed']})")
    ordered = sorted(delay)
    right.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))])
    right.set_xscale("log")
    right.set_xlabel("delay to hand-over (s, log)")
    right.set_ylabel("fraction of messages")
    right.set_title(
        f"p50 {figures['delay p50 s']} s, p95 {figures['delay p95 s']} s, "
        f"p99 {figures['delay p99 s']} s"
    )
    right.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"written: {path}")


def _print(figures: dict[str, object], faults: dict[str, int], failures: list[str]) -> None:
    width = max(len(k) for k in [*figures, *faults]) + 2
    print("\n== chaos run figures ==")
    for key, value in figures.items():
        print(f"{key:<{width}}{value}")
    print("\n== faults injected by kind ==")
    for key, value in sorted(faults.items()):
        print(f"{key:<{width}}{value}")
    print()
    if failures:
        print("== INVARIANTS BROKEN ==")
        for failure in failures:
            print(f"- {failure}")
    else:
        print("all invariants held")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
