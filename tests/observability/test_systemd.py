"""The sd_notify protocol against a real AF_UNIX datagram socket, and the Watchdog thread."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.observability import systemd


class _NotifySocket:
    """What systemd does: a bound datagram socket that receives notifications."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.settimeout(5)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_NotifySocket]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield _NotifySocket(sock)


def test_messages_arrive(notify_socket: _NotifySocket) -> None:
    """READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 arrive as systemd expects them."""
    assert systemd.ready("polling 2 mailboxes")
    assert notify_socket.receive() == "READY=1\nSTATUS=polling 2 mailboxes"
    assert systemd.status("sales: 3 handed over\nsecond line")
    assert notify_socket.receive() == "STATUS=sales: 3 handed over second line"
    assert systemd.watchdog()
    assert notify_socket.receive() == "WATCHDOG=1"
    assert systemd.stopping()
    assert notify_socket.receive() == "STOPPING=1"


def test_abstract_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET starting with @ is an abstract-namespace address."""
    name = f"ews-listener-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready()
        assert sock.recv(100) == b"READY=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without NOTIFY_SOCKET (or with a dead one) notify returns False and raises nothing."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing"))
    assert systemd.watchdog() is False
    assert systemd.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    """WATCHDOG_USEC gives the interval, only for the process WATCHDOG_PID names."""
    assert systemd.watchdog_interval(env) == expected


def test_watchdog_thread_pings_while_alive(notify_socket: _NotifySocket) -> None:
    """The Watchdog sends WATCHDOG=1 while alive() is True and withholds it otherwise."""
    alive = threading.Event()
    alive.set()
    received: list[str] = []
    dog = systemd.Watchdog(alive.is_set, interval=0.01)
    with dog:
        received.append(notify_socket.receive())
        received.append(notify_socket.receive())
        alive.clear()
    assert received == ["WATCHDOG=1", "WATCHDOG=1"]
    assert dog.pings >= 2


def test_watchdog_withholds_pings_when_stalled() -> None:
    """A liveness callback saying False (or raising) stops the pings."""
    sent = threading.Event()
    checks = threading.Semaphore(0)

    def alive() -> bool:
        checks.release()
        raise RuntimeError("scheduler gone")

    dog = systemd.Watchdog(alive, interval=0.001, send=lambda: sent.set() or True)
    with dog:
        for _ in range(5):
            assert checks.acquire(timeout=5)
    assert not sent.is_set()
    assert dog.pings == 0


def test_watchdog_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit interval the Watchdog uses half of WATCHDOG_USEC, or stays off."""
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.Watchdog(lambda: True).interval == 5.0
    monkeypatch.delenv("WATCHDOG_USEC")
    dog = systemd.Watchdog(lambda: True)
    assert not dog.enabled
    dog.start()
    dog.stop()
    assert dog.pings == 0
