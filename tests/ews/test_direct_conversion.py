"""GetItem's XML read directly gives the same ``Message`` as exchangelib's object model.

``_convert.to_message`` reads a ``t:Message`` element of a GetItem answer with lxml (issue 14,
point 5: exchangelib's ``Message.from_xml`` was the largest CPU cost of a poll). These tests fetch
real answers from the emulator for the hostile mail corpus, the realistic benchmark mix and the
Graph comparison's mails, convert each element both ways and compare the values and their JSON;
then values the direct reading leaves to exchangelib, which must come out as exchangelib has them.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from exchangelib import Account
from exchangelib.folders import BaseFolder
from exchangelib.util import TNS

from ews_listener_emulators.feed import SHAPES, SampleFactory
from ews_listener_emulators.server import EwsEmulator
from listener.model import Message
from listener.sources.ews import _convert
from listener.sources.ews._convert import FETCH_FIELDS, to_message
from listener.sources.ews._services import ItemShape, MessageGetItem
from tests.corpus.messages import build_corpus
from tests.emulator.conftest import ALICE, AccountFactory
from tests.graph_source.mail import plain, rich

_T = f"{{{TNS}}}"


def _elements(account: Account) -> list[Any]:
    ids = [(i.id, None) for i in account.inbox.all().only("id")]
    service = MessageGetItem(account=account, chunk_size=len(ids))
    found = list(service.fetch(ids, ItemShape(account, FETCH_FIELDS)))
    assert found
    assert all(not isinstance(e, BaseException) for e in found)
    return found


def _through_exchangelib(elem: Any, account: Account) -> Message:
    item = BaseFolder.item_model_from_tag(elem.tag).from_xml(elem=elem, account=account)
    return to_message(item, mailbox=ALICE, folder="inbox")


def _both(elem: Any, account: Account) -> tuple[Message, Message]:
    direct = to_message(copy.deepcopy(elem), mailbox=ALICE, folder="inbox", account=account)
    return direct, _through_exchangelib(copy.deepcopy(elem), account)


def _assert_same(direct: Message, stock: Message) -> None:
    assert direct == stock
    assert direct.to_json() == stock.to_json()
    assert direct.idempotency_key == stock.idempotency_key


def _deliver_all(emu: EwsEmulator) -> int:
    delivered = 0
    for case in build_corpus().cases:
        emu.deliver(ALICE, case.raw)
        delivered += 1
    factory = SampleFactory(7, domain="direct.example")
    for shape in SHAPES:
        emu.deliver(ALICE, factory.message(ALICE, shape))
        delivered += 1
    for raw in (plain("plain one"), rich("rich one")):
        emu.deliver(ALICE, raw)
        delivered += 1
    return delivered


def test_direct_reading_equals_exchangelib_on_the_corpus(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """Every corpus and sample mail: the same value, read directly (no fall-back) or by
    exchangelib."""
    delivered = _deliver_all(emu)
    account = make_account()
    elements = _elements(account)
    assert len(elements) == delivered
    with_attachments = 0
    for elem in elements:
        assert elem.tag == f"{_T}Message"
        # the direct reading itself, not its fall-back to exchangelib
        direct = _convert._message(copy.deepcopy(elem), mailbox=ALICE, folder="inbox")
        _assert_same(direct, _through_exchangelib(copy.deepcopy(elem), account))
        with_attachments += bool(direct.attachments)
    assert with_attachments >= 5


def _one_element(emu: EwsEmulator, make_account: AccountFactory) -> tuple[Any, Account]:
    emu.deliver(ALICE, rich("odd values"))
    account = make_account()
    [elem] = _elements(account)
    return elem, account


def _set(elem: Any, name: str, text: str) -> None:
    child = elem.find(_T + name)
    assert child is not None, name
    child.text = text


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda e: _set(e, "DateTimeReceived", "2024-05-06T09:08:09+02:00"), id="tz"),
        pytest.param(lambda e: _set(e, "DateTimeSent", "2024-05-06T07:08:09.250Z"), id="fraction"),
        pytest.param(lambda e: _set(e, "DateTimeSent", "2024-13-06T07:08:09Z"), id="bad-month"),
        pytest.param(lambda e: _set(e, "IsRead", "1"), id="is-read-1"),
        pytest.param(lambda e: _set(e, "IsRead", "TRUE"), id="is-read-upper"),
        pytest.param(lambda e: _set(e, "Subject", ""), id="empty-subject"),
        pytest.param(lambda e: _set(e, "Importance", "Urgent"), id="unknown-importance"),
        pytest.param(
            lambda e: e.find(f"{_T}Attachments")[0].find(f"{_T}Size").__setattr__("text", "12x"),
            id="bad-size",
        ),
        pytest.param(
            lambda e: e.find(f"{_T}Attachments")[0].find(f"{_T}Size").__setattr__("text", "²"),
            id="superscript-size",
        ),
        pytest.param(lambda e: e.remove(e.find(f"{_T}TextBody")), id="no-text-body"),
        pytest.param(lambda e: e.remove(e.find(f"{_T}Attachments")), id="no-attachments"),
    ],
)
def test_odd_values_come_out_as_exchangelib_has_them(
    emu: EwsEmulator, make_account: AccountFactory, edit: Any
) -> None:
    """Values the direct reading leaves to exchangelib, or reads by its rules."""
    elem, account = _one_element(emu, make_account)
    edit(elem)
    _assert_same(*_both(elem, account))


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda e: e.find(f"{_T}Body").set("BodyType", "Best"), id="body-type"),
        pytest.param(
            lambda e: e.find(f"{_T}Sender").remove(e.find(f"{_T}Sender")[0]), id="sender-empty"
        ),
        pytest.param(
            lambda e: e.find(f"{_T}InternetMessageHeaders")[0].attrib.pop("HeaderName"),
            id="header-without-name",
        ),
    ],
)
def test_what_exchangelib_rejects_fails_the_same_way(
    emu: EwsEmulator, make_account: AccountFactory, edit: Any
) -> None:
    """An answer exchangelib or the conversion cannot read fails the same way both ways (the
    source dead-letters it as a conversion bug)."""
    elem, account = _one_element(emu, make_account)
    edit(elem)
    try:
        _through_exchangelib(copy.deepcopy(elem), account)
    except Exception as e:  # whatever exchangelib raises, ours must raise too
        stock: Exception = e
    else:
        pytest.fail("exchangelib read it")
    with pytest.raises(type(stock)):
        to_message(elem, mailbox=ALICE, folder="inbox", account=account)


def test_another_item_type_goes_through_exchangelib(
    emu: EwsEmulator, make_account: AccountFactory
) -> None:
    """Not a t:Message (a meeting request, a post, …): exchangelib's model, as before."""
    elem, account = _one_element(emu, make_account)
    elem.tag = f"{_T}PostItem"
    _assert_same(*_both(elem, account))
