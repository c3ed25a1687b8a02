"""FindItem (restrictions, sort, paging) and GetItem shapes through exchangelib's QuerySet."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from exchangelib import Q
from lxml import etree

from ews_listener_emulators.server import EwsEmulator
from tests.emulator.conftest import ALICE, AccountFactory, SoapPost, simple_mime

BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def _seed(emu: EwsEmulator, count: int) -> list[str]:
    return [
        emu.deliver(
            ALICE,
            simple_mime(f"message {i:05d}", sender=f"Sender {i % 3} <s{i % 3}@example.com>"),
            received_at=BASE + timedelta(minutes=i),
            is_read=i % 2 == 0,
        )
        for i in range(count)
    ]


def test_filter_pages_over_2500_items(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """filter() with paging returns all 2,500 items, in order, with no duplicates."""
    _seed(emu, 2500)
    account = make_account()
    started = time.perf_counter()
    query = account.inbox.filter(is_read=False).only("subject").order_by("datetime_received")
    query.page_size = 400
    subjects = [m.subject for m in query]
    assert len(subjects) == 1250
    assert subjects == sorted(subjects)
    assert subjects[0] == "message 00001"
    assert len(set(subjects)) == 1250
    assert time.perf_counter() - started < 20
    finds = [r for r in emu.request_log if r.operation == "FindItem"]
    assert len(finds) >= 2  # more than one page (exchangelib caps a page at 1000)


def test_all_items_count_and_slicing(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """count() and slices page with IndexedPageItemView offsets."""
    _seed(emu, 30)
    inbox = make_account().inbox
    assert inbox.all().count() == 30
    newest = inbox.all().order_by("-datetime_received").only("subject")[:3]
    assert [m.subject for m in newest] == ["message 00029", "message 00028", "message 00027"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (Q(subject="MESSAGE 00003"), {3}),
        (Q(subject__contains="0001"), {1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19}),
        (Q(subject__startswith="message 0000"), set(range(10))),
        (Q(datetime_received__gte=BASE + timedelta(minutes=18)), {18, 19}),
        (Q(datetime_received__lt=BASE + timedelta(minutes=2)), {0, 1}),
        (Q(datetime_received__gt=BASE + timedelta(minutes=18)), {19}),
        (Q(datetime_received__lte=BASE + timedelta(minutes=1)), {0, 1}),
        (Q(is_read=True) & Q(subject__contains="0000"), {0, 2, 4, 6, 8}),
        (Q(subject="message 00001") | Q(subject="message 00002"), {1, 2}),
        (~Q(subject__contains="0000") & ~Q(subject__contains="0001"), set()),
        (Q(sender="s1@example.com") & Q(subject__contains="0000"), {1, 4, 7}),
        (Q(item_class="IPM.Note") & Q(importance="High"), set()),
        (Q(has_attachments=False) & Q(subject="message 00005"), {5}),
        (Q(subject__exists=True) & Q(subject__contains="00019"), {19}),
        (Q(subject__in=["message 00007", "message 00008"]), {7, 8}),
        (~Q(subject="message 00001") & Q(subject__contains="0000"), set(range(10)) - {1}),
    ],
)
def test_restrictions(
    emu: EwsEmulator, make_account: AccountFactory, query: Q, expected: set[int]
) -> None:
    """Each restriction operator selects exactly the matching items."""
    _seed(emu, 20)
    found = {int(m.subject.split()[1]) for m in make_account().inbox.filter(query).only("subject")}
    assert found == expected


def test_categories_restriction(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """Categories (a multi-valued field) match when any value matches."""
    ids = _seed(emu, 3)
    account = make_account()
    item = account.inbox.get(id=ids[1])
    item.categories = ["Finance", "Urgent"]
    item.save(update_fields=["categories"])
    found = [
        m.subject for m in account.inbox.filter(categories__contains=["Urgent"]).only("subject")
    ]
    assert found == ["message 00001"]


def test_get_item_shapes(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """only() asks for a few fields; a full fetch returns body, headers and recipients."""
    _seed(emu, 1)
    inbox = make_account().inbox
    light = inbox.all().only("subject", "is_read")[0]
    assert light.subject == "message 00000"
    assert light.body is None
    full = inbox.all()[0]
    assert full.body.strip() == "body text"
    assert full.sender.email_address == "s0@example.com"
    assert [r.email_address for r in full.to_recipients] == [ALICE]
    assert any(h.name == "Subject" for h in full.headers)
    assert full.message_id.endswith("@example.com>")


def test_find_item_caps_pages_at_1000(emu: EwsEmulator, soap: SoapPost) -> None:
    """MaxEntriesReturned above 1000 returns 1000 items and IncludesLastItemInRange=false."""
    _seed(emu, 1001)
    body = (
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
        '</m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="5000" Offset="0" '
        'BasePoint="Beginning"/><m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/>'
        "</m:ParentFolderIds></m:FindItem>"
    )
    root = etree.fromstring(soap(body).content)
    folder = root.find(".//{*}RootFolder")
    assert folder is not None
    assert folder.get("IncludesLastItemInRange") == "false"
    assert folder.get("TotalItemsInView") == "1001"
    assert len(folder.findall(".//{*}ItemId")) == 1000


def test_find_item_without_paging_over_limit(emu: EwsEmulator, soap: SoapPost) -> None:
    """An unpaged FindItem over more than 1000 matches gets ErrorExceededFindCountLimit."""
    _seed(emu, 1001)
    body = (
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
        '</m:ItemShape><m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/>'
        "</m:ParentFolderIds></m:FindItem>"
    )
    content = soap(body).content
    assert b"<m:ResponseCode>ErrorExceededFindCountLimit</m:ResponseCode>" in content
    assert b'Name="PolicyLimit">1000<' in content


def test_get_item_of_unknown_or_malformed_ids(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """GetItem answers ErrorItemNotFound for a deleted item, ErrorInvalidIdMalformed for junk."""
    from exchangelib.errors import ErrorInvalidIdMalformed, ErrorItemNotFound
    from exchangelib.properties import ItemId

    (gone,) = _seed(emu, 1)
    account = make_account()
    account.bulk_delete(ids=[(gone, None)], delete_type="HardDelete")
    results = list(account.fetch(ids=[ItemId(id=gone), ItemId(id="AAAAdoesnotexist")]))
    assert isinstance(results[0], ErrorItemNotFound)
    assert isinstance(results[1], ErrorInvalidIdMalformed)


def test_multi_key_sort(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """SortOrder with two fields sorts by the first (importance by rank), then the second."""
    for subject, importance in (("b", "low"), ("a", "high"), ("c", "high"), ("d", "low")):
        emu.deliver(ALICE, simple_mime(subject, extra_headers=f"Importance: {importance}\r\n"))
    inbox = make_account().inbox
    ordered = inbox.all().order_by("importance", "-subject").only("subject", "importance")
    assert [(m.importance, m.subject) for m in ordered] == [
        ("Low", "d"),
        ("Low", "b"),
        ("High", "c"),
        ("High", "a"),
    ]
    assert {m.subject for m in inbox.filter(importance="High").only("subject")} == {"a", "c"}


def test_indexed_view_from_the_end(emu: EwsEmulator, soap: SoapPost) -> None:
    """BasePoint=End counts the offset back from the last item of the view."""
    _seed(emu, 10)
    body = (
        '<m:FindItem Traversal="Shallow"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape>'
        '<t:AdditionalProperties><t:FieldURI FieldURI="item:Subject"/></t:AdditionalProperties>'
        '</m:ItemShape><m:IndexedPageItemView MaxEntriesReturned="3" Offset="2" BasePoint="End"/>'
        '<m:SortOrder><t:FieldOrder Order="Ascending"><t:FieldURI FieldURI="item:Subject"/>'
        '</t:FieldOrder></m:SortOrder><m:ParentFolderIds><t:DistinguishedFolderId Id="inbox"/>'
        "</m:ParentFolderIds></m:FindItem>"
    )
    root = etree.fromstring(soap(body).content)
    subjects = [e.text for e in root.iter("{*}Subject")]
    assert subjects == ["message 00005", "message 00006", "message 00007"]
