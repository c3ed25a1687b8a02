"""The ``MailSource`` contract (issue 13, point 1): every test runs against the fake, EWS on the
EWS emulator and Graph on the Graph emulator, and looks at the outcome through the world's own
view of the mailbox, never through the source under test.

The fake skips only what it cannot model (it holds one folder of one mailbox: there is no other
mailbox or folder to miss); ews and graph never skip.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser

import pytest

from listener.abc import ChangePage, FetchFailure, ItemRef, MailSource, ProbeStep
from listener.errors import Gone, SyncStateLost, Throttled
from listener.model import Address, Message, message_fingerprint, message_id_key
from tests.graph_emulator.conftest import ALICE
from tests.sources.conftest import NOBODY, EwsWorld, GraphWorld, SourceWorld, Stored, mail

ELSEWHERE = "Inbox/Elsewhere"  # a folder beside the watched inbox
DONE = "Inbox/Done"


def drain(
    source: MailSource, state: str | None = None, size: int | None = None
) -> tuple[list[ItemRef], str, list[ChangePage]]:
    """Every page of changes from ``state`` to the end: created refs, final state, the pages."""
    pages: list[ChangePage] = []
    while True:
        page = source.changes(state, size or source.page_limit)
        pages.append(page)
        state = page.sync_state
        if page.last_page:
            return [r for p in pages for r in p.created], state, pages
        assert len(pages) < 100, "changes never reached its last page"


def mids(source: MailSource, refs: list[ItemRef]) -> list[str | None]:
    """The Message-IDs of ``refs``, in order (fetch must turn every one into a Message)."""
    fetched = source.fetch(refs)
    assert all(isinstance(m, Message) for m in fetched), fetched
    return [m.internet_message_id for m in fetched if isinstance(m, Message)]


def one(source: MailSource, ref: ItemRef) -> Message:
    [message] = source.fetch([ref])
    assert isinstance(message, Message), message
    return message


def deliver(world: SourceWorld, *subjects: str, folder: str = "inbox") -> list[str]:
    return [world.deliver(mail(s), folder) for s in subjects]


# --- changes -------------------------------------------------------------------------------------


def test_page_limit_is_a_positive_int(world: SourceWorld) -> None:
    """page_limit is a positive int (what the poller asks ``changes`` for at most)."""
    limit = world.source().page_limit
    assert type(limit) is int
    assert limit > 0


@pytest.mark.parametrize("size", [1, 2])
def test_changes_pages_through_the_folder(world: SourceWorld, size: int) -> None:
    """From None, pages of at most ``max_changes`` name every mail once, the last says so, and
    its state resumes at the end (nothing more)."""
    delivered = deliver(world, "p1", "p2", "p3")
    source = world.source()
    refs, state, pages = drain(source, None, size)
    assert all(len(p.created) <= size for p in pages)
    assert [p.last_page for p in pages][-1] is True
    assert all(not p.last_page for p in pages[:-1])
    assert sorted(str(m) for m in mids(source, refs)) == sorted(delivered)
    assert drain(source, state)[0] == []


def test_new_mail_after_a_state_is_created_exactly_once(world: SourceWorld) -> None:
    """Mail delivered after a state shows up once from it, and not again from the next."""
    deliver(world, "old")
    source = world.source()
    _, state, _ = drain(source)
    new = deliver(world, "new 1", "new 2")
    refs, state, _ = drain(source, state)
    assert sorted(str(m) for m in mids(source, refs)) == sorted(new)
    assert drain(source, state)[0] == []


def test_mail_moved_in_is_created(world: SourceWorld) -> None:
    """Mail a person moves into the folder is created there, once."""
    [mid] = deliver(world, "filed elsewhere", folder=ELSEWHERE)
    source = world.source()
    first, state, _ = drain(source)
    assert first == []
    world.move_as_person(mid, "inbox")
    refs, state, _ = drain(source, state)
    assert mids(source, refs) == [mid]
    assert drain(source, state)[0] == []


def test_deleted_or_moved_out_mail_is_never_created(world: SourceWorld) -> None:
    """Mail deleted or moved away before a sync is not created, from None nor from a state."""
    gone, away, kept = deliver(world, "deleted", "moved away", "kept")
    world.delete_as_person(gone)
    world.move_as_person(away, ELSEWHERE)
    source = world.source()
    refs, state, _ = drain(source)
    assert mids(source, refs) == [kept]
    later_gone, later_away = deliver(world, "deleted later", "moved away later")
    world.delete_as_person(later_gone)
    world.move_as_person(later_away, ELSEWHERE)
    assert drain(source, state)[0] == []


def test_current_state_is_at_the_present_end(world: SourceWorld) -> None:
    """From current_state() only later mail shows up."""
    deliver(world, "before 1", "before 2")
    source = world.source()
    state = source.current_state()
    assert source.changes(state, source.page_limit).created == ()
    new = deliver(world, "after")
    refs, _, _ = drain(source, state)
    assert mids(source, refs) == new


def test_unread_lists_exactly_the_unread(world: SourceWorld) -> None:
    """unread() names the unread mail of the folder: not read, not read since, not elsewhere."""
    unread, also_unread, read_since = deliver(world, "unread", "also unread", "read since")
    world.deliver(mail("read"), is_read=True)
    world.read_as_person(read_since)
    deliver(world, "unread elsewhere", folder=ELSEWHERE)
    source = world.source()
    refs = list(source.unread())
    assert sorted(str(m) for m in mids(source, refs)) == sorted([unread, also_unread])


# --- fetch ---------------------------------------------------------------------------------------


def test_fetch_gives_one_result_per_ref_in_order(world: SourceWorld) -> None:
    """One result per ref, in the order asked; an id the source never issued is a FetchFailure
    in its place (not an exception) that retrying cannot help (EWS and the fake call it gone;
    Graph answers 400 ErrorInvalidIdMalformed, not gone but permanent)."""
    delivered = deliver(world, "f1", "f2", "f3")
    source = world.source()
    refs, _, _ = drain(source)
    by_mid = dict(zip(mids(source, refs), refs, strict=True))
    f1, f2, f3 = (by_mid[m] for m in delivered)
    made_up = ItemRef("AAMkAGI2TG93AAA=")
    results = source.fetch([f3, made_up, f1, f2])
    assert len(results) == 4
    assert [m.internet_message_id if isinstance(m, Message) else None for m in results] == [
        delivered[2],
        None,
        delivered[0],
        delivered[1],
    ]
    failure = results[1]
    assert isinstance(failure, FetchFailure)
    assert failure.ref == made_up
    assert failure.error
    assert failure.gone or not failure.transient
    assert source.fetch([]) == []


@pytest.mark.parametrize("world", ["fake", "ews", "graph"], indirect=True)
def test_mail_deleted_for_good_is_gone(world: SourceWorld) -> None:
    """Mail deleted for good after the sync that named it: FetchFailure(gone=True) in its
    place, not transient (retrying cannot bring it back)."""
    kept, purged = deliver(world, "kept", "purged")
    source = world.source()
    refs, _, _ = drain(source)
    by_mid = dict(zip(mids(source, refs), refs, strict=True))
    world.purge(purged)
    first, second = source.fetch([by_mid[purged], by_mid[kept]])
    assert isinstance(second, Message)
    assert second.internet_message_id == kept
    assert isinstance(first, FetchFailure), first
    assert first.ref == by_mid[purged]
    assert first.gone
    assert not first.transient


def test_message_carries_what_the_pipeline_needs(world: SourceWorld) -> None:
    """A Message names its mailbox, folder, kind and item id; has the Message-ID, subject,
    sender, an aware received time; its key is the documented one (mailbox + Message-ID) and its
    fingerprint that of who sent it when, with which subject."""
    [mid] = deliver(world, "fields")
    source = world.source()
    [ref], _, _ = drain(source)
    message = one(source, ref)
    assert (message.mailbox, message.folder, message.source) == (ALICE, "inbox", world.kind)
    assert message.item_id == ref.item_id
    assert message.internet_message_id == mid
    assert message.subject == "fields"
    who = message.from_ or message.sender
    assert who is not None
    assert who.email == "carol@example.com"
    assert message.received_at is not None
    assert message.received_at.utcoffset() is not None
    assert message.idempotency_key == message_id_key(ALICE, mid)
    expected = Message(
        mailbox=ALICE,
        folder="inbox",
        item_id="-",
        subject="fields",
        from_=Address(email="carol@example.com"),
        sent_at=datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC),  # the Date header of tests' mail
    )
    assert message_fingerprint(message) == message_fingerprint(expected)


def test_content_loads_lazily_and_matches_what_was_delivered(world: SourceWorld) -> None:
    """fetch loads no content; mime() and attachment content are asked of the server when
    wanted, and are what was delivered."""
    payload = bytes(range(256)) * 4
    raw = mail("with a file", files={"data.bin": payload})
    mid = world.deliver(raw)
    source = world.source()
    [ref], _, _ = drain(source)
    message = one(source, ref)
    assert message.bound
    [attachment] = message.attachments
    assert (attachment.name, attachment.size) == ("data.bin", len(payload))
    before = world.traffic()
    mime = message.mime()
    assert world.traffic() > before
    parsed = BytesParser(policy=policy.default).parsebytes(mime)
    assert str(parsed["Message-ID"]).strip() == mid
    assert str(parsed["Subject"]) == "with a file"
    [part] = list(parsed.iter_attachments())
    assert part.get_payload(decode=True) == payload
    before = world.traffic()
    assert attachment.content() == payload
    assert world.traffic() > before


def test_ews_and_graph_agree_on_the_same_mail(both: tuple[EwsWorld, GraphWorld]) -> None:
    """The same stored mail through EWS and Graph: the same key and fingerprint (a switch of
    protocol hands nothing over twice), Message-ID, subject and sender."""
    ews, graph = both
    mid = ews.deliver(mail("one mail, two protocols"))
    through = []
    for world in (ews, graph):
        source = world.source()
        [ref], _, _ = drain(source)
        through.append(one(source, ref))
    by_ews, by_graph = through
    assert by_ews.idempotency_key == by_graph.idempotency_key == message_id_key(ALICE, mid)
    assert message_fingerprint(by_ews) == message_fingerprint(by_graph)
    assert by_ews.internet_message_id == by_graph.internet_message_id == mid
    assert by_ews.subject == by_graph.subject
    assert by_ews.from_ == by_graph.from_
    assert by_ews.received_at == by_graph.received_at


# --- post-processing -----------------------------------------------------------------------------


def _refs(world: SourceWorld, *subjects: str) -> tuple[MailSource, list[str], list[ItemRef]]:
    delivered = deliver(world, *subjects)
    source = world.source()
    refs, _, _ = drain(source)
    by_mid = dict(zip(mids(source, refs), refs, strict=True))
    return source, delivered, [by_mid[m] for m in delivered]


def held(world: SourceWorld, mid: str) -> Stored:
    """How the mailbox holds ``mid`` (seen without the source); it must be there."""
    stored = world.stored(mid)
    assert stored is not None, f"{mid} is not in the mailbox"
    return stored


def assert_only_the_vanished_failed(outcome: list[str | None]) -> None:
    """The outcome of a bulk operation on [ref, vanished ref, ref]: done, an error text, done."""
    assert len(outcome) == 3
    first, vanished, last = outcome
    assert first is None
    assert last is None
    assert isinstance(vanished, str)
    assert vanished


def _vanished(world: SourceWorld, source: MailSource) -> ItemRef:
    """The ref of mail deleted for good after the sync that named it."""
    [mid] = deliver(world, "vanishes")
    refs, _, _ = drain(source)
    [ref] = [r for r in refs if one(source, r).internet_message_id == mid]
    world.purge(mid)
    return ref


def test_mark_read(world: SourceWorld) -> None:
    """mark_read: one None per ref done, an error text for a vanished one; the mail is read."""
    source, delivered, refs = _refs(world, "r1", "r2")
    gone = _vanished(world, source)
    outcome = source.mark_read([refs[0], gone, refs[1]])
    assert_only_the_vanished_failed(outcome)
    assert [held(world, m).is_read for m in delivered] == [True, True]


def test_categorize_keeps_existing_categories(world: SourceWorld) -> None:
    """categorize adds its category beside a person's own, once, per ref."""
    source, delivered, refs = _refs(world, "c1", "c2")
    world.categorize_as_person(delivered[0], "Mine")
    gone = _vanished(world, source)
    outcome = source.categorize([refs[0], gone, refs[1]], "Handled")
    assert_only_the_vanished_failed(outcome)
    assert source.categorize([refs[0]], "Handled") == [None]  # already there: not twice
    assert [held(world, m).categories for m in delivered] == [("Mine", "Handled"), ("Handled",)]


def test_move_creates_the_folder_and_returns_fetchable_refs(world: SourceWorld) -> None:
    """move to a missing folder creates it; one new ref per ref (an error text for a vanished
    one), which fetch accepts; a second move into the folder, now there, works too."""
    source, delivered, refs = _refs(world, "m1", "m2", "m3")
    gone = _vanished(world, source)
    moved = source.move([refs[0], gone, refs[1]], DONE)
    assert len(moved) == 3
    assert_only_the_vanished_failed([None if isinstance(r, ItemRef) else r for r in moved])
    new = [r for r in (moved[0], moved[2]) if isinstance(r, ItemRef)]
    assert mids(source, new) == delivered[:2]
    [again] = source.move([refs[2]], DONE)
    assert isinstance(again, ItemRef)
    assert [held(world, m).folder for m in delivered] == ["inbox/done"] * 3


def test_delete_moves_to_deleted_items(world: SourceWorld) -> None:
    """delete moves each mail to Deleted Items: None per ref done, an error text otherwise."""
    source, delivered, refs = _refs(world, "d1", "d2")
    gone = _vanished(world, source)
    outcome = source.delete([refs[0], gone, refs[1]])
    assert_only_the_vanished_failed(outcome)
    assert [held(world, m).folder for m in delivered] == ["deleteditems"] * 2


def test_find_finds_moved_mail_by_message_id(world: SourceWorld) -> None:
    """find names moved mail in its new folder (the ref fetch accepts) and None for a
    Message-ID nobody sent."""
    source, delivered, refs = _refs(world, "to find", "other")
    assert all(isinstance(r, ItemRef) for r in source.move(refs, DONE))
    found = source.find(DONE, delivered[0])
    assert found is not None
    assert mids(source, [found]) == [delivered[0]]
    assert source.find(DONE, "<nobody-sent-this@example.com>") is None


# --- sync states ---------------------------------------------------------------------------------

# A state of each kind, as a source of that kind hands it out (and one of nobody's).
STATES = {
    "ews": "AQAAAAAAAAADAAAAAAAAAAGwgluLq6+mKqDLRet9qg41",
    "graph": (
        "https://graph.microsoft.com/v1.0/users/alice%40contoso.com/mailFolders('inbox')"
        "/messages/delta?$deltatoken=O49KnnEwoNJiI2_xWyJBQUJGVFZWR0FBQUFB"
    ),
    "fake": "7",
    "nobody": "https://example.com/x",
}


def test_a_state_of_another_kind_is_lost(world: SourceWorld) -> None:
    """A sync state another kind of source issued (a protocol switch) is SyncStateLost."""
    [mid] = deliver(world, "already here")
    source = world.source()
    for kind, state in STATES.items():
        if kind == world.kind:
            continue
        with pytest.raises(SyncStateLost):
            source.changes(state, source.page_limit)
    refs, _, _ = drain(source)  # and the folder syncs again from its start
    assert mids(source, refs) == [mid]


def test_states_do_not_cross_protocols(both: tuple[EwsWorld, GraphWorld]) -> None:
    """A real EWS state given to Graph and a real Graph delta link given to EWS: SyncStateLost."""
    ews, graph = both
    ews.deliver(mail("synced"))
    by_ews, by_graph = ews.source(), graph.source()
    ews_state, graph_state = drain(by_ews)[1], drain(by_graph)[1]
    with pytest.raises(SyncStateLost):
        by_graph.changes(ews_state, by_graph.page_limit)
    with pytest.raises(SyncStateLost):
        by_ews.changes(graph_state, by_ews.page_limit)


def test_an_invalidated_state_is_lost(world: SourceWorld) -> None:
    """A state the server forgot is SyncStateLost; from None the folder syncs again."""
    [mid] = deliver(world, "synced before")
    source = world.source()
    _, state, _ = drain(source)
    world.forget_states()
    with pytest.raises(SyncStateLost):
        source.changes(state, source.page_limit)
    refs, _, _ = drain(source)
    assert mids(source, refs) == [mid]


# --- probe and errors ----------------------------------------------------------------------------


# The fake holds one folder of one mailbox: there is no other one to miss, so these run against
# the servers only (not collected for the fake, rather than skipped).
_SERVERS = pytest.mark.parametrize("world", ["ews", "graph"], indirect=True)


def test_probe_of_a_healthy_mailbox_ends_ok(world: SourceWorld) -> None:
    """probe yields ProbeSteps, every one ok for a healthy mailbox, ending with the items."""
    deliver(world, "one")
    steps = list(world.source().probe())
    assert steps
    assert all(isinstance(s, ProbeStep) for s in steps)
    assert all(s.ok for s in steps), steps
    assert steps[-1].name == "items"
    assert all(s.detail for s in steps)


@_SERVERS
def test_probe_stops_at_an_unknown_mailbox(world: SourceWorld) -> None:
    """probe of a mailbox that does not exist: steps ok up to one failed step that names the
    mailbox, and nothing after it; no exception."""
    steps = list(world.source(address=NOBODY).probe())
    *before, last = steps
    assert all(s.ok for s in before), steps
    assert not last.ok
    assert NOBODY in last.detail, last


@_SERVERS
def test_probe_stops_at_an_unknown_folder(world: SourceWorld) -> None:
    """probe of a folder that does not exist: the failed step names the folder."""
    steps = list(world.source("Inbox/Nowhere").probe())
    *before, last = steps
    assert all(s.ok for s in before), steps
    assert not last.ok
    assert "Nowhere" in last.detail, last


# Why each source says Gone for a mailbox that does not exist (and not Denied): EWS answers the
# impersonation of an address without a mailbox with ErrorNonExistentMailbox (Denied is for an
# app the mailbox refuses: ErrorImpersonateUserDenied); Graph answers /users/{address} with 404
# ErrorInvalidUser (Denied is a 403: the app lacks the role or is scoped away).
UNKNOWN_MAILBOX = {"ews": Gone, "graph": Gone}


@_SERVERS
def test_an_unknown_mailbox_is_gone(world: SourceWorld) -> None:
    """Every operation on a mailbox that does not exist raises Gone (not retried soon)."""
    source = world.source(address=NOBODY)
    for operation in (
        lambda: source.changes(None, source.page_limit),
        source.current_state,
        source.unread,
    ):
        with pytest.raises(UNKNOWN_MAILBOX[world.kind]) as caught:
            operation()
        assert not caught.value.transient


def test_throttling_is_throttled_with_the_servers_back_off(world: SourceWorld) -> None:
    """The server throttles: Throttled, transient, with the pause the server asked for."""
    deliver(world, "waiting")
    source = world.source()
    world.throttle(45)
    with pytest.raises(Throttled) as caught:
        source.changes(None, source.page_limit)
    assert caught.value.transient
    assert caught.value.back_off == pytest.approx(45, abs=1)
