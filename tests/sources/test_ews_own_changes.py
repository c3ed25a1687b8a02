"""The EWS source leaves its own changes out of later syncs (SyncFolderItems' ``m:Ignore``), and
never an item whose creation the state it syncs from has not passed (issue 14: 0.023 requests a
message). Against the schema-checking EWS emulator: every request, ``m:Ignore`` included, must
validate."""

from __future__ import annotations

from listener.abc import ItemRef, MailSource
from tests.sources.conftest import EwsWorld, mail
from tests.sources.test_contract import drain, held, mids


def _syncs(world: EwsWorld) -> int:
    return sum(1 for r in world.servers.ews.request_log if r.operation == "SyncFolderItems")


def _backlog(world: EwsWorld, source: MailSource, size: int) -> tuple[list[ItemRef], int]:
    """Pages of ``size`` from the start, each page's mail marked read before the next is asked
    for (as the poller does): the refs created, and the SyncFolderItems it took."""
    before = _syncs(world)
    created: list[ItemRef] = []
    state = None
    while True:
        page = source.changes(state, size)
        created.extend(page.created)
        assert source.mark_read(list(page.created)) == [None] * len(page.created)
        state = page.sync_state
        if page.last_page:
            return created, _syncs(world) - before
        assert _syncs(world) - before < 50, "changes never reached its last page"


def test_our_mark_read_does_not_cost_sync_pages(ews: EwsWorld) -> None:
    """Six new mails in pages of two: three syncs, as if nothing had been marked read (without
    ``m:Ignore`` the read-flag changes of the first four fill two more pages)."""
    delivered = [ews.deliver(mail(f"own {n}")) for n in range(6)]
    source = ews.source()
    created, syncs = _backlog(ews, source, 2)
    assert syncs == 3
    assert sorted(str(m) for m in mids(source, created)) == sorted(delivered)
    assert all(held(ews, m).is_read for m in delivered)


def test_a_state_before_the_chain_lists_its_mail_again(ews: EwsWorld) -> None:
    """A sync from an older state (a poll again from its last commit) ignores nothing: the mail
    created after that state and marked read since is created again, not left out."""
    first = ews.deliver(mail("committed"))
    source = ews.source()
    _, committed, _ = drain(source)
    later = [ews.deliver(mail(f"in flight {n}")) for n in range(2)]
    page = source.changes(committed, 1)
    assert source.mark_read(list(page.created)) == [None]
    # the poll failed before committing: the next starts from ``committed`` again
    refs, _, _ = drain(source, committed)
    assert sorted(str(m) for m in mids(source, refs)) == sorted(later)
    assert held(ews, first).is_read is False


def test_a_change_of_a_person_still_comes_after_ours(ews: EwsWorld) -> None:
    """Ignoring our own changes does not hide new mail, nor a person's mail moved in, in the
    pages that ignore them."""
    source = ews.source()
    for n in range(3):
        ews.deliver(mail(f"ours {n}"))
    page = source.changes(None, 3)
    assert source.mark_read(list(page.created)) == [None] * 3
    new = ews.deliver(mail("new"))
    moved = ews.deliver(mail("moved in"), "junkemail")
    ews.move_as_person(moved, "inbox")
    refs, state, _ = drain(source, page.sync_state)
    assert sorted(str(m) for m in mids(source, refs)) == sorted([new, moved])
    assert drain(source, state)[0] == []
