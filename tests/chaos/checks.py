"""The chaos run's verdict: invariants over the state database, the receipt log and the logs.

``verify`` reads what the run left behind and returns a ``Verdict``: the figures to print and
the list of broken invariants (empty when the listener kept every promise):

- every delivered message is in the ledger exactly once, or (only ``[poison]`` ones) dead-lettered
  with ``permanent = 1``; nothing else is dead-lettered and nothing is left in ``pending``;
- a key has more than one receipt only when every receipt but the last came from a daemon that was
  SIGKILLed after writing it (the message was in flight at the kill), and there are at most
  ``kills x concurrent pages x batch size`` of them;
- no log line of any daemon lifetime holds a client secret or an issued access token;
- RSS within each lifetime does not grow grossly from its first third to its last third.
"""

from __future__ import annotations

import collections
import math
import re
import sqlite3
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from tests.chaos.handler import read as read_receipts
from tests.chaos.world import Lifetime

__all__ = [
    "Delivered",
    "Verdict",
    "drained",
    "leaked_secrets",
    "percentile",
    "rss_growth",
    "verify",
]

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}")


@dataclass(frozen=True)
class Delivered:
    """One message the chaos process filed in a mailbox."""

    address: str
    item_id: str
    message_id: str
    poison: bool
    at: float  # time.time() when ``deliver`` returned


@dataclass
class Verdict:
    """Figures of the run and the invariants it broke."""

    figures: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # (seconds since the first delivery, delay from delivery to the first hand-over)
    delays: list[tuple[float, float]] = field(default_factory=list)

    def fail(self, what: str, examples: Iterable[object] = ()) -> None:
        shown = list(examples)[:5]
        self.failures.append(f"{what}" + (f"; e.g. {shown}" if shown else ""))


def _mid(value: object) -> str:
    return str(value or "").strip().strip("<>").lower()


def _query(state: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=10)
    try:
        return list(db.execute(sql))
    finally:
        db.close()


def drained(state: Path, delivered: Sequence[Delivered]) -> tuple[int, int]:
    """(messages still outstanding, pending rows): outstanding = neither in the ledger nor
    dead-lettered. Errors reading a database being written count as not drained."""
    try:
        handed = {_mid(r[0]) for r in _query(state, "SELECT internet_message_id FROM ledger")}
        dead = {r[0] for r in _query(state, "SELECT item_id FROM dead_letters")}
        pending = _query(state, "SELECT count(*) FROM pending")[0][0]
    except sqlite3.Error:
        return len(delivered), -1
    left = sum(1 for d in delivered if _mid(d.message_id) not in handed and d.item_id not in dead)
    return left, int(pending)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 to 1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


def rss_growth(samples: Sequence[tuple[float, float]]) -> float | None:
    """Mean RSS of the last third over the first third, minus one; None for < 6 samples."""
    if len(samples) < 6:
        return None
    third = len(samples) // 3
    first = statistics.fmean(v for _, v in samples[:third])
    last = statistics.fmean(v for _, v in samples[-third:])
    return last / first - 1


def leaked_secrets(
    logs: Iterable[Path], secrets: Sequence[str], tokens: Sequence[str]
) -> list[str]:
    """``file:line: what`` for every log line holding a secret, an issued token or a JWT."""
    needles: dict[str, str] = {}
    for secret in secrets:
        for spelling in {secret, quote(secret, safe=""), quote_plus(secret)}:
            needles[spelling] = "client secret"
    for token in tokens:
        # The signature is unique per token; a truncated token still shows its payload.
        _header, payload, signature = token.split(".")
        needles[signature] = "access token (signature)"
        needles[payload[:40]] = "access token (payload)"
    found = []
    for path in logs:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            hits = [what for needle, what in needles.items() if needle in line]
            if _JWT.search(line):
                hits.append("JWT-shaped text")
            if hits:
                found.append(f"{path.name}:{number}: {', '.join(sorted(set(hits)))}")
    return found


def verify(
    *,
    state: Path,
    receipts: Path,
    delivered: Sequence[Delivered],
    lifetimes: Sequence[Lifetime],
    concurrency: int,
    batch_size: int,
    secrets: Sequence[str],
    tokens: Sequence[str],
    rss_limit: float | None,
) -> Verdict:
    """Check every invariant of the module docstring; see there."""
    verdict = Verdict()
    by_mid = {_mid(d.message_id): d for d in delivered}
    ledger = _query(state, "SELECT idempotency_key, handler, internet_message_id FROM ledger")
    letters = _query(state, "SELECT item_id, subject, permanent, error FROM dead_letters")
    pending = _query(state, "SELECT item_id, attempts, last_error FROM pending")

    # --- ledger: each non-poison message exactly once, nothing unknown --------------------------
    ledger_by_mid = collections.Counter(_mid(mid) for _, _, mid in ledger)
    keys = collections.Counter(key for key, _, _ in ledger)
    if any(c > 1 for c in keys.values()):
        verdict.fail("ledger keys repeat", [k for k, c in keys.items() if c > 1])
    lost = [d for d in delivered if not d.poison and ledger_by_mid[_mid(d.message_id)] == 0]
    if lost:
        verdict.fail(f"{len(lost)} delivered message(s) never reached the ledger", lost)
    twice = [mid for mid, c in ledger_by_mid.items() if c > 1]
    if twice:
        verdict.fail(f"{len(twice)} message(s) are in the ledger more than once", twice)
    unknown = [mid for mid in ledger_by_mid if mid not in by_mid]
    if unknown:
        verdict.fail(f"{len(unknown)} ledger entries for messages never delivered", unknown)
    poisoned_ok = [d for d in delivered if d.poison and ledger_by_mid[_mid(d.message_id)]]
    if poisoned_ok:
        verdict.fail(f"{len(poisoned_ok)} poisoned message(s) reached the ledger", poisoned_ok)

    # --- dead letters: exactly the poisoned ones, permanent, once each ---------------------------
    letters_by_item = collections.Counter(item for item, _, _, _ in letters)
    poison = [d for d in delivered if d.poison]
    missing = [d for d in poison if letters_by_item[d.item_id] == 0]
    if missing:
        verdict.fail(f"{len(missing)} poisoned message(s) never dead-lettered", missing)
    repeated = [d for d in poison if letters_by_item[d.item_id] > 1]
    if repeated:
        verdict.fail(f"{len(repeated)} poisoned message(s) dead-lettered more than once", repeated)
    wrong = [
        (subject, error)
        for _item, subject, permanent, error in letters
        if "[poison]" not in subject or not permanent
    ]
    if wrong:
        verdict.fail(f"{len(wrong)} dead letter(s) without a permanent poison reason", wrong)
    if pending:
        verdict.fail(f"{len(pending)} item(s) stuck in pending", pending)

    # --- receipts: duplicates only for what was in flight at a SIGKILL ---------------------------
    receipts_by_key: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for receipt in read_receipts(receipts):
        receipts_by_key[str(receipt["key"])].append(receipt)
    killed = {lt.pid: lt.ended for lt in lifetimes if lt.ended_by == "SIGKILL"}
    unexplained = []
    duplicated = 0
    for key, got in receipts_by_key.items():
        if len(got) < 2:
            continue
        duplicated += 1
        got.sort(key=lambda r: float(r["at"]))
        for earlier in got[:-1]:
            kill_at = killed.get(int(earlier["pid"]))
            if kill_at is None or float(earlier["at"]) > kill_at:
                unexplained.append((key[:12], [(r["pid"], round(float(r["at"]), 2)) for r in got]))
                break
    if unexplained:
        verdict.fail(
            f"{len(unexplained)} key(s) handed over again without a SIGKILL in between",
            unexplained,
        )
    bound = len(killed) * concurrency * batch_size
    if duplicated > bound:
        verdict.fail(f"{duplicated} duplicated keys exceed kills x pages x batch = {bound}")
    no_receipt = [key for key in keys if key not in receipts_by_key]
    if no_receipt:
        verdict.fail(f"{len(no_receipt)} ledger entries without a receipt", no_receipt)

    # --- delay from delivery to the first successful hand-over ---------------------------------
    first_at: dict[str, float] = {}
    for got in receipts_by_key.values():
        mid = _mid(got[0]["message_id"])
        first_at[mid] = min(float(r["at"]) for r in got)
    delays = [first_at[m] - d.at for m, d in by_mid.items() if m in first_at]
    start = min((d.at for d in by_mid.values()), default=0.0)
    verdict.delays = sorted(
        (d.at - start, first_at[m] - d.at) for m, d in by_mid.items() if m in first_at
    )

    # --- lifetimes: crashes, SIGTERM exit codes, RSS -------------------------------------------
    crashed = [(lt.number, lt.returncode) for lt in lifetimes if lt.ended_by == "crash"]
    if crashed:
        verdict.fail(f"{len(crashed)} daemon lifetime(s) ended on their own", crashed)
    bad_term = [
        (lt.number, lt.ended_by, lt.returncode)
        for lt in lifetimes
        if lt.ended_by and lt.ended_by.startswith("SIGTERM") and lt.returncode != 0
    ]
    if bad_term:
        verdict.fail("SIGTERM did not end the daemon with exit 0 in time", bad_term)
    growths = {lt.number: rss_growth(lt.rss) for lt in lifetimes}
    measured = {n: g for n, g in growths.items() if g is not None}
    if rss_limit is not None:
        leaking = {n: round(g, 2) for n, g in measured.items() if g > rss_limit}
        if leaking:
            verdict.fail(f"RSS grew more than {rss_limit:.0%} within a lifetime", leaking.items())
    all_rss = [v for lt in lifetimes for _, v in lt.rss]

    # --- secrets -------------------------------------------------------------------------------
    leaks = leaked_secrets((lt.log for lt in lifetimes), secrets, tokens)
    if leaks:
        verdict.fail(f"{len(leaks)} log line(s) hold a secret or a token", leaks)
    log_lines = sum(len(lt.log.read_bytes().splitlines()) for lt in lifetimes if lt.log.exists())

    longest = max(lifetimes, key=lambda lt: len(lt.rss), default=None)
    verdict.figures.update(
        {
            "messages delivered": len(delivered),
            "poisoned (dead-letter expected)": len(poison),
            "ledger entries": len(ledger),
            "dead letters": len(letters),
            "receipts": sum(len(v) for v in receipts_by_key.values()),
            "duplicated keys": duplicated,
            "duplicated keys without a SIGKILL between": len(unexplained),
            "duplicate bound (kills x pages x batch)": bound,
            "delay p50 s": round(percentile(delays, 0.50), 2),
            "delay p95 s": round(percentile(delays, 0.95), 2),
            "delay p99 s": round(percentile(delays, 0.99), 2),
            "delay max s": round(max(delays), 2) if delays else float("nan"),
            "daemon lifetimes": len(lifetimes),
            "RSS MB min/max": (f"{min(all_rss):.0f}/{max(all_rss):.0f}" if all_rss else "n/a"),
            "RSS growth, longest lifetime": (
                f"{growths[longest.number]:+.1%} over {len(longest.rss)} samples"
                if longest is not None and growths.get(longest.number) is not None
                else "n/a"
            ),
            "RSS growth, worst lifetime": (f"{max(measured.values()):+.1%}" if measured else "n/a"),
            "daemon log lines scanned": log_lines,
            "access tokens issued (scanned for)": len(tokens),
        }
    )
    return verdict
