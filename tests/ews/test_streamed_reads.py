"""How the listener's requests adapter reads a streaming EWS answer (``GetStreamingEvents``).

exchangelib's ``DocumentYielder`` asks ``iter_content()`` for one byte at a time; a chunked
stream is read a whole HTTP chunk at a time and handed over byte by byte, and neither kind of
stream holds an envelope back until more of the answer comes. A real HTTP server on 127.0.0.1
holds the answer open after the first envelope until the test has read it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from exchangelib.util import DocumentYielder

from listener.sources.ews._transport import _CaBundleAdapter

_FIRST = b'<s:Envelope xmlns:s="urn:s"><s:Body><m:One xmlns:m="urn:m"/></s:Body></s:Envelope>'
_SECOND = b'<s:Envelope xmlns:s="urn:s"><s:Body><m:Two xmlns:m="urn:m"/></s:Body></s:Envelope>'
_DECLARATION = b"<?xml version='1.0' encoding='utf-8'?>\n"


class _Held(ThreadingHTTPServer):
    chunked = True
    release: threading.Event
    finished: threading.Event


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Held

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        if self.server.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(_FIRST) + len(_SECOND)))
        self.end_headers()
        self._part(_FIRST)
        self.server.release.wait(10)  # until the test has the first envelope (or gives up)
        self._part(_SECOND)
        if self.server.chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.server.finished.set()

    def _part(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self.server.chunked else data)
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(params=[True, False], ids=["chunked", "content-length"])
def server(request: pytest.FixtureRequest) -> Iterator[_Held]:
    held = _Held(("127.0.0.1", 0), _Handler)
    held.chunked = request.param
    held.release = threading.Event()
    held.finished = threading.Event()
    thread = threading.Thread(target=held.serve_forever, daemon=True)
    thread.start()
    yield held
    held.release.set()
    held.shutdown()
    held.server_close()


def _stream(held: _Held) -> requests.Response:
    session = requests.Session()
    session.mount("http://", _CaBundleAdapter())
    return session.get(f"http://127.0.0.1:{held.server_address[1]}/", stream=True, timeout=30)


def test_each_envelope_is_handed_over_while_the_stream_is_still_open(server: _Held) -> None:
    """The first envelope reaches the reader before the server sends anything more, whole and
    byte for byte, and so does the second after it."""
    documents = iter(DocumentYielder(_stream(server).iter_content()))
    first = next(documents)
    assert not server.finished.is_set(), "the first envelope waited for the rest of the answer"
    server.release.set()
    assert first == _DECLARATION + _FIRST
    assert list(documents) == [_DECLARATION + _SECOND]
    # The reader may have the last byte before the server thread marks itself done.
    assert server.finished.wait(10)


def test_a_chunked_stream_is_read_in_whole_chunks_and_handed_over_byte_by_byte(
    server: _Held,
) -> None:
    """exchangelib's one-byte ``iter_content()`` of a chunked stream reads 64 KiB at a time from
    urllib3; a stream of known length keeps reading one byte at a time (a larger read would wait
    for bytes the server has not sent)."""
    server.release.set()
    response = _stream(server)
    sizes: list[int | None] = []
    stream = response.raw.stream

    def counted(amt: int | None = None, decode_content: bool | None = None) -> Iterator[bytes]:
        sizes.append(amt)
        return stream(amt, decode_content=decode_content)

    response.raw.stream = counted
    items = list(response.iter_content())
    assert b"".join(items) == _FIRST + _SECOND
    assert {len(item) for item in items} == {1}
    assert sizes == ([1 << 16] if server.chunked else [1])
