"""GraphMailSource against the Graph emulator: delta, fetch, content, post-processing, errors."""

from __future__ import annotations

import threading

import pytest
from exchangelib import Account

from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.server import EwsEmulator
from listener.abc import FetchFailure, ItemRef
from listener.errors import Denied, Gone, SyncStateLost, Throttled, Unavailable
from listener.model import Message
from listener.sources._spool import SPOOL_MAX_MEMORY
from listener.sources.graph.factory import GraphSources
from listener.sources.graph.source import GraphMailSource
from tests.graph_emulator.conftest import ALICE, NOROLE_ID, World
from tests.graph_source.conftest import EmulatorTokens, Providers, mailbox_config
from tests.graph_source.mail import plain, rich


def drain(
    source: GraphMailSource, state: str | None = None, size: int = 200
) -> tuple[list[ItemRef], str]:
    refs: list[ItemRef] = []
    while True:
        page = source.changes(state, size)
        refs += page.created
        state = page.sync_state
        if page.last_page:
            return refs, state


def test_delta_rounds_pages_and_removed(ews: EwsEmulator, source: GraphMailSource) -> None:
    """An initial round pages by nextLink and ends with a deltaLink; the next round has only
    what was created since; a moved-away message (@removed) is no created item."""
    for n in range(5):
        ews.deliver(ALICE, plain(f"m{n}"))
    first = source.changes(None, 2)
    assert len(first.created) == 2
    assert not first.last_page
    assert "$skiptoken=" in first.sync_state
    refs, state = drain(source, first.sync_state, 2)
    assert len(first.created) + len(refs) == 5
    assert "$deltatoken=" in state
    assert drain(source, state)[0] == []
    victim = first.created[0]
    ews.deliver(ALICE, plain("later"))
    assert source.delete([victim]) == [None]
    new, state = drain(source, state)
    assert [m.subject for m in source.fetch(new) if isinstance(m, Message)] == ["later"]
    assert victim not in new


def test_410_and_foreign_state_are_sync_state_lost(
    graph: GraphEmulator, source: GraphMailSource
) -> None:
    """A dead delta token (410) and an EWS state (no request sent) both say SyncStateLost."""
    _, state = drain(source)
    graph.faults.add("delta_token_invalidated", mailbox=ALICE)
    with pytest.raises(SyncStateLost):
        source.changes(state, 10)
    before = len(graph.request_log)
    with pytest.raises(SyncStateLost):
        source.changes(
            "H4sIAAAAAAAEAO29B2AcSZYlJi9tynt/SvVK1+B0oQiAYBMk2JBAEOzBiM3mkuwdaUcjKasqgcplVmVdZhZAzO2dvPfee++999577733",
            10,
        )
    assert len(graph.request_log) == before


def test_start_from_helpers(ews: EwsEmulator, source: GraphMailSource) -> None:
    """current_state ends the round (nothing old comes back), unread lists unread ids."""
    ews.deliver(ALICE, plain("old unread"))
    ews.deliver(ALICE, plain("old read"), is_read=True)
    assert len(source.unread()) == 1
    state = source.current_state()
    assert source.changes(state, 10).created == ()
    ews.deliver(ALICE, plain("new"))
    [ref] = source.changes(state, 10).created
    [message] = source.fetch([ref])
    assert isinstance(message, Message)
    assert message.subject == "new"


def test_requests_per_message_for_100(
    ews: EwsEmulator, graph: GraphEmulator, source: GraphMailSource
) -> None:
    """100 new text messages: one delta page, no fetch request, five $batch POSTs to mark them
    read (measured: 6 HTTP requests for 100 messages)."""
    _, state = drain(source)
    for n in range(100):
        ews.deliver(ALICE, plain(f"bulk {n}"))
    start = len(graph.request_log)
    page = source.changes(state, 200)
    messages = source.fetch(page.created)
    assert all(isinstance(m, Message) for m in messages)
    assert len(messages) == 100
    assert source.mark_read(page.created) == [None] * 100
    records = list(graph.request_log)[start:]
    posts = [r for r in records if r.operation == "$batch"]
    singles = [
        r
        for r in records
        if r.operation not in {"$batch", "user.message_update"} and r.method != "PATCH"
    ]
    assert len(posts) == 5
    assert [r.operation for r in singles] == ["user.mailFolder.message_delta"]
    assert len([r for r in records if r.method == "PATCH"]) == 100  # the parts


def test_fetch_without_cache_uses_batches(
    ews: EwsEmulator, graph: GraphEmulator, world: World, factory: GraphSources
) -> None:
    """A source that did not read the delta (a retry from the pending queue) fetches in $batch
    POSTs of 20, a missing message is gone, not a failure of the batch."""
    ids = [ews.deliver(ALICE, plain(f"p{n}")) for n in range(25)]
    reader = factory.source("alice", mailbox_config(world, graph))
    refs = reader.unread()
    fresh = factory.source("alice", mailbox_config(world, graph))
    gone = ItemRef(refs[0].item_id[:-4] + "AAAA")
    start = len(graph.request_log)
    out = fresh.fetch([*refs, gone])
    assert len(ids) == 25
    assert sum(isinstance(m, Message) for m in out) == 25
    failure = out[-1]
    assert isinstance(failure, FetchFailure)
    assert failure.gone or not failure.transient
    assert len([r for r in list(graph.request_log)[start:] if r.operation == "$batch"]) == 2


def test_rich_message_lazy_content_and_spool(
    ews: EwsEmulator, graph: GraphEmulator, source: GraphMailSource
) -> None:
    """Attachments (file, inline, item) come as metadata; content and MIME load only when asked,
    a large one spooled to disk past 1 MiB; an item attachment is RFC 5322."""
    big = b"x" * (SPOOL_MAX_MEMORY + 4096)
    ews.deliver(ALICE, rich(attachment=big))
    refs, _ = drain(source)
    start = len(graph.request_log)
    [message] = source.fetch(refs)
    assert isinstance(message, Message)
    fetch_requests = len(graph.request_log) - start
    kinds = sorted((a.kind, a.name) for a in message.attachments)
    assert ("file", "a.pdf") in kinds
    assert any(k == "item" for k, _ in kinds)
    assert message.html_body
    assert "Hello" in message.html_body
    assert message.text_body
    assert fetch_requests <= 2  # one $batch POST and its part
    pdf = next(a for a in message.attachments if a.name == "a.pdf")
    with pdf.open() as f:
        assert getattr(f, "_rolled", True)  # past the threshold: on disk
        assert f.read() == big
    item = next(a for a in message.attachments if a.kind == "item")
    assert b"the attached one" in item.content()
    assert b"X-Order-Number: 4711" in message.mime()


def test_post_processing_seen_through_ews(
    ews: EwsEmulator, account: Account, source: GraphMailSource
) -> None:
    """mark_read, categorize (keeping existing categories), move (folder created) and delete,
    each in $batch, as EWS then sees them."""
    for n in range(4):
        ews.deliver(ALICE, plain(f"post {n}"))
    refs, _ = drain(source)
    by_subject = {m.subject: m for m in source.fetch(refs) if isinstance(m, Message)}
    ref = {s: ItemRef(m.item_id) for s, m in by_subject.items()}
    item = next(i for i in account.inbox.all() if i.subject == "post 1")
    item.categories = ["Mine"]
    item.save(update_fields=["categories"])
    assert source.mark_read([ref["post 0"]]) == [None]
    assert source.categorize([ref["post 1"]], "Done") == [None]
    [moved] = source.move([ref["post 2"]], "Inbox/Processed/2024")
    assert isinstance(moved, ItemRef)
    assert moved.item_id == ref["post 2"].item_id
    assert source.delete([ref["post 3"]]) == [None]
    inbox = {i.subject: i for i in account.inbox.all()}
    assert inbox["post 0"].is_read is True
    assert sorted(inbox["post 1"].categories) == ["Done", "Mine"]
    assert "post 2" not in inbox
    assert "post 3" not in inbox
    processed = account.inbox / "Processed" / "2024"
    assert [i.subject for i in processed.all()] == ["post 2"]
    assert [i.subject for i in account.trash.all()] == ["post 3"]
    assert (
        source.find("Inbox/Processed/2024", by_subject["post 2"].internet_message_id or "") == moved
    )
    assert source.find("inbox", "<nobody@example.com>") is None


def test_429_storm_is_bounded(
    ews: EwsEmulator, graph: GraphEmulator, factory: GraphSources, source: GraphMailSource
) -> None:
    """A 429 storm with a short Retry-After: a bounded number of tries then Throttled; a long one
    raises Throttled with its back_off at once and the next call sends nothing."""
    source.watched_folder_id()
    graph.faults.add("throttled", mailbox=ALICE, probability=1.0, retry_after=0.02)
    start = len(graph.request_log)
    with pytest.raises(Throttled):
        source.changes(None, 10)
    assert len(graph.request_log) - start <= 4
    graph.faults.clear()
    graph.faults.add("throttled", mailbox=ALICE, count=1, retry_after=45)
    with pytest.raises(Throttled) as caught:
        source.changes(None, 10)
    assert caught.value.back_off == pytest.approx(45, abs=1)
    start = len(graph.request_log)
    with pytest.raises(Throttled):
        source.unread()
    assert len(graph.request_log) == start  # paused: nothing sent
    assert factory.backoffs
    assert all(c == "graph" for c, _ in factory.backoffs)


def test_at_most_four_concurrent_per_mailbox(
    ews: EwsEmulator, graph: GraphEmulator, world: World, factory: GraphSources
) -> None:
    """Eight threads on two folders of one mailbox: never more than four in flight (the emulator
    answers the fifth 429 MailboxConcurrency, which never happens)."""
    graph.faults.add("latency", mailbox=ALICE, probability=1.0, delay=0.1)
    sources = [
        factory.source("alice", mailbox_config(world, graph, folder=f)) for f in ("inbox", "drafts")
    ]
    errors: list[BaseException] = []

    def work(s: GraphMailSource) -> None:
        try:
            s.unread()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(sources[n % 2],)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert factory.gates(ALICE).peak <= 4
    assert graph.throttle.counters().get("mailbox_concurrency", 0) == 0


def test_401_recovers_once(
    world: World, graph: GraphEmulator, source: GraphMailSource, tokens: EmulatorTokens
) -> None:
    """A revoked token: invalidated, one retry with a fresh one, and the call succeeds."""
    source.unread()
    world.token_server.revoke()
    assert source.unread() == []
    assert tokens.invalidated == 1
    assert tokens.fetched == 2


def test_error_mapping(world: World, graph: GraphEmulator, factory: GraphSources) -> None:
    """Unknown user → Gone, unknown folder → Gone, no role → Denied, 5xx → Unavailable."""
    with pytest.raises(Gone):
        factory.source("x", mailbox_config(world, graph, address="nobody@contoso.com")).unread()
    with pytest.raises(Gone):
        factory.source("x", mailbox_config(world, graph, folder="Inbox/Nope")).unread()
    graph.faults.add("http_500", mailbox=ALICE)
    with pytest.raises(Unavailable):
        factory.source("x", mailbox_config(world, graph)).unread()
    settings = type("S", (), {"credentials": {}})()
    denied = GraphSources(Providers(EmulatorTokens(world, NOROLE_ID)), settings)
    try:
        with pytest.raises(Denied):
            denied.source("x", mailbox_config(world, graph, credential="norole")).unread()
    finally:
        denied.close()


def test_probe(
    ews: EwsEmulator,
    world: World,
    graph: GraphEmulator,
    source: GraphMailSource,
    factory: GraphSources,
) -> None:
    """probe: token, mailbox, folder, items; stops at the first failure."""
    ews.deliver(ALICE, plain("one"))
    steps = list(source.probe())
    assert [(s.name, s.ok) for s in steps] == [
        ("token", True),
        ("mailbox", True),
        ("folder", True),
        ("items", True),
    ]
    assert "1 items, 1 unread" in steps[-1].detail
    missing = factory.source("x", mailbox_config(world, graph, folder="Nope"))
    assert [(s.name, s.ok) for s in missing.probe()] == [
        ("token", True),
        ("mailbox", True),
        ("folder", False),
    ]


def test_secrets_not_in_repr(source: GraphMailSource, tokens: EmulatorTokens) -> None:
    """Neither the source nor its client shows a token."""
    token = tokens.get_token().token
    assert token not in repr(source)
    assert token not in repr(source._client)


def test_a_chain_begun_at_the_present_end_fetches_from_its_pages(
    ews: EwsEmulator, graph: GraphEmulator, source: GraphMailSource
) -> None:
    """start_from "new" (current_state) keeps the full $select in its delta links: new mail
    after it is fetched from the delta page, with no request per message (it cost one $batch
    part each when current_state walked with ids only)."""
    ews.deliver(ALICE, plain("there before"))
    state = source.current_state()
    for n in range(30):
        ews.deliver(ALICE, plain(f"after {n}"))
    start = len(graph.request_log)
    page = source.changes(state, 200)
    messages = source.fetch(page.created)
    assert sorted(m.subject for m in messages if isinstance(m, Message)) == sorted(
        f"after {n}" for n in range(30)
    )
    assert [r.operation for r in list(graph.request_log)[start:]] == [
        "user.mailFolder.message_delta"
    ]


def test_a_round_does_not_list_again_what_it_tidied(
    ews: EwsEmulator, graph: GraphEmulator, source: GraphMailSource
) -> None:
    """An initial round of several pages, marking each page read before the next (what the
    poller does): Graph lists a changed message again later in the same round; the source skips
    what it marked read itself, so every message is listed (and fetched) once."""
    for n in range(25):
        ews.deliver(ALICE, plain(f"backlog {n}"))
    listed: list[ItemRef] = []
    state: str | None = None
    pages = 0
    while True:
        page = source.changes(state, 10)
        pages += 1
        listed += page.created
        assert all(isinstance(m, Message) for m in source.fetch(page.created))
        assert source.mark_read(page.created) == [None] * len(page.created)
        state = page.sync_state
        if page.last_page:
            break
    assert len(listed) == len(set(listed)) == 25
    assert pages <= 6  # 3 pages of our mail; Graph's re-listings cost at most a page or so more
    ews.deliver(ALICE, plain("next round"))
    [ref] = source.changes(state, 10).created  # a later round: created only
    [message] = source.fetch([ref])
    assert isinstance(message, Message)
    assert message.subject == "next round"
