"""SOAP 1.1 envelopes for the EWS emulator: safe parsing, response and fault builders.

Requests are parsed with a locked-down lxml parser (no entities, no network, no huge trees, a size
limit) because the emulator is reachable by anything on the machine. Every response carries
``t:ServerVersionInfo`` in its header: exchangelib's ``Version.from_soap_header`` raises
``TransportError`` without it, and its version guess (a dummy ``ConvertId``) only needs that header.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lxml import etree

__all__ = [
    "ACCESS_DENIED_TEXT",
    "ENS",
    "MNS",
    "NON_EXISTENT_MAILBOX_TEXT",
    "SERVER_VERSION",
    "SOAPNS",
    "TNS",
    "Envelope",
    "Fault",
    "SoapError",
    "build_envelope",
    "error_message",
    "m",
    "parse_envelope",
    "server_version_info",
    "soap_fault",
    "streaming_envelope",
    "sub",
    "t",
]

SOAPNS = "http://schemas.xmlsoap.org/soap/envelope/"
MNS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TNS = "http://schemas.microsoft.com/exchange/services/2006/types"
ENS = "http://schemas.microsoft.com/exchange/services/2006/errors"
_NSMAP = {"s": SOAPNS, "m": MNS, "t": TNS}

#: What Exchange Online reports (see ews-samples/from-clients/…V2017_07_11…): build 15.1 maps to
#: Exchange2016 in exchangelib's version table, and "V2017_07_11" is the schema version string it
#: echoes. exchangelib treats such a "V…_" string as bogus and keeps the API version it requested.
SERVER_VERSION = {
    "MajorVersion": "15",
    "MinorVersion": "1",
    "MajorBuildNumber": "2507",
    "MinorBuildNumber": "6",
    "Version": "V2017_07_11",
}

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024

#: Exchange Online's wording, in faults and in response messages alike; clients match on it.
NON_EXISTENT_MAILBOX_TEXT = "The SMTP address has no mailbox associated with it."
ACCESS_DENIED_TEXT = "Access is denied. Check credentials and try again."


def m(tag: str) -> str:
    """Clark name in the messages namespace."""
    return f"{{{MNS}}}{tag}"


def t(tag: str) -> str:
    """Clark name in the types namespace."""
    return f"{{{TNS}}}{tag}"


def sub(
    parent: etree._Element,
    tag: str,
    text: str | None = None,
    attrib: Mapping[str, str] | None = None,
) -> etree._Element:
    """Append a child element with optional text and attributes."""
    child = etree.SubElement(parent, tag, attrib=dict(attrib) if attrib else None)
    if text is not None:
        # XML 1.0 cannot carry NUL and most control characters, not even as references; mail can
        # (attachment names, subjects). Exchange drops them from its answers; so do we.
        child.text = _NOT_XML.sub("", text) if _NOT_XML.search(text) else text
    return child


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


class SoapError(Exception):
    """The request is not a SOAP 1.1 envelope we can read (answered as a SOAP client fault)."""


@dataclass(frozen=True)
class Envelope:
    """A parsed request: the header children and the single body child."""

    headers: tuple[etree._Element, ...]
    body: etree._Element

    @property
    def operation(self) -> str:
        """The local name of the body child, e.g. ``GetItem``."""
        return etree.QName(self.body).localname

    def header(self, name: str) -> etree._Element | None:
        """The header child ``t:name``, if present."""
        tag = t(name)
        for element in self.headers:
            if element.tag == tag:
                return element
        return None


@dataclass(frozen=True)
class Fault:
    """An injected failure, decided per request by ``faults.FaultEngine.decide``.

    ``kind`` is one of:

    - ``"server_busy"``: HTTP 500 SOAP fault ``ErrorServerBusy`` with ``BackOffMilliseconds``
      (``back_off_ms``), or the ``MaxConcurrency`` policy variant without it (``back_off_ms=None``).
    - ``"soap_fault"``: HTTP 500 SOAP fault with ``code`` (e.g. ``ErrorExceededConnectionCount``).
    - ``"response_error"``: HTTP 200, a response message with ``ResponseClass="Error"``, ``code``.
    - ``"http"``: a bare HTTP ``status`` (500, 503 with ``retry_after`` seconds) and empty body.
    - ``"drop"``: close the connection without a response (``after_bytes`` > 0: mid-response).
    - ``"latency"``: sleep ``delay`` seconds, then answer normally.
    - ``"unauthorized"``: HTTP 401 as for an expired (``code="token_expired"``) or revoked token.

    ``delay`` applies before any kind, so latency combines with the others.
    """

    kind: str
    code: str = "ErrorServerBusy"
    message: str = "The server cannot service this request right now. Try again later."
    status: int = 500
    back_off_ms: int | None = None
    retry_after: int | None = None
    delay: float = 0.0
    after_bytes: int = 0
    extra: Mapping[str, str] = field(default_factory=dict)


_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    huge_tree=False,
    remove_blank_text=True,
    load_dtd=False,
)


def parse_envelope(data: bytes, limit: int = DEFAULT_MAX_REQUEST_BYTES) -> Envelope:
    """Parse a request; raises ``SoapError`` for anything that is not a SOAP 1.1 envelope."""
    if len(data) > limit:
        raise SoapError(f"request of {len(data)} bytes exceeds the limit of {limit}")
    try:
        root = etree.fromstring(data, parser=_PARSER)
    except etree.XMLSyntaxError as exc:
        raise SoapError(f"malformed XML: {exc}") from exc
    if root.tag != f"{{{SOAPNS}}}Envelope":
        raise SoapError(f"root element is {root.tag}, not a SOAP 1.1 Envelope")
    header = root.find(f"{{{SOAPNS}}}Header")
    body = root.find(f"{{{SOAPNS}}}Body")
    if body is None or len(body) != 1:
        raise SoapError("the SOAP Body must hold exactly one element")
    headers = tuple(c for c in header if isinstance(c.tag, str)) if header is not None else ()
    return Envelope(headers=headers, body=body[0])


def server_version_info() -> etree._Element:
    """A fresh ``t:ServerVersionInfo`` element."""
    return etree.Element(t("ServerVersionInfo"), attrib=SERVER_VERSION, nsmap={"t": TNS})


def build_envelope(body_child: etree._Element | None, *, with_version: bool = True) -> bytes:
    """Serialize a response envelope around ``body_child`` (a ``m:…Response`` or ``s:Fault``).

    A fault is written as Exchange writes one (ews-samples/from-clients/*.fault.xml): no
    ``s:Header`` (exchangelib: "normal when the response contains SOAP-level errors") and only
    the ``s`` prefix on the envelope. With ``t`` declared on the envelope, lxml dropped the
    ``xmlns:a`` of ``<faultcode>a:ErrorNonExistentMailbox</faultcode>`` as redundant when the
    fault moved in, leaving the ``a:`` of its text unbound (issue 11, point 17).
    """
    fault = body_child is not None and body_child.tag == f"{{{SOAPNS}}}Fault"
    root = etree.Element(f"{{{SOAPNS}}}Envelope", nsmap={"s": SOAPNS} if fault else _NSMAP)
    if with_version and not fault:
        header = etree.SubElement(root, f"{{{SOAPNS}}}Header")
        header.append(server_version_info())
    body = etree.SubElement(root, f"{{{SOAPNS}}}Body")
    if body_child is not None:
        body.append(body_child)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def streaming_envelope(body_child: etree._Element) -> bytes:
    """One envelope of a streamed (GetStreamingEvents) response, byte for byte as Exchange's.

    Exchange streams each envelope with the SOAP namespace as the *default* namespace, no XML
    declaration, and ``soap11`` prefixes on Header and Body::

        <Envelope xmlns="http://schemas.xmlsoap.org/soap/envelope/"><soap11:Header …

    The EWS Managed API and its ports find envelopes in the stream by that literal start tag, so
    ``<?xml …?><s:Envelope …>`` made them see no event at all (issue 11, point 16). exchangelib
    finds them by local name and reads either.
    """
    # lxml-stubs type nsmap keys as str; None (the default namespace) is what lxml documents.
    version = etree.Element(
        t("ServerVersionInfo"),
        attrib=SERVER_VERSION,
        nsmap={None: TNS},  # type: ignore[dict-item]
    )
    return b"".join(
        (
            f'<Envelope xmlns="{SOAPNS}"><soap11:Header xmlns:soap11="{SOAPNS}">'.encode(),
            etree.tostring(version),
            f'</soap11:Header><soap11:Body xmlns:soap11="{SOAPNS}">'.encode(),
            etree.tostring(body_child, encoding="utf-8", xml_declaration=False),
            b"</soap11:Body></Envelope>",
        )
    )


def soap_fault(
    code: str,
    message: str,
    *,
    values: Mapping[str, str] | None = None,
    message_xml: Iterable[etree._Element] = (),
    faultcode_prefix: str = "a",
) -> etree._Element:
    """An ``s:Fault`` as Exchange writes it (ews-samples/from-clients/*.fault.xml).

    Each element declares its own prefix (``xmlns:a`` on ``faultcode``, ``xmlns:e`` on the error
    elements, ``xmlns:t`` on ``t:MessageXml``), so the fault is namespace-well-formed wherever it
    is put. exchangelib reads ``detail/e:ResponseCode`` and maps it to its exception of the same
    name; for ``ErrorServerBusy`` it reads the ``t:Value`` named ``BackOffMilliseconds``.
    """
    fault = etree.Element(f"{{{SOAPNS}}}Fault", nsmap={"s": SOAPNS})
    faultcode = etree.SubElement(fault, "faultcode", nsmap={faultcode_prefix: TNS})
    faultcode.text = f"{faultcode_prefix}:{code}"
    faultstring = etree.SubElement(fault, "faultstring")
    faultstring.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
    faultstring.text = message
    detail = etree.SubElement(fault, "detail")
    for tag, text in (("ResponseCode", code), ("Message", message)):
        element = etree.SubElement(detail, f"{{{ENS}}}{tag}", nsmap={"e": ENS})
        element.text = _NOT_XML.sub("", text)
    extra = list(message_xml)
    if values or extra:
        xml = etree.SubElement(detail, t("MessageXml"), nsmap={"t": TNS})
        for name, value in (values or {}).items():
            sub(xml, t("Value"), value, {"Name": name})
        for element in extra:
            xml.append(element)
    return fault


def error_message(
    tag: str,
    code: str,
    text: str,
    *,
    values: Mapping[str, str] | None = None,
    container: str | None = None,
) -> etree._Element:
    """A ``m:…ResponseMessage`` with ``ResponseClass="Error"`` (MessageText, ResponseCode, …).

    ``container`` adds the empty ``m:Items``/``m:Folders``/``m:Attachments`` element that
    ``messages.xsd`` requires in item, folder and attachment info response messages.
    """
    message = etree.Element(m(tag), attrib={"ResponseClass": "Error"})
    sub(message, m("MessageText"), text)
    sub(message, m("ResponseCode"), code)
    sub(message, m("DescriptiveLinkKey"), "0")
    if values:
        xml = sub(message, m("MessageXml"))
        for name, value in values.items():
            sub(xml, t("Value"), value, {"Name": name})
    if container:
        sub(message, m(container))
    return message
