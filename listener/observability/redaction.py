"""Mask secrets and tokens in text and in nested values before anything is written out.

Two kinds of knowledge feed it:

* **Registered secrets**: every secret source calls :func:`register_secret` with the value it just
  read, so that value is masked wherever it shows up later, whatever surrounds it (an exception
  text from msal, a URL a library logs, a ``repr`` of a request).
* **Shapes**: bearer tokens, ``Authorization`` header values, ``client_secret=…`` and friends in
  form bodies, JSON and Python reprs, JWTs anywhere, and in URLs the userinfo and every query
  value (``?code=FUNCTIONKEY``, ``?sig=…``: receivers put keys there under any name). These
  catch tokens that were never registered (an access token minted by the server).

It runs on every log line, so the shapes are one precompiled alternation (one scan per string) and
strings shorter than the shortest thing that can be masked are returned untouched.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MASK",
    "forget_secrets",
    "is_secret_key",
    "is_secret_pair",
    "redact",
    "redact_value",
    "register_secret",
]

MASK = "***"

# A registered secret shorter than this is ignored: masking "abc" everywhere would garble logs and
# a three-character secret protects nothing anyway.
_MIN_SECRET = 4
# Nothing below this length can hold a registered secret or any of the shapes.
_MIN_TEXT = _MIN_SECRET

# Names whose value is a secret in ``name=value`` (query strings, form bodies) and in JSON/dict
# reprs (``"name": "value"``). ``token`` alone is included for JSON; ``token_type=Bearer`` is safe
# because the name must end right before ``=`` or the closing quote.
_PARAM_NAMES = (
    "client_secret",
    "client_assertion",
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "secret",
    "token",
    "assertion",
    "sig",  # Azure SAS signatures in URLs
)
_NAMES = "|".join(_PARAM_NAMES)

# A URL's query: every value is masked, names kept (…?code=***&v=***); receivers put keys there
# under any name. Tried first; its part before the "?" then goes through the other shapes.
_URL_QUERY = r"(?P<urlquery>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s?#\"'<>]*\?)(?P<query>[^\s#\"'<>]+)"
_OTHER_SHAPES = (
    # URL userinfo: scheme://user:password@host -> scheme://***@host
    r"(?P<url>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@\"'<>]+@",
    # JWT: three base64url segments, the header always starts '{"' -> 'eyJ'. The signature
    # may be empty (alg "none"), so the third segment is optional in length.
    r"(?P<jwt>\beyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*)",
    # Authorization / Proxy-Authorization header values, in "Name: value" lines, dict reprs
    # ('Authorization': 'Basic …') and JSON. The scheme word is masked too: harmless.
    r"(?P<auth>(?i:\b(?:proxy-)?authorization)[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n]+",
    # A bearer token anywhere else (WWW-Authenticate echoes, exception texts); not a plain
    # lower-case word: "OK: Bearer token valid until …" (credentials validate) is prose.
    r"(?P<bearer>(?i:\bbearer)\s+)(?![a-z]+\b)[A-Za-z0-9._~+/-]+=*",
    # "client_secret": "…" and 'client_secret': '…' (JSON, Python reprs).
    rf"(?P<key>[\"'](?i:{_NAMES})[\"']\s*:\s*)"
    r"(?P<quoted>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')",
    # client_secret=… in query strings and form bodies (value ends at & or whitespace).
    rf"(?P<param>(?i:\b(?:{_NAMES}))=)[^&\s\"',;]+",
)
_SHAPES = re.compile("|".join((_URL_QUERY, *_OTHER_SHAPES)))
_INNER = re.compile("|".join(_OTHER_SHAPES))  # for the part of a URL before its query
_QUERY_PART = re.compile(r"(?P<name>[^&;=]*=)?(?P<value>[^&;]+)")


def _mask_query(query: str) -> str:
    def one(part: re.Match[str]) -> str:
        return f"{part.group('name') or ''}{MASK}"

    return _QUERY_PART.sub(one, query)


def _mask_shape(match: re.Match[str]) -> str:
    group = match.lastgroup
    if group == "jwt":
        return MASK
    if group == "quoted":
        quote = match.group("quoted")[0]
        return f"{match.group('key')}{quote}{MASK}{quote}"
    if group == "url":
        return f"{match.group('url')}{MASK}@"
    if group == "query":
        head = match.group("urlquery")
        return _INNER.sub(_mask_shape, head) + _mask_query(match.group("query"))
    # auth, bearer, param: keep the prefix, mask the value.
    assert group is not None
    return f"{match.group(group)}{MASK}"


class _Registry:
    """The registered secrets and one compiled alternation over them (longest first)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        # The same secret also travels URL-encoded (form bodies, query strings) and JSON-escaped.
        variants = {
            value,
            urllib.parse.quote(value, safe=""),
            urllib.parse.quote_plus(value),
            json.dumps(value)[1:-1],
        }
        with self._lock:
            if variants <= self._values:
                return
            self._values |= {v for v in variants if len(v) >= _MIN_SECRET}
            ordered = sorted(self._values, key=len, reverse=True)
            self.pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self.pattern = None


_registry = _Registry()


def register_secret(value: str | None) -> None:
    """Mask ``value`` in everything :func:`redact` sees from now on (values < 4 chars ignored)."""
    if value is None:
        return
    value = str(value)
    if len(value.strip()) < _MIN_SECRET:
        return
    _registry.add(value)


def forget_secrets() -> None:
    """Drop every registered secret (tests)."""
    _registry.clear()


def redact(text: str) -> str:
    """``text`` with registered secrets and token shapes replaced by :data:`MASK`."""
    if len(text) < _MIN_TEXT:
        return text
    pattern = _registry.pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _SHAPES.sub(_mask_shape, text)


# Keys whose value is masked whole, whatever it looks like. Keys naming *where* a secret lives
# (``client_secret_env``, ``token_endpoint``, ``secret_source``) are not secrets and stay readable.
_SECRET_KEYS = frozenset(
    {
        "secret",
        "password",
        "passwd",
        "pwd",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "client_secret",
        "client_assertion",
        "assertion",
        "authorization",
        "proxy_authorization",
        "api_key",
        "apikey",
        "x_api_key",
        "private_key",
        "cookie",
        "set_cookie",
        "sas_token",
    }
)
_SECRET_PARTS = ("secret", "password", "passwd", "api_key", "apikey", "private_key")
_SECRET_SUFFIXES = ("_token", "_authorization")
_SAFE_SUFFIXES = (
    "_env",
    "_file",
    "_path",
    "_name",
    "_source",
    "_ref",
    "_id",
    "_type",
    "_url",
    "_uri",
    "_endpoint",
    "_count",
    "_total",
    "_expires",
    "_expires_in",
    "_expiry",
    "_kind",
)


def is_secret_key(key: object) -> bool:
    """Whether a mapping key names a secret value (``client_secret``, ``X-Api-Key``, …)."""
    if not isinstance(key, str):
        return False
    norm = key.strip().lower().replace("-", "_")
    if norm in _SECRET_KEYS:
        return True
    if norm.endswith(_SAFE_SUFFIXES):
        return False
    return any(part in norm for part in _SECRET_PARTS) or norm.endswith(_SECRET_SUFFIXES)


def is_secret_pair(obj: tuple[Any, ...]) -> bool:
    """A ``(name, value)`` header or form pair whose name is secret (as httpx keeps them)."""
    return (
        len(obj) == 2
        and is_secret_key(obj[0])
        and isinstance(obj[1], str | bytes)
        and len(obj[1]) > 0
    )


def redact_value(obj: Any) -> Any:
    """A copy of ``obj`` with strings redacted and values under secret-looking keys masked.

    Recurses into mappings, lists, tuples and sets; other objects are returned as they are (the
    logging processor also checks their ``repr``).
    """
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, Mapping):
        return {
            k: (MASK if is_secret_key(k) and v not in (None, "") else redact_value(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact_value(v) for v in obj]
    if isinstance(obj, tuple):
        if is_secret_pair(obj):
            return (obj[0], MASK)
        return tuple(redact_value(v) for v in obj)
    if isinstance(obj, set | frozenset):
        return type(obj)(redact_value(v) for v in obj)
    if isinstance(obj, bytes | bytearray):
        text = bytes(obj).decode("utf-8", "replace")
        red = redact(text)
        return obj if red == text else red
    return obj
