"""The server's fault hook, booleans, plain HTTP, ConvertId and concurrent clients."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import httpx
import pytest
from exchangelib.errors import (
    ErrorExceededConnectionCount,
    ErrorServerBusy,
)

from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.soap import Fault
from ews_listener_emulators.token_server import TokenServer
from tests.emulator.conftest import (
    ALICE,
    BOB,
    CLIENT_ID,
    TENANT,
    AccountFactory,
    SoapPost,
    simple_mime,
)


class FakeEngine:
    """A stand-in for faults.FaultEngine: hands out the given faults, then nothing."""

    def __init__(self, *faults: Fault, refuse: Fault | None = None) -> None:
        self.faults = list(faults)
        self.refuse = refuse
        self.seen: list[tuple[str, str | None]] = []

    def decide(self, operation: str, mailbox: str | None) -> Fault | None:
        self.seen.append((operation, mailbox))
        return self.faults.pop(0) if self.faults else None

    @contextlib.contextmanager
    def slot(self, mailbox: str | None) -> Iterator[Fault | None]:
        yield self.refuse


def test_fault_engine_sees_operation_and_mailbox(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """The fault engine is asked once per request with the operation and impersonated mailbox."""
    fake = FakeEngine()
    previous, emu.faults = emu.faults, fake
    try:
        make_account().inbox.refresh()
    finally:
        emu.faults = previous
    assert ("GetFolder", ALICE) in fake.seen


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(kind="server_busy", back_off_ms=1234), ErrorServerBusy),
        (Fault(kind="server_busy", back_off_ms=None), ErrorServerBusy),
        # exchangelib re-raises its ErrorInternalServerTransientError for a 503 as ErrorServerBusy.
        (Fault(kind="http", status=503, retry_after=1), ErrorServerBusy),
        (
            Fault(kind="soap_fault", code="ErrorExceededConnectionCount", message="busy"),
            ErrorExceededConnectionCount,
        ),
    ],
)
def test_injected_faults_surface_as_exchangelib_errors(
    emu: EwsEmulator, make_account: AccountFactory, fault: Fault, error: type[Exception]
) -> None:
    """Each injected fault kind reaches exchangelib as the exception it maps it to."""
    account = make_account()
    account.inbox  # noqa: B018 - resolve the folder before the fault is armed
    previous, emu.faults = emu.faults, FakeEngine(fault)
    try:
        with pytest.raises(error) as caught:
            account.inbox.refresh()
    finally:
        emu.faults = previous
    if fault.back_off_ms:
        assert getattr(caught.value, "back_off", None) == pytest.approx(1.234)
    assert emu.request_log[-1].error_code is not None


def test_concurrency_refusal_is_rendered(emu: EwsEmulator, soap: SoapPost) -> None:
    """A refusal from the engine's concurrency slot is sent instead of running the operation."""
    refusal = Fault(kind="soap_fault", code="ErrorExceededConnectionCount", message="too many")
    previous, emu.faults = emu.faults, FakeEngine(refuse=refusal)
    try:
        response = soap(
            "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
            '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>'
        )
    finally:
        emu.faults = previous
    assert response.status_code == 500
    assert b"ErrorExceededConnectionCount" in response.content


def test_dropped_connection_and_latency(emu: EwsEmulator, soap: SoapPost) -> None:
    """A drop fault cuts the connection; a latency fault answers normally afterwards."""
    body = (
        "<m:GetFolder><m:FolderShape><t:BaseShape>IdOnly</t:BaseShape></m:FolderShape>"
        '<m:FolderIds><t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>'
    )
    previous = emu.faults
    emu.faults = FakeEngine(
        Fault(kind="drop", after_bytes=0),
        Fault(kind="drop", after_bytes=40),
        Fault(kind="latency", delay=0.01),
    )
    try:
        for _ in range(2):
            with pytest.raises(httpx.TransportError):
                soap(body)
            assert emu.request_log[-1].error_code == "ConnectionDropped"
        assert soap(body).status_code == 200
    finally:
        emu.faults = previous


def test_booleans_as_digits_are_accepted(emu: EwsEmulator, soap: SoapPost) -> None:
    """IsRead given as 1/0 in UpdateItem and in a restriction constant works like true/false."""
    item_id = emu.deliver(ALICE, simple_mime("digits"))
    update = (
        '<m:UpdateItem MessageDisposition="SaveOnly" ConflictResolution="AlwaysOverwrite">'
        f'<m:ItemChanges><t:ItemChange><t:ItemId Id="{item_id}"/><t:Updates>'
        '<t:SetItemField><t:FieldURI FieldURI="message:IsRead"/><t:Message>'
        "<t:IsRead>1</t:IsRead></t:Message></t:SetItemField></t:Updates></t:ItemChange>"
        "</m:ItemChanges></m:UpdateItem>"
    )
    assert b"NoError" in soap(update).content
    assert emu.items(ALICE)[0].is_read is True
    find = (
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
        '</m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="10" Offset="0" '
        'BasePoint="Beginning"/><m:Restriction><t:IsEqualTo><t:FieldURI FieldURI="message:IsRead"/>'
        '<t:FieldURIOrConstant><t:Constant Value="1"/></t:FieldURIOrConstant></t:IsEqualTo>'
        '</m:Restriction><m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/>'
        "</m:ParentFolderIds></m:FindItem>"
    )
    assert b'TotalItemsInView="1"' in soap(find).content


def test_convert_id_round_trip(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """ConvertId turns an EWS id into an EntryId and back."""
    from exchangelib.properties import ENTRY_ID, EWS_ID, AlternateId

    item_id = emu.deliver(ALICE, simple_mime("convert"))
    account = make_account()
    (entry,) = account.protocol.convert_ids(
        [AlternateId(id=item_id, format=EWS_ID, mailbox=ALICE)], destination_format=ENTRY_ID
    )
    (back,) = account.protocol.convert_ids(
        [AlternateId(id=entry.id, format=ENTRY_ID, mailbox=ALICE)], destination_format=EWS_ID
    )
    assert back.id == item_id


def test_plain_http_option(token_server: TokenServer) -> None:
    """Without a CA the emulator serves plain HTTP on loopback."""
    with EwsEmulator(token_server) as emulator:
        emulator.add_mailbox(ALICE)
        assert emulator.url.startswith("http://127.0.0.1:")
        response = httpx.post(
            emulator.url,
            content=b"<not-soap/>",
            headers={"Authorization": f"Bearer {token_server.issue_token(TENANT, CLIENT_ID)}"},
            trust_env=False,
        )
        assert response.status_code == 400


def test_concurrent_clients(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """Eight threads reading two mailboxes at once all get complete, correct answers."""
    for address in (ALICE, BOB):
        for i in range(20):
            emu.deliver(address, simple_mime(f"{address} {i}"))
    accounts = {address: make_account(address) for address in (ALICE, BOB)}
    errors: list[BaseException] = []

    def work(address: str) -> None:
        try:
            for _ in range(5):
                subjects = [m.subject for m in accounts[address].inbox.all().only("subject")]
                assert len(subjects) == 20
                assert all(s.startswith(address) for s in subjects)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(a,)) for a in (ALICE, BOB) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
