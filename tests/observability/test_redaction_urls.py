"""URLs lose their userinfo and every query value to redaction (issue 11, point 7)."""

from __future__ import annotations

import pytest

from listener.observability.redaction import redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "POST http://user:P4ss@hooks.example/x?code=FUNCTIONKEY&v=2#top failed",
            "POST http://***@hooks.example/x?code=***&v=***#top failed",
        ),
        ("https://fn.example/api/in?FUNCTIONKEY", "https://fn.example/api/in?***"),
        ("'https://la.example/wf?sp=%2F&sig=zz9'", "'https://la.example/wf?sp=***&sig=***'"),
        (
            "https://outlook.office365.com/EWS/Exchange.asmx",
            "https://outlook.office365.com/EWS/Exchange.asmx",
        ),
        ("what? a=b", "what? a=b"),
    ],
)
def test_url_userinfo_and_query_values_are_masked(text: str, expected: str) -> None:
    """Receivers put keys in queries under any name (Azure Functions' ?code=): mask them all."""
    assert redact(text) == expected
