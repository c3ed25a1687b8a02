"""exchangelib's session pool as the listener installs it: shrinking never deadlocks, never loops.

exchangelib 5.6's ``decrease_poolsize()`` held the pool lock while waiting for a free session, and
``get_session()`` on an empty pool below its maximum takes that lock again: the long chaos run
hung three mailboxes of one credential for good. Its ``ErrorExceededConnectionCount`` handling
retried at once for as long as the shrink succeeded. No network: sessions are only created.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from exchangelib import Configuration
from exchangelib.errors import SessionPoolMinSizeReached
from exchangelib.protocol import FaultTolerance, Protocol
from exchangelib.transport import OAUTH2
from exchangelib.version import EXCHANGE_2016, Version

from listener.abc import AccessToken
from listener.sources.ews._transport import ListenerRetryPolicy, TokenBridge, install_adapter


class _Tokens:
    name = "pool-test"

    def get_token(self, *, force_refresh: bool = False) -> AccessToken:
        return AccessToken("not-a-real-token", datetime.now(UTC) + timedelta(hours=1))

    def invalidate(self, token: str) -> None:
        pass


def _protocol(retry_policy: object) -> Protocol:
    install_adapter()
    config = Configuration(
        service_endpoint="https://127.0.0.1:9/EWS/Exchange.asmx",
        credentials=TokenBridge(_Tokens(), "client", identity="a@example.com"),
        auth_type=OAUTH2,
        version=Version(build=EXCHANGE_2016, api_version="Exchange2016"),
        retry_policy=retry_policy,
        max_connections=4,
    )
    return Protocol(config=config)


@pytest.fixture
def protocol() -> Iterator[Protocol]:
    proto = _protocol(ListenerRetryPolicy())
    yield proto
    proto.close()


def _in_thread(call: Callable[[], object], timeout: float = 5.0) -> BaseException | None:
    """Run ``call`` in a daemon thread; what it raised. Fails the test if it does not return."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:
            raised.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"{call} did not return within {timeout} s (deadlock)"
    return raised[0] if raised else None


def test_shrinking_a_pool_whose_sessions_are_all_in_use_returns_at_once(
    protocol: Protocol,
) -> None:
    """Two sessions, both checked out by other polls, room to grow: no deadlock, no change."""
    held = [protocol.get_session(), protocol.get_session()]
    assert protocol.session_pool_size == 2

    raised = _in_thread(protocol.decrease_poolsize)
    # "No further": exchangelib re-raises ErrorExceededConnectionCount instead of looping.
    assert isinstance(raised, SessionPoolMinSizeReached)
    assert protocol.session_pool_size == 2  # nothing idle to retire

    # The pool still works for everybody else: a third poll gets a session at once.
    assert _in_thread(lambda: protocol.release_session(protocol.get_session())) is None
    for session in held:
        protocol.release_session(session)


def test_shrinking_retires_an_idle_session_down_to_one(protocol: Protocol) -> None:
    first, second = protocol.get_session(), protocol.get_session()
    protocol.release_session(first)
    with pytest.raises(SessionPoolMinSizeReached):
        protocol.decrease_poolsize()
    assert protocol.session_pool_size == 1
    with pytest.raises(SessionPoolMinSizeReached):
        protocol.decrease_poolsize()
    assert protocol.session_pool_size == 1
    protocol.release_session(second)
    assert protocol.get_session() is second  # the one left is still in service


def test_other_configurations_keep_exchangelibs_own_shrink() -> None:
    """A configuration that is not the listener's (another retry policy) is left as it was."""
    proto = _protocol(FaultTolerance(max_wait=1))
    try:
        first, second = proto.get_session(), proto.get_session()
        proto.release_session(first)
        proto.decrease_poolsize()  # exchangelib's: takes the idle session, raises nothing
        assert proto.session_pool_size == 1
        proto.release_session(second)
    finally:
        proto.close()
