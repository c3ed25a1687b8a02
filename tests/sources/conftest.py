"""One world per kind of ``MailSource`` for the contract suite: the fake, EWS on the EWS emulator
and Graph on the Graph emulator (the two emulators share one mail store).

A world builds sources for folders of Alice's mailbox, delivers mail into it as the mail server
would, acts on mail as a person in Outlook would (reads, moves, deletes, empties Deleted Items),
and reports what the mailbox holds through a path that is not the source under test: the
emulator's mail store, or the fake's in-memory items. The servers start once per session (the
world of ``tests/graph_emulator``); each test gets them reset.

Under ``CI=true`` a missing EWS schema or Graph OpenAPI description fails the run instead of
leaving validation off (as in ``tests/graph_source``): nothing here skips for ews or graph.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any, Protocol

import pytest

from ews_listener_emulators.mailstore.model import Folder, Item, Mailbox
from listener.abc import AccessToken, MailSource
from listener.errors import Throttled
from listener.sources.ews.connections import EwsSources
from listener.sources.graph.factory import GraphSources
from tests.graph_emulator import conftest as _emulator
from tests.graph_emulator.conftest import (
    ALICE,
    BOB,
    CLIENT_ID,
    EWS_SCHEMA_DIR,
    GRAPH_SCHEMA_DIR,
    TENANT,
    World,
)
from tests.graph_source.conftest import EmulatorTokens, Providers, mailbox_config
from tests.poller.fakes import FakeSource

# The CA, token server and both emulators of tests/graph_emulator, under a name of our own.
servers = _emulator.world

KINDS = ("fake", "ews", "graph")
NOBODY = "nobody@contoso.com"  # a mailbox no world has

_serial = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI", "").lower() != "true":
        return
    missing = [
        f"{what} at {where}"
        for what, where, present in (
            ("the EWS schema", EWS_SCHEMA_DIR, (EWS_SCHEMA_DIR / "ews.xsd").is_file()),
            ("the Graph OpenAPI description", GRAPH_SCHEMA_DIR, GRAPH_SCHEMA_DIR.is_dir()),
        )
        if not present
    ]
    if missing:
        raise pytest.UsageError(
            f"CI=true but {' and '.join(missing)} is missing: tests/sources validate every "
            "emulator answer against them (set GRAPH_SCHEMA_DIR, or fetch ../shared)"
        )


# --- mail ----------------------------------------------------------------------------------------


def mail(subject: str, *, files: dict[str, bytes] | None = None) -> bytes:
    """An RFC 5322 message to Alice with a unique Message-ID and ``files`` attached."""
    message = EmailMessage()
    message["From"] = "Carol Sender <carol@example.com>"
    message["To"] = f"Alice Example <{ALICE}>"
    message["Subject"] = subject
    message["Message-ID"] = f"<contract-{next(_serial)}.{os.getpid()}@example.com>"
    message["Date"] = format_datetime(datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC))
    message.set_content(f"the body of {subject}\n")
    for name, content in (files or {}).items():
        message.add_attachment(
            content, maintype="application", subtype="octet-stream", filename=name
        )
    return message.as_bytes(policy=policy.SMTP)


def message_id(raw: bytes) -> str:
    return str(BytesParser(policy=policy.default).parsebytes(raw)["Message-ID"]).strip()


# --- worlds --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """One message as the mailbox holds it, seen without the source under test."""

    folder: str  # lower case; well-known folders by their id: "inbox/done", "deleteditems"
    is_read: bool
    categories: tuple[str, ...]


class SourceWorld(Protocol):
    """What a contract test can do to Alice's mailbox, for one kind of source."""

    kind: str
    mailbox: str

    def source(self, folder: str = "inbox", *, address: str = ALICE) -> MailSource:
        """A source watching ``folder`` of ``address`` (the world closes it)."""
        ...

    def deliver(self, raw: bytes, folder: str = "inbox", *, is_read: bool = False) -> str:
        """File new mail ``raw`` in ``folder``; returns its Message-ID."""
        ...

    def read_as_person(self, mid: str) -> None: ...

    def categorize_as_person(self, mid: str, category: str) -> None: ...

    def move_as_person(self, mid: str, folder: str) -> None: ...

    def delete_as_person(self, mid: str) -> None:
        """Move to Deleted Items, as the Delete key does."""
        ...

    def purge(self, mid: str) -> None:
        """Remove for good (Shift+Delete, or Deleted Items emptied)."""
        ...

    def stored(self, mid: str) -> Stored | None:
        """Where and how the mailbox holds the mail ``mid`` (None: nowhere)."""
        ...

    def forget_states(self) -> None:
        """The server forgets the sync states it handed out (once: the next sync)."""
        ...

    def throttle(self, seconds: int) -> None:
        """The server throttles the next request, asking for a pause of ``seconds``."""
        ...

    def traffic(self) -> int:
        """How many requests the server has answered so far."""
        ...


class FakeWorld:
    """The fake: one ``FakeSource`` is the mailbox (its items are the independent view)."""

    kind = "fake"

    def __init__(self) -> None:
        self.mailbox = ALICE
        self.fake = FakeSource(mailbox=ALICE, folder="inbox")

    def source(self, folder: str = "inbox", *, address: str = ALICE) -> MailSource:
        # The fake holds one folder of one mailbox; the tests that need more skip for it.
        assert (folder, address) == ("inbox", ALICE), "the fake models Alice's inbox only"
        return self.fake

    def _item_id(self, mid: str) -> str:
        [item_id] = [i.item_id for i in self.fake.items.values() if i.message_id == mid]
        return item_id

    def deliver(self, raw: bytes, folder: str = "inbox", *, is_read: bool = False) -> str:
        self.fake.deliver_mime(raw, folder=folder, is_read=is_read)
        return message_id(raw)

    def read_as_person(self, mid: str) -> None:
        self.fake.items[self._item_id(mid)].is_read = True

    def categorize_as_person(self, mid: str, category: str) -> None:
        self.fake.items[self._item_id(mid)].categories.append(category)

    def move_as_person(self, mid: str, folder: str) -> None:
        self.fake.move_as_person(self._item_id(mid), folder)

    def delete_as_person(self, mid: str) -> None:
        self.fake.move_as_person(self._item_id(mid), "deleteditems")

    def purge(self, mid: str) -> None:
        del self.fake.items[self._item_id(mid)]

    def stored(self, mid: str) -> Stored | None:
        found = [i for i in self.fake.items.values() if i.message_id == mid]
        if not found:
            return None
        [item] = found
        return Stored(item.folder.lower(), item.is_read, tuple(item.categories))

    def forget_states(self) -> None:
        self.fake.forget_states = True

    def throttle(self, seconds: int) -> None:
        # The fake's fault injection: its next changes() raises what a server's throttling
        # becomes in a real source.
        self.fake.fail_changes = Throttled("throttled", code="fake", back_off=float(seconds))

    def traffic(self) -> int:
        return len(self.fake.calls)

    def close(self) -> None:
        return


class _IssuedTokens:
    """A ``TokenProvider`` of EWS tokens minted by the token server (no request needed)."""

    name = "ews"

    def __init__(self, servers: World) -> None:
        self._servers = servers

    def get_token(self, *, force_refresh: bool = False) -> AccessToken:
        token = self._servers.token_server.issue_token(TENANT, CLIENT_ID)
        return AccessToken(token, datetime.now(UTC) + timedelta(hours=1))

    def invalidate(self, token: str) -> None:
        return


class _EmulatedWorld:
    """Alice's mailbox on the emulators; the mail store is the independent view."""

    kind = ""

    def __init__(self, servers: World) -> None:
        self.servers = servers
        self.mailbox = ALICE
        self._sources: list[MailSource] = []

    @property
    def _store_mailbox(self) -> Mailbox:
        found = self.servers.ews.store.mailbox(ALICE)
        assert found is not None
        return found

    def _find(self, mid: str) -> Item | None:
        with self.servers.ews.store.lock:
            found = [
                item
                for folder in self._store_mailbox.folders.values()
                for item in folder.items.values()
                if item.internet_message_id == mid
            ]
        assert len(found) <= 1, f"{mid} is stored {len(found)} times"
        return found[0] if found else None

    def _item(self, mid: str) -> Item:
        item = self._find(mid)
        assert item is not None, f"no mail {mid} in {ALICE}"
        return item

    def deliver(self, raw: bytes, folder: str = "inbox", *, is_read: bool = False) -> str:
        self.servers.ews.deliver(ALICE, raw, folder, is_read=is_read)
        return message_id(raw)

    def read_as_person(self, mid: str) -> None:
        self.servers.ews.set_read(ALICE, self._item(mid).item_id)

    def categorize_as_person(self, mid: str, category: str) -> None:
        self.servers.ews.store.update(
            self._item(mid), lambda item: item.categories.append(category)
        )

    def move_as_person(self, mid: str, folder: str) -> None:
        self.servers.ews.move_item(ALICE, self._item(mid).item_id, folder)

    def delete_as_person(self, mid: str) -> None:
        self.move_as_person(mid, "deleteditems")

    def purge(self, mid: str) -> None:
        self.servers.ews.store.delete(self._item(mid))

    def stored(self, mid: str) -> Stored | None:
        item = self._find(mid)
        if item is None:
            return None
        assert item.folder is not None
        return Stored(_folder_name(item.folder), item.is_read, tuple(item.categories))

    def close(self) -> None:
        for source in self._sources:
            source.close()


def _folder_name(folder: Folder) -> str:
    """``inbox/done`` for Inbox/Done: well-known folders by their distinguished id."""
    parts: list[str] = []
    current: Folder | None = folder
    while current is not None and current.distinguished not in ("msgfolderroot", "root"):
        parts.append(current.distinguished or current.name.lower())
        current = current.parent
    return "/".join(reversed(parts))


class EwsWorld(_EmulatedWorld):
    """``EwsMailSource`` through ``EwsSources``, as the daemon builds it, on the EWS emulator."""

    kind = "ews"

    def __init__(self, servers: World) -> None:
        super().__init__(servers)
        tokens = _IssuedTokens(servers)
        providers = SimpleNamespace(for_source=lambda credential, endpoint: tokens)
        settings = SimpleNamespace(
            credentials={"ews": SimpleNamespace(client_id=CLIENT_ID, max_connections=4)}
        )
        self.factory = EwsSources(providers, settings)

    def source(self, folder: str = "inbox", *, address: str = ALICE) -> MailSource:
        mailbox = SimpleNamespace(
            address=address,
            credential="ews",
            endpoint=self.servers.ews.url,
            folder=folder,
            ca_bundle=self.servers.ca.ca_file,
            version="Exchange2016",  # pinned (as the config spells it): no version guessing request
        )
        source = self.factory.source("alice", mailbox)
        self._sources.append(source)
        return source

    def forget_states(self) -> None:
        self.servers.ews.faults.add("invalid_sync_state", mailbox=ALICE)

    def throttle(self, seconds: int) -> None:
        self.servers.ews.faults.add("server_busy", mailbox=ALICE, back_off_ms=seconds * 1000)

    def traffic(self) -> int:
        return len(self.servers.ews.request_log)

    def close(self) -> None:
        super().close()
        self.factory.close()


class GraphWorld(_EmulatedWorld):
    """``GraphMailSource`` through ``GraphSources`` on the Graph emulator (short inline waits)."""

    kind = "graph"

    def __init__(self, servers: World) -> None:
        super().__init__(servers)
        self.factory = GraphSources(
            Providers(EmulatorTokens(servers)),
            SimpleNamespace(credentials={"graph": SimpleNamespace(max_connections=4)}),
            max_inline_wait=1.0,
            min_back_off=0.01,
        )

    def source(self, folder: str = "inbox", *, address: str = ALICE) -> MailSource:
        config = mailbox_config(self.servers, self.servers.graph, address=address, folder=folder)
        source = self.factory.source("alice", config)
        self._sources.append(source)
        return source

    def forget_states(self) -> None:
        self.servers.graph.faults.add("delta_token_invalidated", mailbox=ALICE)

    def throttle(self, seconds: int) -> None:
        self.servers.graph.faults.add("throttled", mailbox=ALICE, retry_after=seconds)

    def traffic(self) -> int:
        return len(self.servers.graph.request_log)

    def close(self) -> None:
        super().close()
        self.factory.close()


def _reset(servers: World) -> None:
    servers.ews.reset()
    servers.graph.reset()
    servers.ews.add_mailbox(ALICE, "Alice Example")
    servers.ews.add_mailbox(BOB, "Bob Example")


def _schema_problems(servers: World) -> list[Any]:
    return [r for r in servers.graph.request_log if r.schema_valid is False] + [
        r for r in servers.ews.request_log if r.schema_valid is False or r.response_valid is False
    ]


@pytest.fixture(params=KINDS)
def world(request: pytest.FixtureRequest) -> Iterator[SourceWorld]:
    """Alice's mailbox for each kind of source; the emulators' answers must validate."""
    if request.param == "fake":
        yield FakeWorld()
        return
    servers: World = request.getfixturevalue("servers")
    _reset(servers)
    made: EwsWorld | GraphWorld = (EwsWorld if request.param == "ews" else GraphWorld)(servers)
    try:
        yield made
    finally:
        made.close()
    assert _schema_problems(servers) == [], "emulator answers failed schema validation"


@pytest.fixture
def ews(servers: World) -> Iterator[EwsWorld]:
    """The EWS source alone on a reset mail store; the emulator's answers must validate."""
    _reset(servers)
    made = EwsWorld(servers)
    try:
        yield made
    finally:
        made.close()
    assert _schema_problems(servers) == [], "emulator answers failed schema validation"


@pytest.fixture
def both(servers: World) -> Iterator[tuple[EwsWorld, GraphWorld]]:
    """EWS and Graph on one reset mail store: the same mail through both protocols."""
    _reset(servers)
    ews, graph = EwsWorld(servers), GraphWorld(servers)
    try:
        yield ews, graph
    finally:
        ews.close()
        graph.close()
    assert _schema_problems(servers) == [], "emulator answers failed schema validation"
