"""``LeaseManager``: this replica's share of the mailboxes, kept by a thread of its own.

Every ``renew`` seconds (and at once when woken) one tick, in this order:

1. heartbeat: the replica is live while its heartbeat is younger than a lease; the live replicas
   sorted by id give each one its fair share, ``N // R`` plus one for the first ``N % R`` of them
   (the shares add up to N exactly, so after a change the spread is within one mailbox);
2. renew every lease held, in one statement: a lease the database no longer gives back (it
   expired while this replica was paused or cut off, and perhaps was claimed by another) is
   *lost*: its mailbox stops at once;
3. above its share, a replica *drains* the surplus: no new poll starts there, and each lease is
   released at the first tick its mailbox is idle (in-flight work commits first, so the next
   owner repeats nothing);
4. below its share, it claims free or expired mailboxes (``FOR UPDATE SKIP LOCKED``).

Between ticks the manager LISTENs: a replica that joins, leaves or releases leases NOTIFYs, and
the others tick at once instead of at their next renewal (a SIGTERM's mailboxes are taken over
in a fraction of a second); poll requests forwarded by other replicas arrive the same way.

Listeners (``LeaseListener``) hear each change as an event on this thread: the daemon schedules
and unschedules mailboxes from them, and push notifications (issue 15) open and close a
mailbox's subscription from the same events (see README "Running several replicas").

A poll runs under ``polling(mailbox)``, which hands the poll the ``Fence`` (owner, epoch) its
commits are checked against; a commit the database refuses raises ``LeaseLost``, which also
drops the mailbox here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime

import structlog

from listener.store import (
    LEASES_CHANNEL,
    POLL_CHANNEL,
    Fence,
    LeaseLost,
    LeaseSignals,
    LeaseTable,
    parse_poll_request,
)

__all__ = ["LeaseListener", "LeaseManager", "fair_share"]

log = structlog.get_logger("listener.cluster")

# Seconds between looks at the stop flag while listening (``leave`` joins the thread).
_LISTEN_SLICE = 0.25


class LeaseListener:
    """What a replica's ownership changes mean to a part of the daemon; every hook a no-op.

    Called on the lease manager's thread, one event at a time; keep them short.
    """

    def acquired(self, mailbox: str, epoch: int) -> None:
        """This replica owns ``mailbox`` now, under ``epoch``: start polling (and watching) it."""

    def releasing(self, mailbox: str) -> None:
        """``mailbox`` goes to another replica (rebalancing): start no new poll of it."""

    def released(self, mailbox: str) -> None:
        """This replica gave ``mailbox`` up (rebalancing or shutdown), its work committed."""

    def lost(self, mailbox: str) -> None:
        """This replica's lease of ``mailbox`` expired or was taken: stop it at once."""

    def poll_requested(self, mailbox: str) -> None:
        """Poll ``mailbox`` (owned here) soon: a push notification reached some replica."""

    def lifecycle_requested(self, mailbox: str, subscription: str, event: str) -> None:
        """A Graph lifecycle notification for ``mailbox`` (owned here) reached some replica."""


def fair_share(mailboxes: int, live: Sequence[str], me: str) -> int:
    """How many of ``mailboxes`` replica ``me`` should own among the ``live`` replica ids."""
    ranked = sorted(set(live) | {me})
    base, extra = divmod(mailboxes, len(ranked))
    return base + (1 if ranked.index(me) < extra else 0)


class LeaseManager:
    """Claims, renews, balances and releases this replica's mailbox leases."""

    def __init__(
        self,
        leases: LeaseTable,
        mailboxes: Sequence[str],
        *,
        replica: str,
        host: str,
        pid: int,
        lease: float = 15.0,
        renew: float = 5.0,
        busy: Callable[[str], bool] = lambda mailbox: False,
        monotonic: Callable[[], float] = time.monotonic,
        claim_batch: int = 500,
    ) -> None:
        self.replica = replica
        self.lease = lease
        self.renew = renew
        self._leases = leases
        self._mailboxes = sorted(set(mailboxes))
        self._host = host
        self._pid = pid
        self._busy = busy
        self._monotonic = monotonic
        # Claims per tick: each claimed mailbox's ``acquired`` runs on this thread (scheduling,
        # health, a log line), and the next renewal waits for them all. 10,000 claimed at once
        # took longer than a lease on a busy 2-core machine and were all lost again at the next
        # tick, over and over (benchmarks/README.md); in batches, the next tick (renewing first)
        # follows at once until the share is claimed.
        self._claim_batch = claim_batch
        self._listeners: list[LeaseListener] = []
        self._lock = threading.Lock()
        self._owned: dict[str, int] = {}  # mailbox → epoch
        self._draining: set[str] = set()
        self._valid_until = 0.0  # monotonic: the leases are surely still ours before this
        self._polls: dict[str, tuple[datetime, bool]] = {}
        self._frozen = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.live_replicas: list[str] = []

    def subscribe(self, listener: LeaseListener) -> None:
        self._listeners.append(listener)

    # --- what the pollers ask -------------------------------------------------------------------

    def owned(self) -> Mapping[str, int]:
        """The mailboxes this replica owns (draining ones included), with their epochs."""
        with self._lock:
            return dict(self._owned)

    def fence(self, mailbox: str) -> Fence | None:
        """The fence a poll of ``mailbox`` starting now runs under, or None: not ours (any more),
        being handed to another replica, or not renewed within a lease."""
        with self._lock:
            epoch = self._owned.get(mailbox)
            if epoch is None or mailbox in self._draining:
                return None
            if self._monotonic() >= self._valid_until:
                return None
        return Fence(mailbox, self.replica, epoch)

    def holds(self, fence: Fence) -> bool:
        """Whether ``fence`` is still this replica's lease as far as it knows: a poll that
        started under it may start another hand-over (the database has the last word at commit).
        False at once after a pause longer than a lease (the monotonic clock ran on)."""
        with self._lock:
            if self._owned.get(fence.mailbox) != fence.epoch:
                return False
            return self._monotonic() < self._valid_until

    @contextmanager
    def polling(self, mailbox: str) -> Iterator[Fence]:
        """Run one poll of ``mailbox`` under its lease; ``LeaseLost`` when it is not ours, or
        when a commit of the poll was refused (the mailbox is dropped then)."""
        fence = self.fence(mailbox)
        if fence is None:
            raise LeaseLost(mailbox, f"replica {self.replica!r} holds no usable lease")
        try:
            yield fence
        except LeaseLost:
            self._drop([mailbox], epoch=fence.epoch)
            raise

    def record_poll(self, mailbox: str, *, ok: bool) -> None:
        """Note a finished poll; written with the next tick (``cluster status``)."""
        with self._lock:
            self._polls[mailbox] = (datetime.now(UTC), ok)

    # --- the thread -----------------------------------------------------------------------------

    def start(self) -> None:
        """Join the cluster, run the first tick now, then one every ``renew`` seconds."""
        self._leases.join(self.replica, host=self._host, pid=self._pid, mailboxes=self._mailboxes)
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Tick now (another replica released mailboxes, or joined or left)."""
        self._wake.set()

    def forward(self, mailbox: str) -> None:
        """A push notification for ``mailbox`` reached this replica: poll it here if it is ours,
        otherwise ask its owner through PostgreSQL ``NOTIFY`` (a hint: a lost one costs only
        latency, the next scheduled poll finds the mail)."""
        if self.fence(mailbox) is not None:
            self._emit("poll_requested", mailbox)
        elif mailbox in self._mailboxes:
            self._leases.request_poll(mailbox)

    def forward_lifecycle(self, mailbox: str, subscription: str, event: str) -> None:
        """A Graph lifecycle notification (``subscriptionRemoved``, ...) for a subscription this
        replica does not hold: to its channel here if ``mailbox`` is ours, else to the owner
        (NOTIFY), which recreates or reauthorizes it at once."""
        if self.fence(mailbox) is not None:
            self._emit("lifecycle_requested", mailbox, subscription, event)
        elif mailbox in self._mailboxes:
            self._leases.request_poll(mailbox, lifecycle=(subscription, event))

    def _run(self) -> None:
        signals: LeaseSignals | None = None
        try:
            while not self._stop.is_set():
                try:
                    self.tick()
                except Exception:
                    log.warning("cluster.tick_failed", replica=self.replica, exc_info=True)
                    self._expire_if_stale()
                signals = self._wait(signals)
        finally:
            if signals is not None:
                signals.close()

    def _wait(self, signals: LeaseSignals | None) -> LeaseSignals | None:
        """Until the next tick: ``renew`` seconds, or less when another replica joined, left or
        released leases (LISTEN), or ``wake`` was called. Poll requests are passed on meanwhile.
        Listens in short slices, so that ``leave`` is not kept waiting."""
        deadline = self._monotonic() + self.renew
        while not self._stop.is_set() and not self._wake.is_set():
            left = deadline - self._monotonic()
            if left <= 0:
                break
            if signals is None:
                try:
                    signals = self._leases.listen()
                except Exception:
                    log.warning("cluster.listen_failed", replica=self.replica, exc_info=True)
                    self._wake.wait(left)  # ticks on the clock alone until the next try
                    break
            try:
                got = signals.wait(min(left, _LISTEN_SLICE))
            except Exception:
                log.warning("cluster.listen_lost", replica=self.replica, exc_info=True)
                signals.close()
                signals = None
                continue
            if self._signalled(got):
                break
        self._wake.clear()
        return signals

    def _signalled(self, got: Sequence[tuple[str, str]]) -> bool:
        """Pass poll requests on; True when a lease signal from another replica came."""
        again = False
        for channel, payload in got:
            if channel == LEASES_CHANNEL and payload != self.replica:
                again = True
            elif channel == POLL_CHANNEL:
                mailbox, lifecycle = parse_poll_request(payload)
                if self.fence(mailbox) is None:
                    continue
                if lifecycle is None:
                    self._emit("poll_requested", mailbox)
                else:
                    self._emit("lifecycle_requested", mailbox, *lifecycle)
        return again

    def freeze(self) -> None:
        """Claim nothing more (shutting down); renewals go on until ``leave``."""
        self._frozen = True

    def leave(self) -> list[str]:
        """Stop the thread and release every lease (the caller's polls have ended): the others,
        told over NOTIFY, take the mailboxes over at once. Returns the mailboxes released."""
        self._frozen = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        released = self._leases.leave(self.replica)
        with self._lock:
            names = sorted(self._owned)
            self._owned.clear()
            self._draining.clear()
        for name in names:
            self._emit("released", name)
        log.info("cluster.left", replica=self.replica, released=len(released))
        return released

    # --- one tick -------------------------------------------------------------------------------

    def tick(self) -> None:
        """Heartbeat, renew, drain the surplus, claim up to the fair share (module docstring)."""
        live = self._leases.beat(self.replica, host=self._host, pid=self._pid, lease=self.lease)
        self.live_replicas = live
        started = self._monotonic()
        held = self._leases.renew(self.replica, lease=self.lease)
        with self._lock:
            # Forget the lost leases before the others count as fresh: ``holds`` must never
            # answer True for an epoch the database no longer gives back.
            gone = sorted(m for m, epoch in self._owned.items() if held.get(m) != epoch)
            for mailbox in gone:
                del self._owned[mailbox]
                self._draining.discard(mailbox)
            self._valid_until = started + self.lease
            # Held by the database but unknown here (a claim whose answer was lost): keep it.
            unknown = {m: e for m, e in held.items() if m not in self._owned}
            self._owned.update(unknown)
        for mailbox in gone:
            log.warning("cluster.lease_lost", mailbox=mailbox, replica=self.replica)
            self._emit("lost", mailbox)
        for mailbox, epoch in sorted(unknown.items()):
            self._emit("acquired", mailbox, epoch)
        share = fair_share(len(self._mailboxes), live, self.replica)
        self._drain(share)
        with self._lock:
            room = 0 if self._draining or self._frozen else share - len(self._owned)
            polls, self._polls = self._polls, {}
        capped = room > self._claim_batch
        room = min(room, self._claim_batch)
        if room > 0:
            free = [m for m in self._mailboxes if m not in held]
            got = self._leases.claim(self.replica, free, limit=room, lease=self.lease)
            if capped and len(got) == room:
                self._wake.set()  # a full batch: tick again at once (renew, claim the next)
            with self._lock:
                self._owned.update(got)
            for mailbox, epoch in sorted(got.items()):
                log.info("cluster.acquired", mailbox=mailbox, epoch=epoch, replica=self.replica)
                self._emit("acquired", mailbox, epoch)
        self._leases.record_polls(self.replica, polls)

    def _drain(self, share: int) -> None:
        """Release idle draining mailboxes; start draining more while above ``share``."""
        with self._lock:
            idle = sorted(m for m in self._draining if not self._busy(m))
        if idle:
            self._leases.release(self.replica, idle)
            with self._lock:
                for mailbox in idle:
                    self._owned.pop(mailbox, None)
                    self._draining.discard(mailbox)
            for mailbox in idle:
                log.info("cluster.released", mailbox=mailbox, replica=self.replica)
                self._emit("released", mailbox)
        with self._lock:
            surplus = len(self._owned) - share - len(self._draining)
            if surplus <= 0:
                return
            # Idle ones first: they can be released at the next tick.
            keep = sorted(
                (m for m in self._owned if m not in self._draining),
                key=lambda m: (self._busy(m), m),
            )
            chosen = keep[:surplus]
            self._draining.update(chosen)
        for mailbox in chosen:
            self._emit("releasing", mailbox)

    def _drop(self, mailboxes: Sequence[str], *, epoch: int | None = None) -> None:
        """Forget leases the database no longer gives us (``epoch``: only if still that one)."""
        dropped = []
        with self._lock:
            for mailbox in mailboxes:
                if mailbox in self._owned and epoch in (None, self._owned[mailbox]):
                    del self._owned[mailbox]
                    self._draining.discard(mailbox)
                    dropped.append(mailbox)
        for mailbox in dropped:
            log.warning("cluster.lease_lost", mailbox=mailbox, replica=self.replica)
            self._emit("lost", mailbox)

    def _expire_if_stale(self) -> None:
        """The database could not be reached: past the last renewal plus a lease, nothing is
        surely ours any more."""
        with self._lock:
            stale = self._monotonic() >= self._valid_until
            names = sorted(self._owned) if stale else []
        self._drop(names)

    def _emit(self, event: str, mailbox: str, *args: object) -> None:
        for listener in self._listeners:
            try:
                getattr(listener, event)(mailbox, *args)
            except Exception:
                log.error(
                    "cluster.listener_failed", lease_event=event, mailbox=mailbox, exc_info=True
                )
