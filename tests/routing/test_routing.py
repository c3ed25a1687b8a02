"""Routing tables: conditions, any-of lists, first match wins, continue, default route."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from pydantic import ValidationError

from listener.model import Address, Attachment, Message
from listener.routing import Route, Router


def msg(**kw: Any) -> Message:
    base: dict[str, Any] = {
        "mailbox": "box@example.com",
        "folder": "inbox",
        "item_id": "I1",
        "subject": "Order 42 shipped",
        "from": {"email": "Alice@Sales.Example.com", "name": "Alice"},
        "to": [{"email": "orders@example.com"}],
        "cc": [{"email": "boss@corp.example.org"}],
        "importance": "normal",
        "headers": [["X-Priority", "1"], ["List-Id", "<news.example.net>"], ["X-Tag", "b"]],
        "attachments": [
            {"attachment_id": "A", "name": "Invoice-7.PDF", "size": 10},
            {"attachment_id": "B", "name": "logo.png", "is_inline": True},
        ],
        "has_attachments": True,
    }
    base.update(kw)
    return Message.model_validate(base)


def route(**conditions: Any) -> Route:
    return Route.model_validate({"handlers": ["h"], **conditions})


@pytest.mark.parametrize(
    ("conditions", "message", "expected"),
    [
        ({}, msg(), True),
        ({"from": "*@sales.example.com"}, msg(), True),
        ({"from": "alice@sales.example.com"}, msg(), True),
        ({"from": "sales.example.com"}, msg(), True),
        ({"from": "example.com"}, msg(), False),  # a domain is exact; subdomains need a glob
        ({"from": "*.example.com"}, msg(), True),
        ({"from": "*@example.com"}, msg(), False),
        ({"from": ["nobody@x.org", "*@SALES.example.com"]}, msg(), True),
        ({"from": "bob@*"}, msg(), False),
        ({"from": "robot@x.org"}, msg(**{"from": None, "sender": {"email": "robot@x.org"}}), True),
        ({"from": "*"}, msg(**{"from": None}), False),
        ({"to": "orders@example.com"}, msg(), True),
        ({"to": "corp.example.org"}, msg(), False),
        ({"cc": "corp.example.org"}, msg(), True),
        ({"cc": "orders@*"}, msg(), False),
        ({"recipient": "corp.example.org"}, msg(), True),
        ({"recipient": "orders@example.com"}, msg(), True),
        ({"recipient": "*@elsewhere.net"}, msg(), False),
        ({"recipient": "x@y"}, msg(to=[], cc=[], bcc=[{"email": "x@y"}]), False),
        ({"subject": r"^Order \d+"}, msg(), True),
        ({"subject": "shipped"}, msg(), True),  # searched, not matched from the start
        ({"subject": "^shipped"}, msg(), False),
        ({"subject": "order"}, msg(), False),  # case-sensitive unless (?i)
        ({"subject": "(?i)order"}, msg(), True),
        ({"subject": ["^Invoice", "shipped$"]}, msg(), True),
        ({"header": {"name": "x-priority", "equals": "1"}}, msg(), True),
        ({"header": {"name": "X-Priority", "equals": "2"}}, msg(), False),
        ({"header": {"name": "List-Id", "regex": r"news\.example"}}, msg(), True),
        ({"header": {"name": "Missing", "regex": ".*"}}, msg(), False),
        ({"header": [{"name": "A", "equals": "1"}, {"name": "X-Tag", "equals": "b"}]}, msg(), True),
        ({"has_attachments": True}, msg(), True),
        ({"has_attachments": False}, msg(), False),
        ({"has_attachments": False}, msg(attachments=[], has_attachments=False), True),
        (
            {"has_attachments": True},
            msg(
                attachments=[{"attachment_id": "B", "name": "l.png", "is_inline": True}],
                has_attachments=False,
            ),
            False,
        ),
        ({"attachment_name": "*.pdf"}, msg(), True),  # globs ignore case
        ({"attachment_name": "invoice-*"}, msg(), True),
        ({"attachment_name": "*.docx"}, msg(), False),
        ({"attachment_name": ["*.docx", "*.png"]}, msg(), True),
        ({"attachment_name": "*"}, msg(attachments=[], has_attachments=False), False),
        ({"importance": "normal"}, msg(), True),
        ({"importance": "high"}, msg(), False),
        ({"importance": ["low", "high"]}, msg(importance="high"), True),
        ({"from": "sales.example.com", "subject": "Order"}, msg(), True),
        ({"from": "sales.example.com", "subject": "Refund"}, msg(), False),  # all must match
        ({"to": "orders@example.com", "importance": "high"}, msg(), False),
    ],
)
def test_route_conditions(conditions: dict[str, Any], message: Message, expected: bool) -> None:
    """Each condition, alone and combined, matches exactly the messages it describes."""
    assert route(**conditions).matches(message) is expected


TABLE: list[dict[str, Any]] = [
    {"subject": "(?i)invoice", "handlers": ["accounting"]},
    {"from": "vip.example.com", "handlers": ["pager", "crm"], "continue": True},
    {"importance": "high", "handlers": ["pager"], "continue": True},
    {"from": "*.example.com", "handlers": ["crm", "sales"]},
    {"handlers": ["archive"]},
]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (msg(subject="Invoice 7"), ("accounting",)),
        (msg(subject="Invoice 7", **{"from": {"email": "a@vip.example.com"}}), ("accounting",)),
        (msg(subject="hi", **{"from": {"email": "a@vip.example.com"}}), ("pager", "crm", "sales")),
        (
            msg(subject="hi", importance="high", **{"from": {"email": "a@vip.example.com"}}),
            ("pager", "crm", "sales"),
        ),
        (
            msg(subject="hi", importance="high", **{"from": {"email": "x@o.org"}}),
            ("pager", "archive"),
        ),
        (msg(subject="hi"), ("crm", "sales")),
        (msg(subject="hi", **{"from": {"email": "x@other.org"}}), ("archive",)),
    ],
)
def test_router_first_match_wins_unless_continue(
    message: Message, expected: tuple[str, ...]
) -> None:
    """The first match ends routing unless it says continue; names de-duplicated in order."""
    router = Router(TABLE)
    assert router.handlers_for(message) == expected
    assert router(message) == expected


def test_no_match_means_no_handlers() -> None:
    """Without a default route an unmatched message gets no handler names."""
    assert Router([{"subject": "nope", "handlers": ["h"]}]).handlers_for(msg()) == ()


def test_only_continue_routes_fall_through_to_nothing() -> None:
    """Matching routes that all continue collect their handlers even when nothing follows."""
    router = Router([{"handlers": ["a"], "continue": True}, {"handlers": ["b", "a"]}])
    assert router.handlers_for(msg()) == ("a", "b")


def test_routes_load_from_toml() -> None:
    """The TOML form (``from``, ``continue``, inline header tables) loads as documented."""
    document = tomllib.loads(
        """
        [[routes]]
        from = ["*@supplier.example", "partner.example"]
        subject = '(?i)^order\\s+\\d+'
        handlers = ["erp"]

        [[routes]]
        header = { name = "X-Priority", equals = "1" }
        handlers = ["pager"]
        continue = true

        [[routes]]
        handlers = ["archive"]
        """
    )
    router = Router(Route.model_validate(r) for r in document["routes"])
    assert router.routes[0].from_ == ("*@supplier.example", "partner.example")
    assert router.routes[1].continue_ is True
    assert router.routes[2].is_default
    assert not router.routes[0].is_default
    order = msg(subject="ORDER  17", **{"from": {"email": "x@partner.example"}})
    assert router.handlers_for(order) == ("erp",)
    assert router.handlers_for(msg(subject="hello")) == ("pager", "archive")
    assert router.handler_names() == {"erp", "pager", "archive"}


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"subject": "(unclosed", "handlers": ["h"]}, "'(unclosed'"),
        ({"subject": ["ok", "[z-a]"], "handlers": ["h"]}, "'[z-a]'"),
        ({"header": {"name": "X", "regex": "*bad"}, "handlers": ["h"]}, "'*bad'"),
        ({"header": {"name": "X"}, "handlers": ["h"]}, "exactly one of 'equals' or 'regex'"),
        ({"header": {"name": "X", "equals": "1", "regex": "1"}, "handlers": ["h"]}, "exactly one"),
        ({"handlers": []}, "handlers"),
        ({"handlers": [""]}, "must not be empty"),
        ({}, "handlers"),
        ({"to": [], "handlers": ["h"]}, "non-empty"),
        ({"from": "", "handlers": ["h"]}, "non-empty"),
        ({"importance": "urgent", "handlers": ["h"]}, "importance"),
        ({"subjekt": "x", "handlers": ["h"]}, "subjekt"),
        ({"has_attachments": "maybe", "handlers": ["h"]}, "has_attachments"),
    ],
)
def test_invalid_routes_fail_at_load_with_a_clear_message(
    data: dict[str, Any], fragment: str
) -> None:
    """A bad route is refused when loaded, and the error names the offending pattern or key."""
    with pytest.raises(ValidationError) as info:
        Route.model_validate(data)
    assert fragment in str(info.value)


def test_route_is_frozen() -> None:
    """Routes cannot be changed after load."""
    r = route(subject="x")
    with pytest.raises(ValidationError):
        r.handlers = ("other",)  # type: ignore[misc]


def test_address_without_at_matches_nothing_by_domain() -> None:
    """An address with no domain part is compared as a whole with domain patterns."""
    weird = msg(**{"from": Address(email="postmaster", name=None).model_dump()})
    assert route(**{"from": "postmaster"}).matches(weird)
    assert not route(**{"from": "example.com"}).matches(weird)


def test_attachment_glob_sees_item_attachments_by_eml_name() -> None:
    """Attached messages are matched by their .eml name like any file."""
    m = msg(attachments=[Attachment(attachment_id="I", name="fwd.eml", kind="item")])
    assert route(attachment_name="*.eml").matches(m)
