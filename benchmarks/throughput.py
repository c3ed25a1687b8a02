"""Throughput: ``ews-listener once`` against the naive exchangelib loop, on the same messages.

Usage::

    .venv/bin/python benchmarks/throughput.py [--messages 5000] [--batch-size 100]
        [--mailboxes 1] [--quick] [--sweep] [--no-naive]

What runs where: the emulator (token server + EWS) in a spawned child process; the daemon as a
subprocess (the real CLI, ``python -m listener once``) with a python handler that only counts;
the naive loop in this process, against a fresh copy of the same messages in other mailboxes::

    for m in inbox.filter(is_read=False):
        handle(m); m.is_read = True; m.save(update_fields=["is_read"])

repeated until a pass finds nothing (marking items read while paging a filter on ``is_read=False``
shifts FindItem's offsets, so a single pass skips messages; the passes are reported).

``--sweep`` runs the daemon at batch sizes 10, 25, 50, 100, 200, 512 and writes
``benchmarks/results/throughput_sweep.csv`` (batch_size, messages, seconds, messages_per_s,
ews_requests, requests_per_message, token_requests).

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
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    CLIENT_ID,
    CLIENT_SECRET,
    EmulatorProcess,
    EmulatorStats,
    Endpoints,
    ProcessSampler,
    daemon_argv,
    daemon_env,
    make_messages,
    print_table,
    workdir,
    write_config,
)

__all__ = ["DaemonRun", "NaiveRun", "main", "run_daemon_once", "run_naive"]

SWEEP_SIZES = (10, 25, 50, 100, 200, 512)
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

    @property
    def rate(self) -> float:
        return self.handled / self.seconds if self.seconds else 0.0


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


def _deliver(emu: EmulatorProcess, addresses: list[str], total: int, tag: str) -> None:
    emu.add_mailboxes(addresses)
    for n, address in enumerate(addresses):
        share = total // len(addresses) + (1 if n < total % len(addresses) else 0)
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
) -> DaemonRun:
    """Deliver ``messages`` to fresh mailboxes, then time one ``ews-listener once`` over them."""
    assert emu.endpoints is not None
    addresses = [f"{tag}-{n}@contoso.com" for n in range(mailboxes)]
    _deliver(emu, addresses, messages, tag)
    run_dir = root / tag
    run_dir.mkdir()
    config = write_config(
        run_dir / "config.toml",
        emu.endpoints,
        addresses,
        state_url=f"sqlite:///{run_dir / 'state.db'}",
        batch_size=batch_size,
        start_from="all",
    )
    count_file = run_dir / "handled"
    emu.clear_log()
    before = emu.stats()
    started = time.perf_counter()
    process = subprocess.Popen(
        daemon_argv("once", config),
        env=daemon_env(count_file),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sampler = ProcessSampler(process.pid, period=0.2).start()
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        sampler.stop()
    seconds = time.perf_counter() - started
    after = emu.stats()
    handled = int(count_file.read_text()) if count_file.exists() else 0
    if process.returncode != 0 or handled != messages:
        print(
            f"!! once exited {process.returncode}, handled {handled}/{messages}:\n{output[-3000:]}"
        )
    left = sum(emu.unread(a) for a in addresses)
    if left:
        print(f"!! {left} messages are still unread after once")
    samples = sampler.samples
    return DaemonRun(
        batch_size=batch_size,
        messages=messages,
        handled=handled,
        seconds=seconds,
        exit_code=process.returncode,
        cpu_seconds=samples[-1][2] if samples else 0.0,
        peak_rss_mb=max((s[1] for s in samples), default=0.0),
        emulator=after,
        emulator_cpu=after.cpu_seconds - before.cpu_seconds,
        tokens=after.token_requests - before.token_requests,
    )


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


def _handle(message: Any) -> None:
    """The naive loop's handler: as trivial as the daemon's counter."""


def run_naive(
    emu: EmulatorProcess, *, messages: int, mailboxes: int, tag: str, max_passes: int = 50
) -> NaiveRun:
    """Deliver ``messages`` to fresh mailboxes and process them with the hand-written loop."""
    assert emu.endpoints is not None
    addresses = [f"{tag}-{n}@contoso.com" for n in range(mailboxes)]
    _deliver(emu, addresses, messages, tag)
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


def _baseline(emu: EmulatorProcess, root: Path) -> float:
    """Wall time of ``once`` on an empty mailbox: the cost that does not depend on N."""
    run = run_daemon_once(emu, root, messages=0, batch_size=100, mailboxes=1, tag="empty")
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
        default=0.0,
        help="milliseconds added to every EWS answer (a WAN round trip; loopback is ~1 ms)",
    )
    parser.add_argument(
        "--naive-messages", type=int, default=None, help="messages for the naive loop (default N)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = min(args.messages, 500)
    if args.messages < args.mailboxes:
        parser.error("--messages must be at least --mailboxes")

    with workdir(args.keep) as root, EmulatorProcess(root) as emu:
        print(
            f"scratch {root}; emulator pid {emu.pid}; "
            f"daemon: {' '.join(daemon_argv('once', Path('CONFIG'))[1:])}"
        )
        emu.set_latency(args.latency / 1000)
        fixed = _baseline(emu, root)
        print(f"fixed cost of one `once` (empty mailbox): {fixed:.2f} s\n")
        if args.sweep:
            _sweep(emu, root, args, fixed)
            return 0
        run = run_daemon_once(
            emu,
            root,
            messages=args.messages,
            batch_size=args.batch_size,
            mailboxes=args.mailboxes,
            tag="daemon",
        )
        naive = None
        if not args.no_naive:
            naive = run_naive(
                emu,
                messages=args.naive_messages or args.messages,
                mailboxes=args.mailboxes,
                tag="naive",
            )
        _report(args, run, naive, fixed)
        return 0 if run.exit_code == 0 and run.handled == args.messages else 1


def _report(args: argparse.Namespace, run: DaemonRun, naive: NaiveRun | None, fixed: float) -> None:
    net = run.handled / max(run.seconds - fixed, 1e-6)
    rows: list[list[object]] = [
        [
            "ews-listener once",
            f"{run.handled}/{run.messages}",
            f"{run.seconds:.2f}",
            f"{run.rate:.1f}",
            f"{net:.1f}",
            f"{run.emulator.requests / max(run.handled, 1):.4f}",
            run.tokens,
        ]
    ]
    if naive is not None:
        rows.append(
            [
                f"naive loop ({naive.passes} passes)",
                f"{naive.handled}/{naive.messages}",
                f"{naive.seconds:.2f}",
                f"{naive.rate:.1f}",
                "-",
                f"{naive.emulator.requests / max(naive.handled, 1):.4f}",
                naive.tokens,
            ]
        )
    print(
        f"{args.messages} messages, {args.mailboxes} mailbox(es), batch size {args.batch_size}, "
        f"added EWS latency {args.latency:g} ms\n"
    )
    print_table(["", "handled", "seconds", "msg/s", "msg/s net", "EWS req/msg", "token req"], rows)
    print()
    print(f"daemon EWS requests per message: {_per_message(run.emulator, run.handled)}")
    if run.emulator.by_error:
        print(f"daemon EWS errors: {dict(run.emulator.by_error)}")
    print(f"daemon peak RSS {run.peak_rss_mb:.0f} MB")
    if naive is not None:
        print(f"naive EWS requests per message: {_per_message(naive.emulator, naive.handled)}")
        ratio = run.rate / naive.rate if naive.rate else float("inf")
        print(
            f"\nratio ews-listener / naive: {ratio:.1f}x end to end "
            f"({net / naive.rate if naive.rate else float('inf'):.1f}x net of the fixed cost); "
            f"goal >= 5x: {'met' if ratio >= 5 else 'NOT met'}"
        )
    per_message = run.emulator.requests / max(run.handled, 1)
    print(
        f"EWS requests per message {per_message:.4f} at batch size {args.batch_size}; goal <= 0.05"
        f" at 100: {'met' if per_message <= 0.05 else 'NOT met'}"
    )
    print("\nwhat limits these figures:")
    for line in _limits(run, fixed):
        print(f"  - {line}")
    if naive is not None:
        per_request = naive.seconds / max(naive.emulator.requests, 1) * 1000
        print(
            f"  - naive loop: {per_request:.1f} ms per round trip, "
            f"{naive.emulator.requests} round trips: latency-bound by design"
        )


if __name__ == "__main__":
    sys.exit(main())
