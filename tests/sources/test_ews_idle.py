"""When the EWS source calls a page ``unchanged`` (issue 16: an idle poll then writes nothing),
and that the state it was asked with then stays as good as the new one. Against the
schema-checking EWS emulator, whose states carry the mailbox's change counter: a change in
another folder gives a new state for an unchanged inbox, as Exchange may."""

from __future__ import annotations

import pytest

from listener.abc import MailSource
from tests.sources.conftest import EwsWorld, mail
from tests.sources.test_contract import drain, mids


def _end(source: MailSource) -> str:
    state = source.current_state()
    assert isinstance(state, str)
    return state


def test_an_idle_sync_is_unchanged_and_keeps_its_state(ews: EwsWorld) -> None:
    source = ews.source()
    state = _end(source)
    page = source.changes(state, 512)
    assert page.unchanged
    assert page.last_page
    assert page.created == ()
    assert page.sync_state == state


def test_a_first_sync_or_one_that_lists_anything_is_not_unchanged(ews: EwsWorld) -> None:
    """A sync from the start, one with new mail, and one with only a person's read-flag change
    (no creation, but a change all the same) are never unchanged."""
    source = ews.source()
    assert not source.changes(None, 512).unchanged
    state = _end(source)
    mid = ews.deliver(mail("new"))
    page = source.changes(state, 512)
    assert len(page.created) == 1
    assert not page.unchanged
    ews.read_as_person(mid)
    flagged = source.changes(page.sync_state, 512)
    assert flagged.created == ()
    assert not flagged.unchanged


def test_our_own_ignored_changes_make_the_next_sync_not_unchanged(ews: EwsWorld) -> None:
    """The sync right after we marked mail read leaves those changes out (``m:Ignore``): it
    lists nothing, but the old state is not as good as the new one (it is behind our own
    changes), so it is not unchanged; the sync after that is."""
    source = ews.source()
    state = _end(source)
    ews.deliver(mail("to tidy"))
    page = source.changes(state, 512)
    assert source.mark_read(list(page.created)) == [None]
    after = source.changes(page.sync_state, 512)
    assert after.created == ()
    assert not after.unchanged
    assert source.changes(after.sync_state, 512).unchanged


def test_a_new_state_for_an_unchanged_folder_is_as_good_as_the_old(ews: EwsWorld) -> None:
    """Mail delivered to another folder moves the mailbox's counter: the inbox's sync returns a
    new state and lists nothing (unchanged). Syncing on from the OLD state (what an idle poll
    keeps) lists nothing again, and mail that arrives later exactly once."""
    source = ews.source()
    old = _end(source)
    ews.deliver(mail("elsewhere"), "deleteditems")
    page = source.changes(old, 512)
    assert page.unchanged
    assert page.created == ()
    assert page.sync_state != old
    again = source.changes(old, 512)
    assert again.unchanged
    assert again.created == ()
    mid = ews.deliver(mail("later"))
    created, _, _ = drain(source, old)
    assert mids(source, created) == [mid]


# --- requests reads the environment once per session, not per request -------------------------


def test_sessions_of_our_credentials_read_the_environment_once(ews: EwsWorld) -> None:
    """exchangelib's session for a listener credential does not trust the environment per
    request (proxies, .netrc: ~10 % of an idle poll's CPU), yet a sync still works."""
    source = ews.source()
    source.changes(None, 512)
    protocol = source.account.protocol  # type: ignore[attr-defined]
    session = protocol.get_session()
    try:
        assert session.trust_env is False
    finally:
        protocol.release_session(session)


def test_pinned_proxies_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxies the environment named for the endpoint are kept, NO_PROXY included."""
    import requests

    from listener.sources.ews._transport import pin_environment

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    proxied, direct = requests.Session(), requests.Session()
    pin_environment(proxied, "https://mail.contoso.com/EWS/Exchange.asmx")
    pin_environment(direct, "https://internal.example/EWS/Exchange.asmx")
    assert proxied.proxies["https"] == "http://proxy.example:3128"
    assert "https" not in direct.proxies
    assert not proxied.trust_env
    assert not direct.trust_env
