"""Several replicas on one PostgreSQL database: handover, takeover, balance and duplicates.

``--replicas`` real ``ews-listener run`` processes share ``--mailboxes`` EWS mailboxes of the
emulator (in this process) through leases in a fresh schema of the local PostgreSQL, while a
steady feed delivers ``--rate`` messages a second. In turn: one replica is SIGTERMed (and a new
one started), one SIGKILLed (and a new one started), one SIGSTOPped past its lease and resumed,
and a further one added and then SIGTERMed. The lease table is sampled every 0.1 s throughout.

Afterwards, printed: every delivered message handed over (or not: lost), duplicates and whose
they were (only messages in flight at a SIGKILL or a pause may repeat), takeover time per mailbox
after SIGTERM and after SIGKILL (p50 / p95: from the signal until another replica holds the
lease), the longest a mailbox went without a live owner, and the spread after each change. The
exit code is 1 when a message was lost or repeated by a replica that was neither killed nor
paused; timings are figures, not verdicts.

    python benchmarks/cluster.py --quick       # CI size, about a minute
    python benchmarks/cluster.py               # 30 mailboxes, 3 replicas, lease 15 s / renew 5 s
    python benchmarks/cluster.py --mailboxes 300 --rate 20 --lease 15 --renew 5 --kills 5
    python benchmarks/cluster.py --leases-only 10000 --replicas 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run as a script: tests.e2e lives beside the package

import sqlalchemy as sa  # noqa: E402 - after the path fix above

from ews_listener_emulators.ca import EmulatorCA  # noqa: E402
from ews_listener_emulators.graph.server import GraphEmulator  # noqa: E402
from ews_listener_emulators.server import EwsEmulator  # noqa: E402
from ews_listener_emulators.token_server import TokenServer  # noqa: E402
from listener.store import SqlStateStore, open_store  # noqa: E402
from tests.e2e.conftest import APPS, TENANT, World  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from _harness import add_profile_options, cpu_seconds, listener_runner, print_profile  # noqa: E402

__all__ = ["main"]

POSTGRES = os.environ.get(
    "EWS_LISTENER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI size: 9 mailboxes, 3 s leases")
    parser.add_argument("--mailboxes", type=int, help="default 30 (quick 9)")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rate", type=float, help="messages a second in total (default 10)")
    parser.add_argument("--lease", type=float, help="lease seconds (default 15, quick 3)")
    parser.add_argument("--renew", type=float, help="renewal seconds (default 5, quick 1)")
    parser.add_argument(
        "--settle",
        type=float,
        help="seconds of feed between changes (default 2 leases, quick 2); --scale: seconds "
        "between warm-up and window (default interval / 6, at most 10)",
    )
    parser.add_argument(
        "--interval", type=float, default=1.0, help="poll interval of every mailbox (default 1 s)"
    )
    parser.add_argument(
        "--kills", type=int, default=1, help="SIGKILL-and-replace rounds (each one a new victim)"
    )
    parser.add_argument("--postgres", default=POSTGRES, help="database (a schema is made in it)")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument(
        "--scale",
        type=int,
        metavar="N",
        help="N idle mailboxes over --replicas daemons (interval --interval, 60 s unless given): "
        "RSS, CPU, PostgreSQL statements and EWS requests per idle poll over --window seconds",
    )
    parser.add_argument(
        "--window", type=float, default=120.0, help="--scale: seconds measured after warm-up"
    )
    add_profile_options(parser, "--scale: each replica", "over the window", "<replica>")
    parser.add_argument(
        "--leases-only",
        type=int,
        metavar="N",
        help="no daemons: N mailboxes' leases kept by --replicas lease managers in this process "
        "(the cost of a tick at scale: statements, rows, milliseconds)",
    )
    return parser


def _scrape(port: int) -> dict[str, float]:
    """A replica's ``/metrics``, summed per metric name over labels ({} when unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
            text = r.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            with contextlib.suppress(ValueError):
                totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def _memory_mb(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (peak RSS, what ru_maxrss reports after the end) of ``pid``, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


def _pg_counters(conn: sa.Connection, schema: str) -> dict[str, float]:
    """Cumulative statistics: this schema's tables (scans, rows written) and the database's
    transactions (the whole database: other users of it count too)."""
    tables = conn.execute(
        sa.text(
            "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0),"
            " coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)"
            " FROM pg_stat_user_tables WHERE schemaname = :s"
        ),
        {"s": schema},
    ).one()
    db = conn.execute(
        sa.text(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
    ).scalar_one()
    return {"scans": float(tables[0]), "rows": float(tables[1]), "xacts": float(db)}


def _fresh_schema(admin: sa.Engine) -> tuple[str, str]:
    """A new, empty schema of the benchmark's database: its name, and a URL whose connections
    use it (``search_path``), so a run never meets another run's tables."""
    schema = f"ews_bench_{uuid.uuid4().hex[:8]}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = admin.url.set(query={"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False
    )
    return schema, url


def _drop_schema(admin: sa.Engine, schema: str) -> None:
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def scale(args: argparse.Namespace) -> int:
    """``--replicas`` real daemons over ``--scale`` idle mailboxes: what they cost once warm."""
    count, interval = args.scale, args.interval if args.interval != 1.0 else 60.0
    lease = args.lease or 15.0
    renew = args.renew or 5.0
    root = Path(tempfile.mkdtemp(prefix="ews-scale-"))
    admin = sa.create_engine(args.postgres)
    schema, url = _fresh_schema(admin)
    ca = EmulatorCA(root / "ca")
    tokens = TokenServer(ca=ca, token_lifetime=24 * 3600)
    tokens.start()
    tokens.add_tenant(TENANT)
    for client_id, secret in APPS.values():
        tokens.register_app(TENANT, client_id, secret=secret)
    ews = EwsEmulator(tokens, ca)
    ews.request_log = deque(maxlen=5_000_000)
    graph = GraphEmulator.beside(ews, tokens, ca)
    ews.start()
    graph.start()
    world = World(ca, tokens, ews, graph, root)
    boxes: dict[str, dict[str, object]] = {}
    for i in range(count):
        ews.add_mailbox(f"user{i}@contoso.com")
        boxes[f"box{i:05d}"] = {
            "address": f"user{i}@contoso.com",
            "credential": "sales" if i % 2 else "support",
            "start_from": "all",
            "version": "Exchange2016",
            "interval": interval,
        }
    config = world.config(
        boxes, extra=f"\n[cluster]\nlease_seconds = {lease}\nrenew_seconds = {renew}\n"
    )
    text = config.read_text().replace(f'url = "sqlite:///{world.state}"', f'url = "{url}"')
    config.write_text(text.replace("jitter = 0", f"jitter = {interval:g}"))
    replicas = Replicas(world, config, profile=args.profile)
    ports: dict[str, int] = {}
    began = time.monotonic()

    def polls() -> float:
        return sum(_scrape(p).get("ews_listener_polls_total", 0.0) for p in ports.values())

    try:
        for _ in range(args.replicas):
            port = _free_port()
            name = replicas.start(EWS_LISTENER_SERVICE__HTTP_PORT=str(port))
            ports[name] = port
        # Warm-up: every mailbox leased and polled once (its first poll resolves the folder).
        deadline = time.monotonic() + max(900.0, 3 * interval)
        synced: set[str | None] = set()
        seen = 0
        while time.monotonic() < deadline and len(synced) < count:
            for name, proc in replicas.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: see {replicas.logs[name]}")
            time.sleep(2)
            log_now = list(ews.request_log)
            synced.update(r.mailbox for r in log_now[seen:] if r.operation == "SyncFolderItems")
            seen = len(log_now)
        warm = time.monotonic() - began
        warm_requests = len(ews.request_log)
        if len(synced) < count:
            print(f"warm-up unfinished after {warm:.0f} s: {len(synced)} of {count} synced")
        # the first polls' tidy-ups and lease ticks settle (--settle: until polls are back on time)
        time.sleep(args.settle if args.settle else min(10.0, interval / 6))
        with admin.connect() as conn:
            pg0 = _pg_counters(conn, schema)
        if args.profile:
            for name in replicas.procs:
                replicas.signal(name, signal.SIGUSR1)  # the profile's window starts now
        cpu0 = {n: cpu_seconds(replicas.pids[n]) for n in replicas.procs}
        polls0, log0, t0 = polls(), len(ews.request_log), time.monotonic()
        time.sleep(args.window)
        window = time.monotonic() - t0
        polls1, log1 = polls(), len(ews.request_log)
        cpu1 = {n: cpu_seconds(replicas.pids[n]) for n in replicas.procs}
        memory = {n: _memory_mb(replicas.pids[n]) for n in replicas.procs}
        owned = {n: _scrape(p).get("ews_listener_leases_owned", 0.0) for n, p in ports.items()}
        with admin.connect() as conn:
            pg1 = _pg_counters(conn, schema)
        records = list(ews.request_log)[log0:log1]
        warm_ops = Counter(r.operation for r in list(ews.request_log)[:warm_requests])
    finally:
        replicas.stop_all()
        _drop_schema(admin, schema)
        admin.dispose()
        graph.stop()
        ews.stop()
        tokens.stop()
    ops = Counter(r.operation for r in records)
    idle_polls = polls1 - polls0
    print(
        f"scale: {count} idle mailboxes, {args.replicas} replica(s), interval {interval:g} s "
        f"(jitter {interval:g} s), lease {lease:g} s / renew {renew:g} s, state on PostgreSQL"
    )
    print(
        f"warm-up: {warm:.0f} s until every mailbox was polled once; {warm_requests} EWS requests "
        f"({', '.join(f'{k} {v}' for k, v in warm_ops.most_common())})"
    )
    print(
        f"window {window:.0f} s: {idle_polls:.0f} polls ({idle_polls / window:.1f}/s), "
        f"{len(records)} EWS requests ({', '.join(f'{k} {v}' for k, v in ops.most_common())}): "
        f"{len(records) / idle_polls if idle_polls else float('nan'):.3f} requests per idle poll"
    )
    for name in sorted(cpu1):
        rss, hwm = memory[name]
        busy = (cpu1[name] - cpu0[name]) / window
        print(
            f"{name}: {owned[name]:.0f} leases, RSS {rss:.0f} MB (peak {hwm:.0f} MB), "
            f"CPU {100 * busy:.1f} % of one core over the window"
        )
    print(
        f"PostgreSQL over the window (pg_stat_user_tables of this run's schema): "
        f"{(pg1['scans'] - pg0['scans']) / window:.1f} table scans/s (seq + index: about one "
        f"per statement touching a table), {(pg1['rows'] - pg0['rows']) / window:.1f} rows "
        f"written/s; pg_stat_database: {(pg1['xacts'] - pg0['xacts']) / window:.1f} "
        f"transactions/s in the whole database (other users of it included)"
    )
    if args.profile:
        for name in sorted(cpu1):
            print_profile(args.profile / f"{name}.pstats", name, args.top, idle_polls)
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def leases_only(args: argparse.Namespace) -> int:
    """Tick ``--replicas`` lease managers over N mailboxes until balanced; print what a tick
    costs in statements and time once they are (what an idle cluster pays every renewal)."""
    from listener.cluster import LeaseManager

    admin = sa.create_engine(args.postgres)
    schema, url = _fresh_schema(admin)
    store = open_store(url)
    statements = [0]
    sa.event.listen(
        store._engine,  # a benchmark counting the store's statements
        "before_cursor_execute",
        lambda *a: statements.__setitem__(0, statements[0] + 1),
    )
    names = [f"box{i:05d}" for i in range(args.leases_only)]
    managers = [
        LeaseManager(store.leases, names, replica=f"r{i}", host="bench", pid=i, lease=3600)
        for i in range(args.replicas)
    ]
    try:
        for m in managers:
            store.leases.join(m.replica, host="bench", pid=0, mailboxes=names)
        started = time.perf_counter()
        rounds = 0
        while sorted(len(m.owned()) for m in managers) != sorted(
            len(names) // args.replicas + (1 if i < len(names) % args.replicas else 0)
            for i in range(args.replicas)
        ):
            for m in managers:
                m.tick()
            rounds += 1
        to_balance = time.perf_counter() - started
        statements[0] = 0
        took = []
        for m in managers:
            t0 = time.perf_counter()
            m.tick()
            took.append(time.perf_counter() - t0)
        per_tick = statements[0] / len(managers)
    finally:
        for m in managers:
            m.leave()
        store.close()
        _drop_schema(admin, schema)
        admin.dispose()
    total = per_tick * args.replicas / 5
    print(
        f"leases only: {len(names)} mailboxes, {args.replicas} replicas: balanced after "
        f"{rounds} round(s) of ticks in {to_balance:.2f} s; an idle tick: "
        f"{per_tick:.0f} statements, p50 {_percentile(took, 0.5)} s, "
        f"max {_percentile(took, 1.0)} s per replica "
        f"(at renew 5 s: {total:.1f} statements/s in all)"
    )
    return 0


class Owners:
    """Samples the lease table every 0.1 s: who owns what, and since when nobody did."""

    def __init__(self, store: SqlStateStore, mailboxes: Sequence[str]) -> None:
        self.store = store
        self.now: dict[str, str | None] = dict.fromkeys(mailboxes)
        self.unowned_since: dict[str, float | None] = dict.fromkeys(mailboxes, time.monotonic())
        self.longest_unowned = 0.0
        # Replicas SIGKILLed or SIGSTOPped: their leases, until they expire, own nothing polled.
        self.dead: set[str] = set()
        self.dead_since: dict[str, float | None] = dict.fromkeys(mailboxes)
        self.longest_unpolled = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="owners", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                rows = self.store.leases.leases()
            except Exception as error:  # the database is busy: the next sample will do
                print(f"sampling leases failed: {error}", file=sys.stderr)
                continue
            at = time.monotonic()
            with self._lock:
                for row in rows:
                    owner = row.owner if row.live else None
                    self.now[row.mailbox] = owner
                    since = self.unowned_since.get(row.mailbox)
                    if owner is None and since is None:
                        self.unowned_since[row.mailbox] = at
                    elif owner is not None and since is not None:
                        self.longest_unowned = max(self.longest_unowned, at - since)
                        self.unowned_since[row.mailbox] = None
                    gone = owner is None or owner in self.dead
                    since = self.dead_since.get(row.mailbox)
                    if gone and since is None:
                        self.dead_since[row.mailbox] = at
                    elif not gone and since is not None:
                        self.longest_unpolled = max(self.longest_unpolled, at - since)
                        self.dead_since[row.mailbox] = None

    def died(self, replica: str, at: float) -> None:
        """``replica`` was SIGKILLed or SIGSTOPped at ``at``: its mailboxes are unowned since."""
        with self._lock:
            self.dead.add(replica)
            for mailbox, owner in self.now.items():
                if owner == replica and self.dead_since.get(mailbox) is None:
                    self.dead_since[mailbox] = at

    def resumed(self, replica: str) -> None:
        with self._lock:
            self.dead.discard(replica)

    def reset(self) -> None:
        """Count unowned time from now on (not the replicas' start-up)."""
        with self._lock:
            at = time.monotonic()
            self.unowned_since = {m: (at if o is None else None) for m, o in self.now.items()}
            self.longest_unowned = 0.0
            self.dead_since = dict(self.unowned_since)
            self.longest_unpolled = 0.0

    def snapshot(self) -> dict[str, str | None]:
        with self._lock:
            return dict(self.now)

    def spread(self) -> list[int]:
        counts = Counter(o for o in self.snapshot().values() if o is not None)
        return sorted(counts.values())

    def wait(self, predicate: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):  # type: ignore[operator]
                return True
            time.sleep(0.05)
        return False

    def takeover(
        self, mailboxes: Sequence[str], old: str, since: float, timeout: float
    ) -> list[float]:
        """Seconds from ``since`` until each of ``mailboxes`` is held by a replica but ``old``."""
        left = set(mailboxes)
        times: list[float] = []
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            now = self.snapshot()
            at = time.monotonic()
            for mailbox in sorted(left):
                if now.get(mailbox) not in (None, old):
                    times.append(at - since)
                    left.discard(mailbox)
            time.sleep(0.05)
        return times

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Replicas:
    """The ``ews-listener run`` processes, each with its own replica id."""

    def __init__(self, world: World, config: Path, *, profile: Path | None = None) -> None:
        self.world = world
        self.config = config
        self.profile = profile
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.logs: dict[str, Path] = {}
        self.pids: dict[str, int] = {}
        self._n = 0

    def start(self, **env: str) -> str:
        self._n += 1
        name = f"r{self._n:02d}"
        log = self.world.root / f"{name}.log"
        self.logs[name] = log
        profile = self.profile / f"{name}.pstats" if self.profile is not None else None
        with log.open("w") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    *listener_runner(profile),
                    "--log-format",
                    "json",
                    "run",
                    "--config",
                    str(self.config),
                ],
                cwd=REPO,
                env=self.world.env(EWS_LISTENER_CLUSTER__REPLICA_ID=name, **env),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.pids[name] = proc.pid
        return name

    def signal(self, name: str, sig: int) -> float:
        at = time.monotonic()
        self.procs[name].send_signal(sig)
        return at

    def reap(self, name: str, timeout: float = 60) -> int:
        proc = self.procs.pop(name)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.signal(name, signal.SIGTERM)
        for name in list(self.procs):
            self.reap(name)


def _percentile(values: Sequence[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.leases_only:
        return leases_only(args)
    if args.scale:
        return scale(args)
    mailbox_count = args.mailboxes or (9 if args.quick else 30)
    lease = args.lease or (3.0 if args.quick else 15.0)
    renew = args.renew or (1.0 if args.quick else 5.0)
    rate = args.rate or 10.0
    settle = args.settle or (2.0 if args.quick else 2 * lease)
    root = Path(tempfile.mkdtemp(prefix="ews-cluster-"))
    admin = sa.create_engine(args.postgres)
    schema, url = _fresh_schema(admin)
    ca = EmulatorCA(root / "ca")
    tokens = TokenServer(ca=ca, token_lifetime=3600)
    tokens.start()
    tokens.add_tenant(TENANT)
    for client_id, secret in APPS.values():
        tokens.register_app(TENANT, client_id, secret=secret)
    ews = EwsEmulator(tokens, ca)
    graph = GraphEmulator.beside(ews, tokens, ca)
    ews.start()
    graph.start()
    world = World(ca, tokens, ews, graph, root)
    names = [f"box{i:03d}" for i in range(mailbox_count)]
    boxes = {}
    for i, name in enumerate(names):
        ews.add_mailbox(f"user{i}@contoso.com")
        boxes[name] = {
            "address": f"user{i}@contoso.com",
            "credential": "sales" if i % 2 else "support",
            "start_from": "all",
            "batch_size": 10,
            "interval": args.interval,
        }
    config = world.config(
        boxes, extra=f"\n[cluster]\nlease_seconds = {lease}\nrenew_seconds = {renew}\n"
    )
    config.write_text(
        config.read_text().replace(f'url = "sqlite:///{world.state}"', f'url = "{url}"')
    )
    store = open_store(url)
    replicas = Replicas(world, config)
    delivered: list[str] = []
    feeding = threading.Event()

    def feed() -> None:
        started, n = time.monotonic(), 0
        while not feeding.is_set():
            if feeding.wait(max(0.0, started + n / rate - time.monotonic())):
                return
            world.deliver(f"user{n % mailbox_count}@contoso.com", f"order {n}")
            delivered.append(f"order {n}")
            n += 1

    feeder = threading.Thread(target=feed, daemon=True)
    owners = Owners(store, names)
    takeovers: dict[str, list[float]] = {"SIGTERM": [], "SIGKILL": [], "SIGSTOP": []}
    balance: list[tuple[str, list[int], str]] = []
    suspects: set[int] = set()  # pids killed or paused: their in-flight messages may repeat
    goal = lease + renew

    def balanced(label: str, replicas_now: int) -> None:
        ok = owners.wait(
            lambda now: (
                None not in now.values()
                and len(set(now.values())) == replicas_now
                and max(owners.spread()) - min(owners.spread()) <= 1
            ),
            max(30.0, settle * 3),
        )
        spread = owners.spread()
        fair = mailbox_count / replicas_now
        within = all(abs(n - fair) <= max(1.0, 0.1 * fair) for n in spread)
        balance.append((label, spread, "yes" if ok and within else "NO"))
        print(f"{time.monotonic() - began:6.1f} s  {label}: {spread}", file=sys.stderr, flush=True)

    began = time.monotonic()
    try:
        for _ in range(args.replicas):
            replicas.start()
        balanced("start", args.replicas)
        owners.reset()
        feeder.start()
        time.sleep(settle)
        # SIGTERM one, then a new one in its place.
        victim = sorted(replicas.procs)[0]
        held = [m for m, o in owners.snapshot().items() if o == victim]
        at = replicas.signal(victim, signal.SIGTERM)
        takeovers["SIGTERM"] += owners.takeover(held, victim, at, goal * 3)
        replicas.reap(victim)
        balanced("after SIGTERM", args.replicas - 1)
        replicas.start()
        balanced("replaced", args.replicas)
        time.sleep(settle)
        # SIGKILL one, then a new one in its place (--kills times).
        for _ in range(args.kills):
            victim = sorted(replicas.procs)[0]
            suspects.add(replicas.pids[victim])
            held = [m for m, o in owners.snapshot().items() if o == victim]
            at = replicas.signal(victim, signal.SIGKILL)
            owners.died(victim, at)
            replicas.reap(victim)
            takeovers["SIGKILL"] += owners.takeover(held, victim, at, goal * 3)
            balanced("after SIGKILL", args.replicas - 1)
            replicas.start()
            balanced("replaced", args.replicas)
            time.sleep(settle)
        # SIGSTOP one past its lease, then SIGCONT.
        victim = sorted(replicas.procs)[0]
        suspects.add(replicas.pids[victim])
        held = [m for m, o in owners.snapshot().items() if o == victim]
        at = replicas.signal(victim, signal.SIGSTOP)
        owners.died(victim, at)
        takeovers["SIGSTOP"] += owners.takeover(held, victim, at, goal * 3)
        time.sleep(renew)
        replicas.signal(victim, signal.SIGCONT)
        owners.resumed(victim)
        balanced("after SIGSTOP + SIGCONT", args.replicas)
        # One more, then remove it.
        extra = replicas.start()
        balanced(f"{args.replicas + 1} replicas", args.replicas + 1)
        replicas.signal(extra, signal.SIGTERM)
        replicas.reap(extra)
        balanced(f"back to {args.replicas}", args.replicas)
        feeding.set()
        feeder.join()
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            if {r["subject"] for r in world.receipts_log()} >= set(delivered):
                break
            time.sleep(0.5)
    finally:
        feeding.set()
        replicas.stop_all()
        owners.stop()
    receipts = world.receipts_log()
    counts = Counter(r["subject"] for r in receipts)
    lost = sorted(set(delivered) - set(counts))
    repeated = [s for s, c in counts.items() if c > 1]
    blameless = [
        s for s in repeated if not any(r["pid"] in suspects for r in receipts if r["subject"] == s)
    ]
    ledger = store.ledger_count()
    store.close()
    _drop_schema(admin, schema)
    admin.dispose()
    graph.stop()
    ews.stop()
    tokens.stop()

    print(
        f"cluster: {args.replicas} replicas, {mailbox_count} mailboxes, lease {lease:g} s, "
        f"renew {renew:g} s, feed {rate:g} msg/s"
    )
    print(
        f"delivered {len(delivered)}, handed over {len(counts)}, ledger {ledger}, lost {len(lost)}"
    )
    print(
        f"duplicates {len(repeated)} ({len(repeated) - len(blameless)} from a killed or paused "
        f"replica's in-flight work, {len(blameless)} from others)"
    )
    for kind, times in takeovers.items():
        print(
            f"takeover after {kind}: {len(times)} mailboxes, p50 {_percentile(times, 0.5)} s, "
            f"p95 {_percentile(times, 0.95)} s, max {_percentile(times, 1.0)} s"
            + (f", mean {statistics.mean(times):.2f} s" if times else "")
        )
    print(
        f"longest without a live lease: {owners.longest_unowned:.2f} s (a dead replica's lease "
        f"counts until it expires; with it, under lease + renewal = {goal:g} s is the goal, "
        f"see the takeover figures)"
    )
    unpolled_goal = lease + args.interval
    print(
        f"longest unowned (no live lease, or held by a SIGKILLed or SIGSTOPped replica): "
        f"{owners.longest_unpolled:.2f} s (goal: at most lease + one interval = "
        f"{unpolled_goal:g} s: {'met' if owners.longest_unpolled <= unpolled_goal else 'MISSED'})"
    )
    for label, spread, ok in balance:
        print(f"balance {label}: {spread} (within ±10 % or ±1 of N/R: {ok})")
    failures = []
    if lost:
        failures.append(f"lost {len(lost)}: {lost[:5]}")
    if blameless:
        failures.append(f"repeated by a replica neither killed nor paused: {blameless[:5]}")
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
