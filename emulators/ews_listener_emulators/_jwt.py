"""Signing keys and JWT checks for the token server: Entra-shaped access tokens, client assertions.

Entra ID signs app-only access tokens with RS256 and names the key twice in the header (``kid`` and
``x5t``, both the base64url SHA-1 thumbprint of the signing certificate); its JWKS lists the key
with ``x5c``. Client assertions (``private_key_jwt``) arrive from msal as RS256 with ``x5t`` or,
since msal 1.35 when the certificate is known, as PS256 with ``x5t#S256``
(``msal/application.py``: ``_extract_cert_and_thumbprints``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Collection
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from jwt.types import Options

__all__ = [
    "ASSERTION_TYPE",
    "AssertionRejected",
    "SigningKey",
    "b64url",
    "certificate_thumbprints",
    "check_client_assertion",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ASSERTION_ALGORITHMS = ("RS256", "PS256")
# Times, audience and issuer are checked by the callers, against the server's (injectable) clock.
_SIGNATURE_ONLY: Options = {
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
}


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_int(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def certificate_thumbprints(cert: x509.Certificate) -> tuple[str, str]:
    """``(x5t, x5t#S256)``: base64url SHA-1 and SHA-256 of the DER certificate."""
    der = cert.public_bytes(serialization.Encoding.DER)
    # SHA-1 here is an identifier the JOSE header format mandates (RFC 7515 §4.1.7), not security.
    sha1 = hashlib.sha1(der, usedforsecurity=False).digest()
    return b64url(sha1), b64url(hashlib.sha256(der).digest())


class SigningKey:
    """An RSA key with a self-signed certificate, as Entra publishes in its JWKS."""

    def __init__(self, *, key_size: int = 2048) -> None:
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.accesscontrol.emu")])
        now = dt.datetime.now(dt.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .sign(self._private_key, hashes.SHA256())
        )
        self.kid, _ = certificate_thumbprints(self.certificate)
        self.public_key = self._private_key.public_key()

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"

    def jwk(self) -> dict[str, Any]:
        """The public key as one JWKS entry, shaped like Entra's."""
        numbers = self.public_key.public_numbers()
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": _b64url_int(numbers.n),
            "e": _b64url_int(numbers.e),
            "x5c": [base64.b64encode(der).decode("ascii")],
        }

    def sign(self, claims: dict[str, Any]) -> str:
        """An RS256 JWT with Entra's header (``typ``, ``alg``, ``x5t``, ``kid``)."""
        headers = {"typ": "JWT", "x5t": self.kid, "kid": self.kid}
        return jwt.encode(claims, self._private_key, algorithm="RS256", headers=headers)

    def decode(self, token: str) -> dict[str, Any]:
        """Check the signature only; every claim check is the caller's (it owns the clock).

        Raises ``jwt.InvalidSignatureError`` or another ``jwt.PyJWTError``.
        """
        claims: dict[str, Any] = jwt.decode(
            token, self.public_key, algorithms=["RS256"], options=_SIGNATURE_ONLY
        )
        return claims


class AssertionRejected(Exception):
    """A client assertion failed; ``code`` is the AADSTS number Entra answers with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_client_assertion(
    assertion: str,
    *,
    certificate: x509.Certificate | None,
    client_id: str,
    audiences: Collection[str],
    now: float,
) -> None:
    """Verify a ``private_key_jwt`` client assertion (RFC 7523 §3) the way Entra does.

    Codes chosen after Entra's: 50027 malformed, 700027 signature/unknown certificate,
    700021 ``iss``/``sub`` not the client, 700024 outside its validity, 700212 wrong audience.
    """
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        raise AssertionRejected(50027, "JWT token is invalid or malformed.") from None
    alg = header.get("alg")
    if alg not in _ASSERTION_ALGORITHMS:
        raise AssertionRejected(
            50027, f"Invalid JWT token. Unsupported signature algorithm '{alg}'."
        )
    if certificate is None:
        raise AssertionRejected(
            700027,
            f"Client assertion failed signature validation. No certificate is "
            f"registered on application '{client_id}'.",
        )
    sha1, sha256 = certificate_thumbprints(certificate)
    # msal sends the thumbprints base64url *with* padding (oauth2cli/assertion.py,
    # _encode_thumbprint), RFC 7515 says without: compare without, as Entra accepts both.
    sent_sha1 = str(header.get("x5t", sha1)).rstrip("=")
    sent_sha256 = str(header.get("x5t#S256", sha256)).rstrip("=")
    if sent_sha1 != sha1 or sent_sha256 != sha256:
        raise AssertionRejected(
            700027,
            "The certificate with identifier used to sign the client assertion is not "
            f"registered on application. [Reason - The key was not found., Thumbprint of key "
            f"used by client: '{header.get('x5t#S256') or header.get('x5t')}']",
        )
    try:
        claims: dict[str, Any] = jwt.decode(
            assertion,
            certificate.public_key(),  # type: ignore[arg-type]  # RSA only, checked by alg
            algorithms=list(_ASSERTION_ALGORITHMS),
            options=_SIGNATURE_ONLY,
        )
    except jwt.InvalidSignatureError:
        raise AssertionRejected(700027, "Client assertion failed signature validation.") from None
    except jwt.PyJWTError:
        raise AssertionRejected(50027, "JWT token is invalid or malformed.") from None
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise AssertionRejected(
            700021, "Client assertion application identifier doesn't match 'client_id' parameter."
        )
    aud = claims.get("aud")
    aud_values = [aud] if isinstance(aud, str) else list(aud or [])
    if not any(a in audiences for a in aud_values):
        raise AssertionRejected(
            700212, f"Client assertion audience claim does not match the token endpoint: {aud!r}."
        )
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if (
        not isinstance(exp, (int, float))
        or now >= exp
        or (isinstance(nbf, (int, float)) and now < nbf)
    ):
        raise AssertionRejected(700024, "Client assertion is not within its valid time range.")
