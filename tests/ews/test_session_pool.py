"""exchangelib's session pool as the listener installs it: shrinking never deadlocks.

exchangelib 5.6's ``decrease_poolsize()`` held the pool lock while waiting for a free session, and
``get_session()`` on an empty pool below its maximum takes that lock again: the long chaos run
hung three mailboxes of one credential for good. No network: sessions are only created.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from exchangelib import Configuration
from exchangelib.errors import SessionPoolMinSizeReached
from exchangelib.protocol import Protocol
from exchangelib.transport import OAUTH2
from exchangelib.version import EXCHANGE_2016, Version

from listener.abc import AccessToken
from listener.ews._transport import ListenerRetryPolicy, TokenBridge, install_adapter


class _Tokens:
    name = "pool-test"

    def get_token(self, *, force_refresh: bool = False) -> AccessToken:
        return AccessToken("not-a-real-token", datetime.now(UTC) + timedelta(hours=1))

    def invalidate(self, token: str) -> None:
        pass


@pytest.fixture
def protocol() -> Iterator[Protocol]:
    install_adapter()
    config = Configuration(
        service_endpoint="https://127.0.0.1:9/EWS/Exchange.asmx",
        credentials=TokenBridge(_Tokens(), "client", identity="a@example.com"),
        auth_type=OAUTH2,
        version=Version(build=EXCHANGE_2016, api_version="Exchange2016"),
        retry_policy=ListenerRetryPolicy(),
        max_connections=4,
    )
    proto = Protocol(config=config)
    yield proto
    proto.close()


def _in_thread(call: object, timeout: float = 5.0) -> bool:
    """Run ``call`` in a daemon thread; whether it returned within ``timeout``."""
    thread = threading.Thread(target=call, daemon=True)  # type: ignore[arg-type]
    thread.start()
    thread.join(timeout)
    return not thread.is_alive()


def test_shrinking_a_pool_whose_sessions_are_all_in_use_returns_at_once(
    protocol: Protocol,
) -> None:
    """Two sessions, both checked out by other polls, room to grow: the shrink leaves it be."""
    held = [protocol.get_session(), protocol.get_session()]
    assert protocol.session_pool_size == 2

    assert _in_thread(protocol.decrease_poolsize), "decrease_poolsize() deadlocked"
    assert protocol.session_pool_size == 2  # nothing idle to retire

    # The pool still works for everybody else: a third poll gets a session at once.
    assert _in_thread(lambda: protocol.release_session(protocol.get_session()))
    for session in held:
        protocol.release_session(session)


def test_shrinking_retires_an_idle_session_down_to_one(protocol: Protocol) -> None:
    first, second = protocol.get_session(), protocol.get_session()
    protocol.release_session(first)
    protocol.decrease_poolsize()
    assert protocol.session_pool_size == 1
    with pytest.raises(SessionPoolMinSizeReached):
        protocol.decrease_poolsize()
    protocol.release_session(second)
    assert protocol.get_session() is second  # the one left is still in service
