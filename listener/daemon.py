"""``ews-listener run`` and ``ews-listener once``: the process around the pollers.

Shutdown happens in a fixed order (dramatiq's ``Worker.stop`` habit), each step for a reason:

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
from collections.abc import Sequence
from dataclasses import asdict
from types import FrameType
from typing import Any

import structlog

from listener.app import App
from listener.cluster import LeaseManager, join, share_caps
from listener.config.models import notification_mode
from listener.errors import EXIT_OK, EXIT_TEMPFAIL, EXIT_UNAVAILABLE
from listener.notify import NotificationChannel, NotifyHooks, Watch
from listener.observability import HealthServer, HealthState, Metrics, poll_recorder, systemd
from listener.poller import PollResult
from listener.service import MailboxRunner, Scheduler, poll_all

__all__ = ["run_daemon", "run_once", "summary"]

log = structlog.get_logger("listener.daemon")


def _wire(app: App, metrics: Metrics, health: HealthState | None) -> list[MailboxRunner]:
    record = poll_recorder(health, metrics) if health is not None else None

    def on_result(result: PollResult, seconds: float) -> None:
        if record is not None:
            record(result, seconds)
        else:
            metrics.poll_finished(result.mailbox, ok=result.ok, seconds=seconds)
        try:
            metrics.set_pending(result.mailbox, app.store.pending_count(result.mailbox))
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


class _Wakes:
    """Stand-in for the service's ``request_poll`` (issue 15 item 1, built elsewhere): a wake
    of a mailbox runs one more poll of it on this thread, coalesced, and a wake that meets a
    running poll (``MailboxRunner.run`` returns None) is retried until a poll starts after it."""

    def __init__(self, runners: Sequence[MailboxRunner], stop: threading.Event) -> None:
        self._runners = {runner.name: runner for runner in runners}
        self._stop = stop
        self._pending: set[str] = set()
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="wakes", daemon=True)

    def wake(self, name: str) -> None:
        with self._cond:
            self._pending.add(name)
            self._cond.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._pending and not self._stop.is_set():
                    self._cond.wait(0.5)
                names, self._pending = sorted(self._pending), set()
            for name in names:
                runner = self._runners.get(name)
                if runner is not None and runner.run() is None and not self._stop.is_set():
                    self._stop.wait(0.05)
                    self.wake(name)  # busy or backing off: try again shortly


def _channels(app: App, settings: Any, wake: Any) -> list[NotificationChannel]:
    """The push channels of the mailboxes that asked for them, one per source kind."""
    watches: dict[str, list[Watch]] = {}
    for name, mailbox in settings.mailboxes.items():
        if mailbox.enabled and notification_mode(settings.notifications, mailbox) != "off":
            watches.setdefault(mailbox.source, []).append(Watch(name=name, mailbox=mailbox))
    found = []
    for kind, given in watches.items():
        factory = app.factory(kind)
        if hasattr(factory, "notifications") and kind == "ews":
            found.append(factory.notifications(given, wake, NotifyHooks()))
    return found


def run_daemon(
    settings: Any,
    *,
    http_port: int | None = None,
    fail_fast: bool = False,
    install_signals: bool = True,
    stop_event: threading.Event | None = None,
) -> int:
    """Run until SIGTERM/SIGINT (or ``stop_event``); returns the exit code."""
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
    scheduler = Scheduler(max_workers=service.max_workers, jitter=service.jitter)
    # Several replicas: a mailbox is scheduled while this replica holds its lease.
    cluster = join(app, runners, scheduler, health, metrics)
    for runner in runners if cluster is None else ():
        scheduler.add(runner, cron=settings.mailboxes[runner.name].cron)

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
        server = HealthServer(health, metrics, service.http_host, port).start()
        log.info("http.listening", url=server.url, endpoints=server.endpoints())

    scheduler.start()
    wakes = _Wakes(runners, threading.Event())
    channels = _channels(app, settings, wakes.wake)
    if channels:
        wakes.thread.start()
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
    for channel in channels:  # before 1: no wake asks for a poll any more
        channel.stop()
    scheduler.stop_scheduling()  # 1
    wakes._stop.set()
    if cluster is not None:
        cluster.freeze()  # claims nothing more; renews until its polls have committed
    app.stop.set()  # 2
    finished = scheduler.wait_idle(service.shutdown_grace)  # 3
    if wakes.thread.is_alive():
        wakes.thread.join(service.shutdown_grace)
        finished = finished and not wakes.thread.is_alive()
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
        # a handler still running now can be repeated after the restart. Executor threads are
        # not daemons, so leave without waiting for them.
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
    """Poll every enabled mailbox (or the named ones) once, concurrently."""
    metrics = Metrics()
    app = App(settings, hooks=metrics)
    try:
        runners = _wire(app, metrics, None)
        if mailboxes:
            unknown = sorted(set(mailboxes) - {r.name for r in runners})
            if unknown:
                raise KeyError(f"no enabled mailbox called {', '.join(unknown)}")
            runners = [r for r in runners if r.name in mailboxes]
        return dict(poll_all(runners, max_workers=settings.service.max_workers))
    finally:
        app.close()


def summary(results: dict[str, PollResult]) -> tuple[int, dict[str, Any]]:
    """The exit code and machine-readable summary of ``once``."""
    out = {name: asdict(result) | {"ok": result.ok} for name, result in sorted(results.items())}
    code = EXIT_OK if all(r.ok for r in results.values()) else EXIT_TEMPFAIL
    return code, {"ok": code == EXIT_OK, "mailboxes": out}
