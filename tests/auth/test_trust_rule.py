"""One TLS trust rule for every outgoing connection (issue 11, point 9): the configured
``ca_bundle``, else the system store; never ``REQUESTS_CA_BUNDLE``; a per-endpoint bundle
applies to exactly its scheme, host and port. EWS goes through exchangelib's requests adapter,
which is what these tests drive, against a real HTTPS server on 127.0.0.1."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import trustme

from listener._tls import origin
from listener.sources.ews import _transport
from listener.sources.ews._transport import _CaBundleAdapter, register_ca_bundle


class _Ok(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


__all__ = ["Tls", "tls"]


class Tls:
    """A running HTTPS server and the PEM file of the CA that signed its certificate."""

    def __init__(self, server: ThreadingHTTPServer, ca_file: Path) -> None:
        self.server = server
        self.ca_file = ca_file
        self.port = server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}/EWS/Exchange.asmx"


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[Tls]:
    """An HTTPS server on 127.0.0.1 whose CA no system store trusts."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Tls(server, ca_file)
    finally:
        server.shutdown()
        server.server_close()
        with _transport._ca_lock:
            _transport._ca_by_origin.clear()


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A CA file that has nothing to do with the server."""
    path = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def _session() -> requests.Session:
    session = requests.Session()
    session.mount("https://", _CaBundleAdapter())
    return session


def test_ews_ignores_requests_ca_bundle_without_a_ca_bundle(
    tls: Tls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No mailbox ca_bundle: the system store decides, not REQUESTS_CA_BUNDLE (it trusted it)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.ca_file))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tls.ca_file))
    with _session() as session, pytest.raises(requests.exceptions.SSLError):
        session.get(tls.url, timeout=5)


def test_ews_trusts_the_mailbox_ca_bundle_whatever_the_environment(
    tls: Tls, other_ca: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint's ca_bundle wins over an environment pointing elsewhere."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca))
    register_ca_bundle(tls.url, str(tls.ca_file))
    with _session() as session:
        assert session.get(tls.url, timeout=5).text == "ok"
        assert session.post(tls.url.replace("/EWS/", "/ews/"), data=b"x", timeout=5).ok


def test_ews_ca_bundle_applies_to_its_own_port_only(tls: Tls) -> None:
    """A bundle for https://127.0.0.1:4567 is no bundle for https://127.0.0.1:45678.

    The old match was a string prefix; a port (or a host, ``mail.contoso.com`` versus
    ``mail.contoso.com.evil.net``) that merely starts with the configured one matched.
    """
    shorter = f"https://127.0.0.1:{str(tls.port)[:-1]}/EWS/Exchange.asmx"
    register_ca_bundle(shorter, str(tls.ca_file))
    with _session() as session, pytest.raises(requests.exceptions.SSLError):
        session.get(tls.url, timeout=5)


@pytest.mark.parametrize(
    ("configured", "requested", "same"),
    [
        ("https://mail.contoso.com", "https://mail.contoso.com.evil.net/EWS", False),
        ("https://mail.contoso.com", "https://MAIL.contoso.com:443/EWS/Exchange.asmx", True),
        ("https://mail.contoso.com/EWS/Exchange.asmx", "https://mail.contoso.com/x", True),
        ("https://mail.contoso.com", "http://mail.contoso.com/EWS", False),
        ("https://mail.contoso.com:8443", "https://mail.contoso.com/EWS", False),
        ("https://mail.contoso.com", "https://mail.contoso.com@evil.net/EWS", False),
    ],
)
def test_endpoints_match_by_scheme_host_and_port(
    configured: str, requested: str, same: bool
) -> None:
    """Exactly scheme, host and port: no prefix, no user-info trick."""
    assert (origin(configured) == origin(requested)) is same
