"""``ews-listener run`` and ``ews-listener once``: the process around the pollers.

Push notifications (issue 15): for each protocol with mailboxes whose ``notification_mode`` is not
"off", its factory's ``notifications(watches, wake=scheduler.request_poll, hooks)`` builds one
channel; its HTTP routes (Graph's webhook) are mounted on the service's HTTP server before that
starts, and the channels start after the scheduler, so the first poll request finds it running.
With several replicas the channels start with no watches: a mailbox's watch is added when this
replica acquires its lease and removed before the lease goes (``listener.cluster.Subscriptions``),
so each subscription is held by its mailbox's owner only.

Shutdown happens in a fixed order (dramatiq's ``Worker.stop`` habit), each step for a reason:

0. stop the notification channels: they may still talk to the server (deleting Graph
   subscriptions) while the sessions are open and before ``app.stop`` refuses new requests, and
   no poll request arrives once scheduling stops;
1. stop scheduling: no poll starts after the signal;
2. ask running polls to stop: no new hand-over starts, those in flight (up to each mailbox's
   ``handler_concurrency``) finish, and what was reached is committed without moving the sync
   state past the messages not yet handed over;
3. wait for them, at most ``service.shutdown_grace`` seconds; with several replicas, then
   release this replica's leases (its work is committed: the next owner repeats nothing), so
   another replica takes the mailboxes over at its next lease tick instead of after expiry;
4. close handlers, EWS sessions and the state store, in that order (handlers may still write).

A handler that outlives the grace period is abandoned: its message was not committed, so it is
handed over again, with the same idempotency key, at the next start.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from listener.app import App
from listener.cluster import LeaseManager, Subscriptions, borrow, join, share_caps
from listener.config.models import notification_mode
from listener.errors import EXIT_OK, EXIT_TEMPFAIL, EXIT_UNAVAILABLE
from listener.notify import (
    ChannelState,
    ChannelStatus,
    NotificationChannel,
    NotifyHooks,
    Wake,
    Watch,
    routes_of,
)
from listener.observability import HealthServer, HealthState, Metrics, poll_recorder, systemd
from listener.poller import PollResult
from listener.service import MailboxRunner, poll_all
from listener.store import SqlStateStore

__all__ = ["ChannelWatch", "build_channels", "run_daemon", "run_once", "summary"]

if TYPE_CHECKING:
    from listener.scheduler import Scheduler

log = structlog.get_logger("listener.daemon")


# The ``pending_messages`` gauge of every scheduled mailbox is read again this often (seconds),
# in one statement: it follows what a poll cannot see (another replica's or a CLI's commits).
PENDING_REFRESH = 60.0


def _pending_untouched(result: PollResult) -> bool:
    """The poll left the mailbox's retry queue as it was: it took up no due entry (``retried``)
    and parked nothing (a failed hand-over or fetch, or mail gone, is what parks or resolves one;
    new mail handed over, already done or unrouted was never in the queue)."""
    return result.ok and not (result.retried or result.failed or result.gone)


def _wire(app: App, metrics: Metrics, health: HealthState | None) -> list[MailboxRunner]:
    record = poll_recorder(health, metrics) if health is not None else None
    counted: set[str] = set()  # mailboxes whose gauge a poll of this process has set

    def on_result(result: PollResult, seconds: float) -> None:
        if record is not None:
            record(result, seconds)
        else:
            metrics.poll_finished(result.mailbox, ok=result.ok, seconds=seconds)
        if _pending_untouched(result) and result.mailbox in counted:
            return  # one statement less per poll (PENDING_REFRESH catches up the rest)
        try:
            metrics.set_pending(result.mailbox, app.store.pending_count(result.mailbox))
            counted.add(result.mailbox)
        except Exception:
            log.warning("metrics.pending_unavailable", exc_info=True)

    app.providers.on_request = lambda credential, ok: metrics.token_requested(credential, ok=ok)
    for factory in app.factories.values():
        factory.on_request = metrics.source_request(factory.kind)
        factory.on_back_off = metrics.backed_off
    runners = app.runners(on_result)
    for runner in runners:
        if health is not None:
            health.register_mailbox(runner.name, runner.interval)
    return runners


class ChannelWatch(NotifyHooks):
    """What the daemon does when a channel reports: metrics, ``/readyz``, the safety-net interval,
    and ONE log line per change of state (a channel retrying every few seconds logs nothing more
    until it recovers)."""

    def __init__(self, metrics: Metrics, health: HealthState, scheduler: Scheduler) -> None:
        self._metrics = metrics
        self._health = health
        self._scheduler = scheduler
        self._states: dict[tuple[str, str], ChannelState] = {}
        self._lock = threading.Lock()

    def event(self, channel: str, mailbox: str) -> None:
        self._metrics.event(channel, mailbox)
        self._health.channel_event(mailbox)

    def reconnected(self, channel: str, mailbox: str) -> None:
        self._metrics.reconnected(channel, mailbox)

    def renewed(self, channel: str, mailbox: str) -> None:
        self._metrics.renewed(channel, mailbox)

    def rejected(self, channel: str, reason: str) -> None:
        self._metrics.rejected(channel, reason)

    def state_changed(self, channel: str, mailbox: str, status: ChannelStatus) -> None:
        with self._lock:
            before = self._states.get((channel, mailbox))
            self._states[(channel, mailbox)] = status.state
        self._metrics.state_changed(channel, mailbox, status)
        self._health.set_channel(mailbox, status)
        if before == status.state:
            return
        if status.state == ChannelState.OFF:
            return  # stopped: the daemon is shutting down
        connected = status.state == ChannelState.CONNECTED
        self._scheduler.set_healthy(mailbox, connected)
        if connected:
            log.info("notifications.connected", mailbox=mailbox, channel=channel)
        elif status.state == ChannelState.DEGRADED:
            log.warning(
                "notifications.degraded",
                mailbox=mailbox,
                channel=channel,
                reason=status.reason,
                fallback="polling at the configured interval",
            )
            if before == ChannelState.CONNECTED:
                # What the broken channel may have missed: a catch-up, behind the notifications.
                self._scheduler.request_poll(mailbox, urgent=False)


def _cluster_wake(cluster: LeaseManager, scheduler: Scheduler) -> Wake:
    """The channels' ``wake`` with several replicas."""

    def wake(name: str, /, *, urgent: bool = True) -> None:
        if urgent:
            # A notification for a mailbox another replica owns is passed to it (PostgreSQL
            # NOTIFY); one of ours is polled here.
            cluster.forward(name)
        else:
            # A catch-up comes from the holder of the subscription, the lease owner: this one.
            scheduler.request_poll(name, urgent=False)

    return wake


def build_channels(
    app: App,
    names: list[str],
    wake: Wake,
    hooks: NotifyHooks,
    *,
    watched: dict[str, tuple[NotificationChannel, Watch]] | None = None,
) -> list[NotificationChannel]:
    """One channel per protocol whose mailboxes (of ``names``) want push notifications.

    With ``watched`` (several replicas), the channels start with no watches, and ``watched`` is
    filled with each mailbox's channel and watch, to add while this replica holds its lease."""
    settings = app.settings
    by_kind: dict[str, list[Watch]] = {}
    for name in names:
        mailbox = settings.mailboxes[name]
        if notification_mode(settings.notifications, mailbox) == "off":
            continue
        by_kind.setdefault(mailbox.source, []).append(Watch(name=name, mailbox=mailbox))
    channels: list[NotificationChannel] = []
    for kind, watches in sorted(by_kind.items()):
        build = getattr(app.factory(kind), "notifications", None)
        if build is None:
            log.warning(
                "notifications.unavailable",
                source=kind,
                mailboxes=[w.name for w in watches],
                reason=f"this build's {kind} source has no push channel",
                fallback="polling at the configured interval",
            )
            continue
        channel: NotificationChannel = build(watches if watched is None else [], wake, hooks)
        channels.append(channel)
        if watched is not None:
            watched.update((w.name, (channel, w)) for w in watches)
    return channels


def run_daemon(
    settings: Any,
    *,
    http_port: int | None = None,
    fail_fast: bool = False,
    install_signals: bool = True,
    stop_event: threading.Event | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or ``stop_event``); returns the exit code."""
    # Here, not at the top: ``once`` (this module's other entry point) schedules nothing.
    from listener.scheduler import Scheduler  # noqa: PLC0415

    service = settings.service
    metrics = Metrics()
    health = HealthState()
    settings = share_caps(settings)  # several replicas share each credential's caps
    app = App(settings, hooks=metrics)
    if fail_fast:
        problem = _first_unavailable(app)
        if problem:
            log.error("startup.unavailable", error=problem)
            app.close()
            return EXIT_UNAVAILABLE
    runners = _wire(app, metrics, health)
    notifications = settings.notifications
    scheduler = Scheduler(
        max_workers=service.max_workers,
        jitter=service.jitter,
        debounce=notifications.debounce,
        healthy_interval=notifications.healthy_interval,
    )
    scheduler.on_request = metrics.poll_requested
    metrics.polls_waiting.set_function(scheduler.waiting)
    # Several replicas: a mailbox is scheduled while this replica holds its lease.
    cluster = join(app, runners, scheduler, health, metrics)
    for runner in runners if cluster is None else ():
        scheduler.add(runner, cron=settings.mailboxes[runner.name].cron)
    wake: Wake = scheduler.request_poll if cluster is None else _cluster_wake(cluster, scheduler)
    # Several replicas: a mailbox's subscription is held by its lease owner (Subscriptions).
    watched: dict[str, tuple[NotificationChannel, Watch]] | None = None if cluster is None else {}
    channels = build_channels(
        app,
        [r.name for r in runners],
        wake,
        ChannelWatch(metrics, health, scheduler),
        watched=watched,
    )
    if cluster is not None and watched is not None:
        cluster.subscribe(Subscriptions(watched))
        for channel in channels:
            if hasattr(channel, "relay"):  # Graph's: lifecycle notifications go to the owner
                channel.relay = cluster.forward_lifecycle
    for channel in channels:
        for name, status in channel.status().items():
            health.set_channel(name, status)

    stop = stop_event or threading.Event()
    if install_signals:

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("shutdown.requested", signal=signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    server = None
    port = http_port if http_port is not None else service.http_port
    if port is not None:
        server = HealthServer(
            health,
            metrics,
            service.http_host,
            port,
            tls_cert=str(service.tls_cert) if service.tls_cert else None,
            tls_key=str(service.tls_key) if service.tls_key else None,
        )
        for channel in channels:
            for path, receiver in routes_of(channel).items():
                server.add_route(path, receiver)
        server.start()
        log.info("http.listening", url=server.url, endpoints=server.endpoints())

    scheduler.start()
    if isinstance(app.store, SqlStateStore):
        scheduler.every(PENDING_REFRESH, _pending_refresher(app.store, scheduler, metrics))
    for channel in channels:
        channel.start()
    if cluster is not None:
        cluster.start()
    watchdog = (
        systemd.Watchdog(lambda: time.monotonic() - scheduler.heartbeat < 60)
        if service.watchdog
        else None
    )
    if watchdog is not None:
        watchdog.start()
    systemd.ready(f"watching {len(runners)} mailbox(es)")
    log.info("daemon.started", mailboxes=[r.name for r in runners], pid=os.getpid())

    while not stop.wait(1.0):
        health.beat()
    # --- ordered shutdown (see the module docstring) ---
    systemd.stopping("finishing in-flight hand-overs")
    for channel in channels:  # 0
        try:
            channel.stop()
        except Exception:
            log.warning("notifications.stop_failed", channel=channel.kind, exc_info=True)
    scheduler.stop_scheduling()  # 1
    if cluster is not None:
        cluster.freeze()  # claims nothing more; renews until its polls have committed
    app.stop.set()  # 2
    finished = scheduler.wait_idle(service.shutdown_grace)  # 3
    scheduler.shutdown()
    if watchdog is not None:
        watchdog.stop()
    if server is not None:
        server.stop()
    if not finished:
        log.error(
            "shutdown.grace_exceeded",
            grace=service.shutdown_grace,
            still_running=scheduler.running(),
        )
        # Save what the stuck polls' handlers already did (the sync state stays put), so only
        # a handler still running now can be repeated after the restart. The hand-over
        # executors' threads are not daemons, so leave without waiting for them.
        for name, poller in app.pollers.items():
            try:
                if poller.flush():
                    log.warning("shutdown.flushed", mailbox=name)
            except Exception:
                log.error("shutdown.flush_failed", mailbox=name, exc_info=True)
        _leave(cluster)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_OK)
    _leave(cluster)  # the others take the mailboxes over at once: everything is committed
    app.close()  # 4
    log.info("daemon.stopped")
    return EXIT_OK


def _pending_refresher(
    store: SqlStateStore, scheduler: Scheduler, metrics: Metrics
) -> Callable[[], None]:
    """Set the ``pending_messages`` gauge of every mailbox this process schedules (with several
    replicas, those whose lease it holds) from one ``GROUP BY``."""

    def refresh() -> None:
        try:
            counts = store.pending_counts()
        except Exception:
            log.warning("metrics.pending_unavailable", exc_info=True)
            return
        for name in scheduler.mailboxes():
            metrics.set_pending(name, counts.get(name, 0))

    return refresh


def _leave(cluster: LeaseManager | None) -> None:
    if cluster is None:
        return
    try:
        cluster.leave()
    except Exception:
        # The leases then expire on their own: the others take over after lease_seconds.
        log.error("cluster.leave_failed", exc_info=True)


def _first_unavailable(app: App) -> str | None:
    """With ``--fail-fast``: the first credential that cannot get a token, as text.

    Each (credential, resource) the enabled mailboxes use, once: ``get(name)`` would ask with
    all of a credential's scopes, which Entra refuses when they name Graph and Exchange Online.
    """
    tried: set[int] = set()
    for mailbox in app.settings.mailboxes.values():
        if not mailbox.enabled:
            continue
        provider = app.providers.for_mailbox(mailbox)
        if id(provider) in tried:
            continue
        tried.add(id(provider))
        try:
            provider.get_token()
        except Exception as e:
            return f"credential {mailbox.credential!r}: {e}"
    return None


def run_once(settings: Any, *, mailboxes: Sequence[str] | None = None) -> dict[str, PollResult]:
    """Poll every enabled mailbox (or the named ones) once, concurrently.

    In a cluster (a PostgreSQL state database replicas share) only the mailboxes whose leases
    are free: each poll is fenced as a replica's is, and a mailbox a replica owns is polled by
    that replica, asked to now (``listener.cluster.borrow``); its result says by whom.
    """
    metrics = Metrics()
    app = App(share_caps(settings), hooks=metrics)
    try:
        runners = _wire(app, metrics, None)
        if mailboxes:
            unknown = sorted(set(mailboxes) - {r.name for r in runners})
            if unknown:
                raise KeyError(f"no enabled mailbox called {', '.join(unknown)}")
            runners = [r for r in runners if r.name in mailboxes]
        cluster = borrow(app, runners)
        if cluster is None:
            return dict(poll_all(runners, max_workers=settings.service.max_workers))
        try:
            results = dict(poll_all(cluster.runners, max_workers=settings.service.max_workers))
        finally:
            cluster.close()
        for name, owner in cluster.elsewhere.items():
            results[name] = PollResult(name, polled_by=owner)
        return results
    finally:
        app.close()


def summary(results: dict[str, PollResult]) -> tuple[int, dict[str, Any]]:
    """The exit code and machine-readable summary of ``once``."""
    out = {name: asdict(result) | {"ok": result.ok} for name, result in sorted(results.items())}
    code = EXIT_OK if all(r.ok for r in results.values()) else EXIT_TEMPFAIL
    return code, {"ok": code == EXIT_OK, "mailboxes": out}
