"""redact() and redact_value(): registered secrets and token shapes."""

from __future__ import annotations

import pytest

from listener.observability.redaction import (
    MASK,
    is_secret_key,
    redact,
    redact_value,
    register_secret,
)

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhcHAiLCJhdWQiOiJld3MifQ.c2lnbmF0dXJlLWJ5dGVz-_x"


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("{'Authorization': 'Basic dXNlcjpwYXNz', 'X-Other': 1}", "dXNlcjpwYXNz"),
        ('{"authorization": "Negotiate TlRMTVNTUAAB"}', "TlRMTVNTUAAB"),
        ("got 401 with bearer ZXlKMGVYQWlPaUpLVjFRaUxD", "ZXlKMGVYQWlPaUpLVjFRaUxD"),
        ("grant_type=client_credentials&client_secret=s3cr%2Bet&scope=x", "s3cr%2Bet"),
        ("POST /token client_assertion=abc.def.ghi&x=1", "abc.def.ghi"),
        ("https://h/cb?access_token=tok123&state=1", "tok123"),
        ("refresh_token=rt-999 password=hunter22", "rt-999"),
        ("refresh_token=rt-999 password=hunter22", "hunter22"),
        ('{"client_secret": "a\\"quoted\\" one", "client_id": "c"}', "quoted"),
        ("{'password': 'pw-value', 'user': 'u'}", "pw-value"),
        (f"token in text {JWT} end", JWT),
        (f"id_token:{JWT}", JWT[:20]),
        ("vault at https://admin:Pa55word@vault.local:8200/v1", "Pa55word"),
        ("vault at https://admin:Pa55word@vault.local:8200/v1", "admin:"),
    ],
)
def test_shapes_are_masked(text: str, leak: str) -> None:
    """Each token shape is masked without a registered secret."""
    out = redact(text)
    assert leak not in out
    assert MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "token_type=Bearer&expires_in=3599",
        "mailbox=sales@contoso.com folder=Inbox",
        "poll finished: 3 handed over, 0 failed",
        "https://outlook.office365.com/EWS/Exchange.asmx",
        "abc",
    ],
)
def test_harmless_text_is_untouched(text: str) -> None:
    """Text without secrets comes back unchanged."""
    assert redact(text) == text


def test_registered_secret_is_masked_in_every_encoding() -> None:
    """A registered secret is masked raw, URL-encoded, form-encoded and JSON-escaped."""
    secret = 'Xy~9 pl+us/"q"'
    register_secret(secret)
    for form in (
        secret,
        "Xy~9%20pl%2Bus%2F%22q%22",
        "Xy~9+pl%2Bus%2F%22q%22",
        'Xy~9 pl+us/\\"q\\"',
    ):
        out = redact(f"before {form} after")
        assert out == f"before {MASK} after", form


def test_short_secrets_are_ignored() -> None:
    """Secrets shorter than 4 characters are not registered (they would garble every line)."""
    register_secret("abc")
    register_secret(None)
    assert redact("abc abcd") == "abc abcd"


def test_longest_registered_secret_wins() -> None:
    """Overlapping secrets are masked whole, the longest first."""
    register_secret("secretvalue")
    register_secret("secretvalue-extended")
    assert redact("x secretvalue-extended y") == f"x {MASK} y"


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("client_secret", True),
        ("Authorization", True),
        ("X-Api-Key", True),
        ("db_password", True),
        ("refresh_token", True),
        ("token", True),
        ("client_secret_env", False),
        ("token_endpoint", False),
        ("credential", False),
        ("mailbox", False),
        ("token_type", False),
        (3, False),
    ],
)
def test_is_secret_key(key: object, secret: bool) -> None:
    """Keys naming a secret are recognised; keys naming where it lives are not."""
    assert is_secret_key(key) is secret


def test_redact_value_recurses() -> None:
    """Nested dicts, lists, tuples and sets are redacted, secret keys masked whole."""
    register_secret("registered-secret")
    value = {
        "credential": "sales",
        "client_secret": "anything at all",
        "empty_password": "",
        "nested": [{"headers": {"Authorization": "Bearer zzz"}}, ("registered-secret", 3)],
        "tags": {"registered-secret"},
        "raw": b"x registered-secret",
    }
    out = redact_value(value)
    assert out["credential"] == "sales"
    assert out["client_secret"] == MASK
    assert out["empty_password"] == ""
    assert out["nested"][0]["headers"]["Authorization"] == MASK
    assert out["nested"][1] == (MASK, 3)
    assert out["tags"] == {MASK}
    assert out["raw"] == f"x {MASK}"
    assert value["client_secret"] == "anything at all", "the input is not modified"


def test_header_pairs_are_masked() -> None:
    """(name, value) pairs, as httpx and requests keep headers, are masked by name."""
    headers = [("Accept", "*/*"), ("Authorization", "Basic dXNlcjpw"), ("X-Api-Key", b"k-123")]
    expected = [("Accept", "*/*"), ("Authorization", MASK), ("X-Api-Key", MASK)]
    assert redact_value(headers) == expected


def test_every_registered_secret_is_one_alternation_scanned_once_per_line() -> None:
    """Redaction runs on every log line: however many secrets are registered, a line costs one
    scan for them (one compiled alternation, longest first) and one for the token shapes, never
    a scan per secret. (Speed is not timed here: a busy machine would fail a timed check.)"""
    from listener.observability import redaction

    secrets = [f"registered-secret-number-{n:03d}" for n in range(100)]
    for value in secrets:
        register_secret(value)
    pattern = redaction._registry.pattern
    assert pattern is not None
    assert all(pattern.fullmatch(value) for value in secrets)
    line = f"poll mailbox=sales@contoso.com a={secrets[7]} b={secrets[93]} duration=0.25"
    assert redact(line) == f"poll mailbox=sales@contoso.com a={MASK} b={MASK} duration=0.25"
    plain = "poll finished mailbox=sales@contoso.com handed_over=3 duration=0.25 folder=Inbox"
    assert redact(plain) == plain
