"""Schema folder resolution and the cached validator."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from ews_listener_emulators.schema import SCHEMA_DIR_ENV, SchemaValidator, resolve_schema_dir
from ews_listener_emulators.soap import MNS, TNS, parse_envelope
from tests.emulator.conftest import SCHEMA_DIR

needs_schema = pytest.mark.skipif(
    not (SCHEMA_DIR / "ews.xsd").is_file(), reason="../shared/ews-schema is not here"
)


def test_resolution_prefers_argument_then_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An explicit folder wins; otherwise $EWS_SCHEMA_DIR; a folder without ews.xsd is off."""
    monkeypatch.delenv(SCHEMA_DIR_ENV, raising=False)
    assert resolve_schema_dir(None) is None
    assert resolve_schema_dir(tmp_path) is None
    monkeypatch.setenv(SCHEMA_DIR_ENV, str(tmp_path))
    assert resolve_schema_dir(None) is None
    (tmp_path / "ews.xsd").write_text("<x/>")
    assert resolve_schema_dir(None) == tmp_path


@needs_schema
def test_validator_is_compiled_once_and_finds_violations() -> None:
    """Two validators share one compiled schema; a bad element is reported with its reason."""
    first, second = SchemaValidator(SCHEMA_DIR), SchemaValidator(SCHEMA_DIR)
    assert first._schema is second._schema
    good = etree.fromstring(
        f'<m:GetFolder xmlns:m="{MNS}" xmlns:t="{TNS}"><m:FolderShape>'
        "<t:BaseShape>IdOnly</t:BaseShape></m:FolderShape><m:FolderIds>"
        '<t:DistinguishedFolderId Id="inbox"/></m:FolderIds></m:GetFolder>'
    )
    assert first.validate(good) is None
    bad = etree.fromstring(f'<m:GetFolder xmlns:m="{MNS}"/>')
    problem = first.validate(bad)
    assert problem is not None
    assert "FolderShape" in problem


def test_envelope_parser_refuses_entities_and_oversize() -> None:
    """The request parser does not expand entities and enforces its size limit."""
    from ews_listener_emulators.soap import SoapError

    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>'
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
        b"<x>&a;</x></s:Body></s:Envelope>"
    )
    envelope = parse_envelope(bomb)
    assert "aaaaaaaaaa" not in etree.tostring(envelope.body).decode()
    with pytest.raises(SoapError):
        parse_envelope(b"<a/>" * 10, limit=8)
    with pytest.raises(SoapError):
        parse_envelope(b"<notsoap/>")
