"""Attachment names become harmless, unique file names."""

from __future__ import annotations

import pytest

from listener.handlers._names import MAX_NAME_BYTES, safe_filename, unique_filenames


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../x", "x"),
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("C:\\Windows\\evil.exe", "evil.exe"),
        ("a\x00b", "ab"),
        ("line\nbreak\r.txt", "linebreak.txt"),
        ("invoice\u202etxt.exe", "invoicetxt.exe"),
        ("\u2066iso\u2069late.doc", "isolate.doc"),
        ("zero\u200bwidth.txt", "zerowidth.txt"),
        ("..", "attachment"),
        (".", "attachment"),
        ("...hidden", "hidden"),
        ("", "attachment"),
        (None, "attachment"),
        ("dir/", "attachment"),
        ("   ", "attachment"),
        ('what?<is>:"this"|*.txt', "what__is___this___.txt"),
        ("CON.txt", "_CON.txt"),
        ("nul", "_nul"),
        ("trailing. . ", "trailing"),
        ("e\u0301t\u00e9.txt", "\u00e9t\u00e9.txt"),  # NFC
    ],
)
def test_safe_filename(raw: str | None, expected: str) -> None:
    """Separators, traversal, controls and bidi overrides are removed; empty names get a default."""
    assert safe_filename(raw) == expected


@pytest.mark.parametrize(
    "raw", ["a" * 1000 + ".pdf", "é" * 500 + ".pdf", "x" * 300, "b" * 400 + "." + "c" * 40]
)
def test_long_names_are_cut_to_the_byte_limit(raw: str) -> None:
    """Very long names fit in the byte limit, keeping a short extension."""
    name = safe_filename(raw)
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name
    if raw.endswith(".pdf"):
        assert name.endswith(".pdf")


def test_duplicates_are_numbered_case_insensitively() -> None:
    """Equal names (ignoring case, after sanitising) get ' (n)' before the extension."""
    names = unique_filenames(["a.pdf", "A.PDF", "../a.pdf", "b", "b", None, "", "a (2).pdf"])
    assert names == [
        "a.pdf",
        "A (2).PDF",
        "a (3).pdf",
        "b",
        "b (2)",
        "attachment",
        "attachment (2)",
        "a (2) (2).pdf",
    ]
    assert len({n.casefold() for n in names}) == len(names)


def test_duplicate_long_names_stay_within_the_limit() -> None:
    """Numbering a name already at the limit still fits."""
    names = unique_filenames(["z" * 500 + ".txt"] * 3)
    assert len(set(names)) == 3
    assert all(len(n.encode()) <= MAX_NAME_BYTES and n.endswith(".txt") for n in names)
