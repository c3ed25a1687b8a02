"""FindItem restrictions and sort orders, evaluated against store items.

Supported: IsEqualTo, IsNotEqualTo, IsGreaterThan, IsGreaterThanOrEqualTo, IsLessThan,
IsLessThanOrEqualTo, Contains, Exists, And, Or, Not, on the common message fields (``FIELDS``).
String comparisons ignore case, as Exchange's default collation does. A restriction on a field
we do not know raises ``ErrorUnsupportedPathForQuery``, as Exchange does for unsearchable fields.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lxml import etree

from ews_listener_emulators.ops import OpFault
from ews_listener_emulators.soap import t
from ews_listener_emulators.store import Address, Item

__all__ = ["FIELDS", "Predicate", "compile_restriction", "sort_items"]

Predicate = Callable[[Item], bool]


# Exchange compares and sorts these enumerations by their stored numeric value (Low=0 …
# High=2), not alphabetically: sorting by importance ascending puts Low first.
_RANKS = {
    "item:Importance": {"low": 0, "normal": 1, "high": 2},
    "item:Sensitivity": {"normal": 0, "personal": 1, "private": 2, "confidential": 3},
}


def _rank(uri: str, value: str) -> int:
    return _RANKS[uri].get(value.strip().lower(), 0)


def _address(value: Address | None) -> str | None:
    return value.email if value is not None else None


FIELDS: dict[str, Callable[[Item], Any]] = {
    "item:Subject": lambda i: i.subject,
    "item:ItemClass": lambda i: i.item_class,
    "item:DateTimeReceived": lambda i: i.received_at,
    "item:DateTimeSent": lambda i: i.sent_at,
    "item:DateTimeCreated": lambda i: i.created_at,
    "item:LastModifiedTime": lambda i: i.modified_at,
    "item:HasAttachments": lambda i: i.has_attachments,
    "item:Importance": lambda i: _rank("item:Importance", i.importance),
    "item:Sensitivity": lambda i: _rank("item:Sensitivity", i.sensitivity),
    "item:Categories": lambda i: i.categories,
    "item:Size": lambda i: i.size,
    "item:IsDraft": lambda i: i.is_draft,
    "item:InReplyTo": lambda i: i.in_reply_to,
    "item:Body": lambda i: i.text_body or i.html_body,
    "item:ItemId": lambda i: i.item_id,
    "message:IsRead": lambda i: i.is_read,
    "message:From": lambda i: _address(i.from_),
    "message:Sender": lambda i: _address(i.sender),
    "message:InternetMessageId": lambda i: i.internet_message_id,
    "message:ConversationTopic": lambda i: i.conversation_topic,
    "message:ToRecipients": lambda i: [a.email for a in i.to],
    "message:CcRecipients": lambda i: [a.email for a in i.cc],
    "item:Flag": lambda i: i.flag.status,
}


def _field(element: etree._Element) -> tuple[str, Callable[[Item], Any]]:
    path = element.find(t("FieldURI"))
    uri = path.get("FieldURI") if path is not None else None
    if uri is None or uri not in FIELDS:
        raise OpFault(
            "ErrorUnsupportedPathForQuery",
            f"The property {uri or 'given'} is not supported for a query restriction.",
        )
    return uri, FIELDS[uri]


def _normalise(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _convert(sample: Any, raw: str) -> Any:
    """The constant ``raw`` as the type of the field (judged by a sample value or by its form)."""
    text = raw.strip()
    if isinstance(sample, bool):
        return text.lower() in ("true", "1")
    if isinstance(sample, int):
        return int(text)
    if isinstance(sample, datetime):
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return text


_BOOLEAN_FIELDS = {"item:HasAttachments", "message:IsRead", "item:IsDraft"}
_DATE_FIELDS = {"item:DateTimeReceived", "item:DateTimeSent", "item:DateTimeCreated"}


def _typed_constant(uri: str, raw: str) -> Any:
    if uri in _RANKS:
        return _rank(uri, raw)
    if uri in _BOOLEAN_FIELDS:
        return _convert(True, raw)
    if uri in _DATE_FIELDS or uri == "item:LastModifiedTime":
        return _convert(datetime.now(UTC), raw)
    if uri == "item:Size":
        return _convert(0, raw)
    return raw


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "IsEqualTo": lambda a, b: a == b,
    "IsNotEqualTo": lambda a, b: a != b,
    "IsGreaterThan": lambda a, b: a > b,
    "IsGreaterThanOrEqualTo": lambda a, b: a >= b,
    "IsLessThan": lambda a, b: a < b,
    "IsLessThanOrEqualTo": lambda a, b: a <= b,
}


def _comparison(op: str, element: etree._Element) -> Predicate:
    uri, get = _field(element)
    constant = element.find(f"{t('FieldURIOrConstant')}/{t('Constant')}")
    if constant is None:
        raise OpFault("ErrorUnsupportedQueryFilter", "Only constants are supported here.")
    expected = _normalise(_typed_constant(uri, constant.get("Value") or ""))
    compare = _COMPARE[op]

    def predicate(item: Item) -> bool:
        value = get(item)
        if isinstance(value, list):
            values = [_normalise(v) for v in value]
            if op == "IsNotEqualTo":
                return expected not in values
            return any(compare(v, expected) for v in values)
        if value is None:
            return op == "IsNotEqualTo"
        try:
            return compare(_normalise(value), expected)
        except TypeError:
            return False

    return predicate


def _contains(element: etree._Element) -> Predicate:
    _, get = _field(element)
    constant = element.find(t("Constant"))
    wanted = (constant.get("Value") if constant is not None else "") or ""
    mode = element.get("ContainmentMode") or "Substring"
    exact = (element.get("ContainmentComparison") or "Exact") == "Exact"
    needle = wanted if exact else wanted.casefold()

    def matches(text: str) -> bool:
        haystack = text if exact else text.casefold()
        if mode == "FullString":
            return haystack == needle
        if mode == "Prefixed":
            return haystack.startswith(needle)
        if mode in ("PrefixOnWords", "ExactPhrase"):
            return any(word.startswith(needle) for word in haystack.split()) or (
                mode == "ExactPhrase" and needle in haystack
            )
        return needle in haystack

    def predicate(item: Item) -> bool:
        value = get(item)
        if isinstance(value, list):
            return any(matches(str(v)) for v in value)
        return value is not None and matches(str(value))

    return predicate


def _exists(element: etree._Element) -> Predicate:
    _, get = _field(element)
    return lambda item: get(item) not in (None, "", [])


def _compile(element: etree._Element) -> Predicate:
    op = etree.QName(element).localname
    if op in _COMPARE:
        return _comparison(op, element)
    if op == "Contains":
        return _contains(element)
    if op == "Exists":
        return _exists(element)
    if op == "Not":
        inner = _compile(element[0])
        return lambda item: not inner(item)
    if op in ("And", "Or"):
        parts = [_compile(child) for child in element]
        if op == "And":
            return lambda item: all(p(item) for p in parts)
        return lambda item: any(p(item) for p in parts)
    raise OpFault("ErrorUnsupportedQueryFilter", f"The restriction {op} is not supported.")


def compile_restriction(restriction: etree._Element | None) -> Predicate | None:
    """A predicate for ``m:Restriction`` (None: everything matches)."""
    if restriction is None or len(restriction) == 0:
        return None
    return _compile(restriction[0])


def sort_items(items: list[Item], sort_order: etree._Element | None) -> list[Item]:
    """Items in ``m:SortOrder`` order; without one, newest received first (Exchange's default).

    Ties (two items received in the same instant, or equal in every sort key) go by arrival (the
    item's serial) in the direction of the first key, as Exchange orders them.
    """
    if sort_order is None or len(sort_order) == 0:
        return sorted(
            items, key=lambda i: (i.received_at is None, i.received_at, i.serial), reverse=True
        )
    first_descending = sort_order[0].get("Order") == "Descending"
    result = sorted(items, key=lambda i: i.serial, reverse=first_descending)
    # Stable sorts applied from the last key to the first give a multi-key order.
    for order in reversed(list(sort_order)):
        _, get = _field(order)
        descending = order.get("Order") == "Descending"
        present = [i for i in result if get(i) is not None]
        missing = [i for i in result if get(i) is None]
        present.sort(key=_keyed(get), reverse=descending)
        result = present + missing
    return result


def _keyed(get: Callable[[Item], Any]) -> Callable[[Item], Any]:
    return lambda item: _sort_key(get(item))


def _sort_key(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(str(v).casefold() for v in value)
    return _normalise(value)
