"""``ews-listener once`` in a cluster: it polls only mailboxes whose lease it holds.

``once`` against a PostgreSQL state database that replicas use must not poll a mailbox a replica
is polling (two polls of one mailbox could hand a message over twice and move its sync state
sideways). It does not join the cluster (no heartbeat: the replicas' fair shares do not count a
process that is gone in a minute); it *borrows* leases instead:

- ``Borrowed.claim`` takes the leases of the mailboxes that are free or expired (``FOR UPDATE
  SKIP LOCKED``, each claim raising the epoch, exactly as a replica claims) under an id of its
  own, ``once:<host name>-<pid>``, never a replica's (a replica renewing leases under the same
  id would take them for its own);
- its polls run fenced like a replica's (``FencedStore``, ``LeaseStop``), and a thread renews
  the leases every ``renew_seconds`` while they run, so a long backlog keeps them;
- a mailbox a live replica owns is not polled here: its owner is asked to poll it now (PostgreSQL
  ``NOTIFY``, as a push notification reaching a non-owner does), and ``once`` reports it;
- at the end the leases are released (and the replicas told, so they claim them at once); a
  SIGKILLed ``once`` leaves leases that expire after ``lease_seconds``, like a replica's.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import structlog

from listener.store import Fence, LeaseLost, LeaseTable

__all__ = ["Borrowed", "once_id"]

log = structlog.get_logger("listener.cluster")


def once_id() -> str:
    """The lease owner ``once`` claims as: unlike any replica's id."""
    return f"once:{socket.gethostname()}-{os.getpid()}"


class Borrowed:
    """The leases one ``once`` holds while its polls run (module docstring)."""

    def __init__(
        self,
        leases: LeaseTable,
        *,
        owner: str,
        lease: float,
        renew: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.owner = owner
        self._leases = leases
        self._lease = lease
        self._renew = renew
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self, mailboxes: Sequence[str]) -> Mapping[str, int]:
        """Claim the free or expired leases among ``mailboxes``; returns those now held (with
        their epochs). The others are owned by a live replica (or another ``once``)."""
        started = self._monotonic()
        got = self._leases.claim(self.owner, mailboxes, limit=len(mailboxes), lease=self._lease)
        with self._lock:
            self._held.update(got)
            self._valid_until = started + self._lease
        if got and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="once-leases", daemon=True)
            self._thread.start()
        return dict(got)

    def holds(self, fence: Fence) -> bool:
        """Whether ``fence`` is still ours as far as this process knows (the database has the
        last word at commit)."""
        with self._lock:
            return (
                self._held.get(fence.mailbox) == fence.epoch
                and self._monotonic() < self._valid_until
            )

    @contextmanager
    def polling(self, mailbox: str) -> Iterator[Fence]:
        """One poll of ``mailbox`` under its borrowed lease; ``LeaseLost`` when not held."""
        with self._lock:
            epoch = self._held.get(mailbox)
        if epoch is None:
            raise LeaseLost(mailbox, f"{self.owner!r} holds no lease of it")
        fence = Fence(mailbox, self.owner, epoch)
        if not self.holds(fence):
            raise LeaseLost(mailbox, f"{self.owner!r} could not renew its lease in time")
        yield fence

    def _run(self) -> None:
        while not self._stop.wait(self._renew):
            started = self._monotonic()
            try:
                held = self._leases.renew(self.owner, lease=self._lease)
            except Exception:
                log.warning("cluster.once_renew_failed", owner=self.owner, exc_info=True)
                continue  # ``holds`` answers False once the last renewal is a lease old
            with self._lock:
                lost = sorted(m for m, epoch in self._held.items() if held.get(m) != epoch)
                for mailbox in lost:
                    del self._held[mailbox]
                self._valid_until = started + self._lease
            for mailbox in lost:
                log.warning("cluster.lease_lost", mailbox=mailbox, replica=self.owner)

    def close(self) -> list[str]:
        """Stop renewing and release every lease held: the replicas claim them at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            names = sorted(self._held)
            self._held.clear()
        if not names:
            return []
        try:
            return self._leases.release(self.owner, names)
        except Exception:
            # They expire after lease_seconds on their own; nothing of ours is uncommitted.
            log.warning("cluster.once_release_failed", owner=self.owner, exc_info=True)
            return []
