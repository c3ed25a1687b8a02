"""The sd_notify protocol, spoken directly: one AF_UNIX datagram to ``$NOTIFY_SOCKET``.

The protocol is small enough to own (``sd_notify(3)``): newline-separated ``KEY=VALUE``
assignments in one datagram; a socket path starting with ``@`` lives in the abstract namespace
(the ``@`` becomes a NUL byte). Without ``NOTIFY_SOCKET`` (not under systemd, or
``Type=simple``) every call is a no-op returning False, so the daemon calls these unconditionally.

The watchdog (``WatchdogSec=``) wants ``WATCHDOG=1`` more often than ``WATCHDOG_USEC``; the
``Watchdog`` thread pings at half that, and only while a liveness callback says the scheduler is
alive, so a wedged scheduler gets the process killed and restarted by systemd.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Mapping

import structlog

__all__ = [
    "Watchdog",
    "notify",
    "ready",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

log = structlog.get_logger("listener.observability.systemd")


def _address(env: Mapping[str, str]) -> str | None:
    path = env.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    # systemd also allows vsock:CID:PORT; we only speak AF_UNIX.
    return None


def notify(state: str, *, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=polling"``); True when it was sent."""
    address = _address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as e:
        log.warning("systemd.notify_failed", error=str(e))
        return False
    return True


def _clean(text: str) -> str:
    # A newline would start a new assignment: STATUS text must stay one line.
    return " ".join(text.split())


def ready(status_text: str | None = None) -> bool:
    """``READY=1`` (with an optional ``STATUS=``): start-up finished, systemd may go on."""
    message = "READY=1"
    if status_text:
        message += f"\nSTATUS={_clean(status_text)}"
    return notify(message)


def status(text: str) -> bool:
    """``STATUS=…``: one line shown by ``systemctl status``."""
    return notify(f"STATUS={_clean(text)}")


def stopping(status_text: str | None = None) -> bool:
    """``STOPPING=1``: shutdown has begun (systemd waits up to ``TimeoutStopSec=``)."""
    message = "STOPPING=1"
    if status_text:
        message += f"\nSTATUS={_clean(status_text)}"
    return notify(message)


def watchdog() -> bool:
    """``WATCHDOG=1``: the service is alive."""
    return notify("WATCHDOG=1")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds systemd waits for a ``WATCHDOG=1`` before it kills us, or None when unwatched.

    ``WATCHDOG_PID``, when set, names the process meant; any other process (a child that
    inherited the environment) must not ping.
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``interval`` seconds while ``alive()`` is True.

    ``interval`` defaults to half of :func:`watchdog_interval`; without a watchdog configured,
    :meth:`start` does nothing. ``send`` is the ping function (tests pass their own).
    """

    def __init__(
        self,
        alive: Callable[[], bool],
        *,
        interval: float | None = None,
        send: Callable[[], bool] = watchdog,
    ) -> None:
        if interval is None:
            limit = watchdog_interval()
            interval = limit / 2 if limit is not None else None
        self.interval = interval
        self._alive = alive
        self._send = send
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.interval is not None and self.interval > 0

    def start(self) -> Watchdog:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="systemd-watchdog", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.interval is not None
        missed = False
        # The first ping goes out at once: start-up may have used part of the window already.
        while True:
            try:
                healthy = self._alive()
            except Exception:
                log.warning("systemd.liveness_check_failed", exc_info=True)
                healthy = False
            if healthy:
                if self._send():
                    self.pings += 1
                missed = False
            elif not missed:
                # Stay silent so systemd restarts the wedged process; say why once.
                log.error("systemd.watchdog_withheld", reason="scheduler heartbeat is stale")
                missed = True
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
