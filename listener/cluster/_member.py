"""The daemon's side of a cluster: fenced stores, guarded runners, scheduling by lease events."""

from __future__ import annotations

import math
import os
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from listener.cluster._fenced import FencedStore
from listener.cluster._manager import LeaseListener, LeaseManager
from listener.cluster._oneshot import Borrowed, once_id
from listener.config import cluster_active
from listener.notify import NotificationChannel, Watch
from listener.observability import HealthState, Metrics
from listener.poller import PollResult
from listener.service import MailboxRunner
from listener.store import Fence, SqlStateStore, StoreError

if TYPE_CHECKING:
    from listener.scheduler import Scheduler

__all__ = [
    "LeaseMetrics",
    "OnceInCluster",
    "Scheduling",
    "Subscriptions",
    "borrow",
    "join",
    "replica_id",
    "share_caps",
]

log = structlog.get_logger("listener.cluster")


def replica_id(configured: str | None) -> str:
    """``cluster.replica_id``, or "<host name>-<pid>" (a pod's name in Kubernetes)."""
    return configured or f"{socket.gethostname()}-{os.getpid()}"


def share_caps(settings: Any) -> Any:
    """``settings`` with each credential's ``max_connections`` this replica's share of it.

    Exchange counts concurrent requests per app and mailbox, whichever process sends them; the
    configured cap is the cluster's, and each of ``cluster.replicas`` replicas opens at most
    ``ceil(max_connections / replicas)``. Unchanged when the cluster is off or ``replicas`` is 1.
    """
    replicas = settings.cluster.replicas
    if replicas <= 1 or not cluster_active(settings.cluster, settings.state.url):
        return settings
    credentials = {
        name: config.model_copy(
            update={"max_connections": max(1, math.ceil(config.max_connections / replicas))}
        )
        for name, config in settings.credentials.items()
    }
    return settings.model_copy(update={"credentials": credentials})


class Scheduling(LeaseListener):
    """Schedules the mailboxes this replica owns, and only those; readiness follows."""

    def __init__(
        self,
        scheduler: Scheduler,
        runners: Mapping[str, MailboxRunner],
        crons: Mapping[str, str | None],
        health: HealthState | None,
    ) -> None:
        self._scheduler = scheduler
        self._runners = runners
        self._crons = crons
        self._health = health

    def acquired(self, mailbox: str, epoch: int) -> None:
        runner = self._runners.get(mailbox)
        if runner is None:
            return
        if self._health is not None:
            self._health.register_mailbox(mailbox, runner.interval)
        self._scheduler.add(runner, cron=self._crons.get(mailbox))

    def releasing(self, mailbox: str) -> None:
        self._scheduler.remove(mailbox)

    def released(self, mailbox: str) -> None:
        self._unschedule(mailbox)

    def lost(self, mailbox: str) -> None:
        self._unschedule(mailbox)

    def poll_requested(self, mailbox: str) -> None:
        self._scheduler.request_poll(mailbox)  # debounced and coalesced like a local wake

    def _unschedule(self, mailbox: str) -> None:
        self._scheduler.remove(mailbox)
        if self._health is not None:
            self._health.set_disabled(mailbox)


class Subscriptions(LeaseListener):
    """Each mailbox's push subscription lives with its lease (issue 16, item 4): its watch is
    added to its channel when this replica acquires the lease and removed before the lease goes
    (``releasing``, ``released``), so the next owner finds no subscription of ours; on ``lost``
    it is only forgotten, as the new owner may already have adopted it."""

    def __init__(self, watches: Mapping[str, tuple[NotificationChannel, Watch]]) -> None:
        self._watches = watches

    def acquired(self, mailbox: str, epoch: int) -> None:
        found = self._watches.get(mailbox)
        if found is not None:
            found[0].add(found[1])

    def releasing(self, mailbox: str) -> None:
        self._remove(mailbox, unsubscribe=True)

    def released(self, mailbox: str) -> None:
        self._remove(mailbox, unsubscribe=True)

    def lost(self, mailbox: str) -> None:
        self._remove(mailbox, unsubscribe=False)

    def lifecycle_requested(self, mailbox: str, subscription: str, event: str) -> None:
        found = self._watches.get(mailbox)
        if found is not None:
            found[0].lifecycle(mailbox, subscription, event)

    def _remove(self, mailbox: str, *, unsubscribe: bool) -> None:
        found = self._watches.get(mailbox)
        if found is not None:
            found[0].remove(mailbox, unsubscribe=unsubscribe)


class LeaseMetrics(LeaseListener):
    """The lease events as Prometheus series: leases owned, acquired (takeovers apart), released
    and lost. A claim under an epoch above 1 is a takeover: the mailbox had an owner before (one
    that left, was killed or paused, or handed it over while rebalancing)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def acquired(self, mailbox: str, epoch: int) -> None:
        self._metrics.lease_acquired(takeover=epoch > 1)

    def released(self, mailbox: str) -> None:
        self._metrics.lease_released()

    def lost(self, mailbox: str) -> None:
        self._metrics.lease_lost()


class _Leases(Protocol):
    """What a fenced poll asks of the leases it runs under (``LeaseManager``, ``Borrowed``)."""

    def holds(self, fence: Fence) -> bool: ...

    def polling(self, mailbox: str) -> AbstractContextManager[Fence]: ...


class LeaseStop(threading.Event):
    """A poller's stop signal that is also set while its poll's lease no longer holds.

    The poller starts no hand-over once its stop is set (``listener.pipeline.handover``): a
    replica resumed after a pause past its lease hands over nothing new, only what was in flight
    finishes, and its commit is refused (``LeaseLost``).
    """

    def __init__(self, stop: threading.Event, manager: _Leases, store: FencedStore) -> None:
        super().__init__()
        self._app_stop = stop
        self._manager = manager
        self._store = store

    def is_set(self) -> bool:
        if self._app_stop.is_set() or super().is_set():
            return True
        fence = self._store.fence
        return fence is not None and not self._manager.holds(fence)


@contextmanager
def _guarded(manager: _Leases, store: FencedStore, mailbox: str) -> Iterator[None]:
    with manager.polling(mailbox) as fence:
        store.fence = fence
        yield


def _cluster_store(app: Any) -> SqlStateStore | None:
    """``app``'s store when its configuration makes it one of several replicas, else None; a
    cluster on any other store is refused."""
    settings = app.settings
    if not cluster_active(settings.cluster, settings.state.url):
        return None
    store = app.store
    if not isinstance(store, SqlStateStore):
        raise StoreError("several replicas need the SQL state store on PostgreSQL")
    return store


def join(
    app: Any,
    runners: Sequence[MailboxRunner],
    scheduler: Scheduler,
    health: HealthState | None,
    metrics: Metrics | None = None,
) -> LeaseManager | None:
    """Make this daemon a replica when the configuration says so (``cluster_active``): every
    poller commits through a ``FencedStore``, every runner polls only under its lease, and the
    mailboxes are scheduled as their leases come and go. None when the cluster is off: the
    caller schedules every mailbox itself. Call ``start()`` on the result after the scheduler's.
    """
    store = _cluster_store(app)
    if store is None:
        return None
    settings = app.settings
    config = settings.cluster
    manager = LeaseManager(
        store.leases,
        [r.name for r in runners],
        replica=replica_id(config.replica_id),
        host=socket.gethostname(),
        pid=os.getpid(),
        lease=config.lease_seconds,
        renew=config.renew_seconds,
        busy=lambda mailbox: mailbox in scheduler.running(),
    )
    _fence(app, store, runners, manager)
    for runner in runners:
        runner.on_result = _recording(manager, runner.on_result)
        if health is not None:
            health.set_disabled(runner.name)  # until its lease is ours
    manager.subscribe(
        Scheduling(
            scheduler,
            {r.name: r for r in runners},
            {r.name: settings.mailboxes[r.name].cron for r in runners},
            health,
        )
    )
    if metrics is not None:
        manager.subscribe(LeaseMetrics(metrics))
    log.info(
        "cluster.joining",
        replica=manager.replica,
        lease=config.lease_seconds,
        renew=config.renew_seconds,
        mailboxes=len(runners),
    )
    return manager


def _fence(
    app: Any, store: SqlStateStore, runners: Sequence[MailboxRunner], leases: _Leases
) -> None:
    """Every poller of ``runners`` commits through a ``FencedStore`` and stops when its lease no
    longer holds; every runner polls only under its lease."""
    for runner in runners:
        fenced = FencedStore(store, runner.name)
        poller = app.pollers[runner.name]
        poller.store = fenced
        # The poller reads its stop signal and nothing else of it; App built it with the
        # process's, which this one also watches. Checked: a renamed attribute must not leave
        # a resumed replica handing over (tests/cluster/test_replicas.py guards the behaviour).
        if not isinstance(getattr(poller, "_stop", None), threading.Event):
            raise TypeError("Poller no longer has the _stop event listener.cluster replaces")
        poller._stop = LeaseStop(app.stop, leases, fenced)
        runner.guard = _guard_factory(leases, fenced, runner.name)


@dataclass
class OnceInCluster:
    """``once`` in a cluster (``borrow``): the runners whose leases it holds, and the mailboxes
    their owners were asked to poll instead (mailbox → owner)."""

    leases: Borrowed
    runners: list[MailboxRunner]
    elsewhere: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        """Release the borrowed leases (call after the polls have ended)."""
        released = self.leases.close()
        log.info("cluster.once_released", owner=self.leases.owner, released=len(released))


def borrow(app: Any, runners: Sequence[MailboxRunner]) -> OnceInCluster | None:
    """``ews-listener once`` when the configuration makes this a cluster (``cluster_active``):
    claim the free or expired leases of ``runners``' mailboxes and fence their polls; ask the
    owners of the others to poll them (``listener.cluster._oneshot``). None when the cluster is
    off: ``once`` polls every mailbox itself."""
    store = _cluster_store(app)
    if store is None:
        return None
    settings = app.settings
    config = settings.cluster
    leases = Borrowed(
        store.leases, owner=once_id(), lease=config.lease_seconds, renew=config.renew_seconds
    )
    names = [r.name for r in runners]
    store.leases.ensure(names)
    got = leases.claim(names)
    mine = [r for r in runners if r.name in got]
    _fence(app, store, mine, leases)
    owners = {row.mailbox: row.owner for row in store.leases.leases()}
    elsewhere = {}
    for name in sorted(set(names) - set(got)):
        owner = owners.get(name) or "a commit in progress"
        elsewhere[name] = owner
        store.leases.request_poll(name)  # a hint, as a push notification is: its owner polls
        log.info("cluster.once_forwarded", mailbox=name, owner=owner)
    log.info("cluster.once_borrowed", owner=leases.owner, mailboxes=len(mine))
    return OnceInCluster(leases, mine, elsewhere)


def _guard_factory(manager: _Leases, store: FencedStore, mailbox: str) -> Any:
    return lambda: _guarded(manager, store, mailbox)


def _recording(manager: LeaseManager, on_result: Any) -> Any:
    def record(result: PollResult, seconds: float) -> None:
        on_result(result, seconds)
        if result.error_code != "LeaseLost":
            manager.record_poll(result.mailbox, ok=result.ok)

    return record
