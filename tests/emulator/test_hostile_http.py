"""The emulator against hostile HTTP (bad Content-Length, big or anonymous bodies) and its keys."""

from __future__ import annotations

import os
import socket
import ssl
import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer
from tests.emulator.conftest import CLIENT_ID, TENANT


def _exchange(url: str, ca: EmulatorCA, request: bytes, *, timeout: float = 5) -> bytes:
    """Send ``request`` on a fresh TLS connection; the bytes answered until the server closes."""
    parts = urlsplit(url)
    raw = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    with ca.client_context().wrap_socket(raw, server_hostname=parts.hostname) as conn:
        conn.sendall(request)
        answer = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except (TimeoutError, ssl.SSLError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
            if b"\r\n\r\n" in answer and b"Connection: close" not in answer:
                break  # a keep-alive answer: the test reads only the status line
    return answer


def _post(path: str, length: str, token: str = "not-a-jwt", body: bytes = b"") -> bytes:  # noqa: S107
    return (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: text/xml\r\nContent-Length: {length}\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize(
    ("length", "status"),
    [("-1", b"400"), ("12abc", b"400"), (" +5", b"400"), ("99999999999999999999", b"413")],
)
def test_bad_content_length_is_refused_before_reading(
    emu: EwsEmulator, ca: EmulatorCA, length: str, status: bytes
) -> None:
    """A negative, non-numeric or huge Content-Length is answered at once, nothing is read."""
    # Before: ``-1`` made the emulator read until the client hung up (unbounded memory); this
    # client never hangs up, so the old code left it waiting for the timeout.
    answer = _exchange(emu.url, ca, _post("/EWS/Exchange.asmx", length))
    assert answer.startswith(b"HTTP/1.1 " + status)


def test_oversized_body_is_refused_before_authentication(emu: EwsEmulator, ca: EmulatorCA) -> None:
    """A declared body over the limit gets 413 even without a token, before it is sent."""
    too_big = str(emu.max_request_bytes + 1)
    answer = _exchange(emu.url, ca, _post("/EWS/Exchange.asmx", too_big, token="not-a-jwt"))
    assert answer.startswith(b"HTTP/1.1 413")


def test_chunked_request_body_is_refused(emu: EwsEmulator, ca: EmulatorCA) -> None:
    """A chunked request body (which the emulator cannot read) gets 411, not a misread request."""
    request = (
        b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    assert _exchange(emu.url, ca, request).startswith(b"HTTP/1.1 411")


def test_refused_token_keeps_the_connection_usable(
    emu: EwsEmulator, ca: EmulatorCA, token_server: TokenServer
) -> None:
    """An anonymous body is thrown away unread, and the next request on the connection works."""
    body = b"<x/>" * 50_000
    parts = urlsplit(emu.url)
    good = token_server.issue_token(TENANT, CLIENT_ID)
    raw = socket.create_connection((parts.hostname, parts.port), timeout=5)
    with ca.client_context().wrap_socket(raw, server_hostname=parts.hostname) as conn:
        conn.sendall(_post("/EWS/Exchange.asmx", str(len(body)), "not-a-jwt", body))
        conn.sendall(_post("/EWS/Exchange.asmx", "3", good, b"<x>"))
        answer = b""
        while answer.count(b"HTTP/1.1 ") < 2 or not answer.endswith(b"</s:Envelope>"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    first, _, second = answer.partition(b"HTTP/1.1 ")[2].partition(b"HTTP/1.1 ")
    assert first.startswith(b"401")
    assert second.startswith(b"400")  # the second body (``<x>``) is read, and is not SOAP
    assert b"ErrorInvalidRequest" in second


def test_token_server_refuses_negative_content_length(
    token_server: TokenServer, ca: EmulatorCA
) -> None:
    """The token server shares the guard: ``Content-Length: -1`` is a 400."""
    path = f"/{TENANT}/oauth2/v2.0/token"
    answer = _exchange(token_server.url, ca, _post(path, "-1"))
    assert answer.startswith(b"HTTP/1.1 400")


def test_server_key_file_is_private(tmp_path: Path) -> None:
    """server.pem (the TLS private key) is created 0600 whatever the umask; ca.pem is public."""
    directory = tmp_path / "ca"
    previous = os.umask(0o022)
    try:
        created = EmulatorCA(directory)
        again = EmulatorCA(directory)  # a second run replaces the key, still private
    finally:
        os.umask(previous)
    assert stat.S_IMODE(created.cert_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(again.cert_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(created.ca_file.stat().st_mode) == 0o644
    assert "PRIVATE KEY" in again.cert_file.read_text()
