"""Standard Webhooks signatures for outbound events: ``v1`` (HMAC-SHA256) and ``v1a`` (Ed25519).

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}`` over the raw body bytes. A
``v1`` secret is ``whsec_`` + base64 of 24 random bytes, so any Standard Webhooks library verifies
it. A ``v1a`` signing key is ``whsk_`` + base64 of a 32-byte Ed25519 seed; subscribers verify with
its public key, ``whpk_`` + base64 of the 32-byte public key, which cannot forge a signature.

The scheme follows the secret's prefix, so a rotation (or a switch of scheme) is a new secret with
the old one kept for the grace period: each message then carries both signatures, space-separated.
Ed25519 comes from ``cryptography`` (OpenSSL underneath); see docs/filters-and-templates.md.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SECRET_PREFIX = "whsec_"
SIGNING_KEY_PREFIX = "whsk_"
PUBLIC_KEY_PREFIX = "whpk_"
SCHEMES = ("v1", "v1a")
"""``v1``: HMAC-SHA256 with a shared secret; ``v1a``: Ed25519 with a key pair."""


def new_secret(scheme: str = "v1") -> str:
    """A fresh ``whsec_`` secret (``v1``) or ``whsk_`` signing key (``v1a``)."""
    if scheme == "v1a":
        seed = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return SIGNING_KEY_PREFIX + base64.b64encode(seed).decode()
    if scheme != "v1":
        raise ValueError(f"unknown signature scheme {scheme!r}")
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


def scheme_of(secret: str) -> str:
    return "v1a" if secret.startswith(SIGNING_KEY_PREFIX) else "v1"


def public_key(secret: str) -> str | None:
    """The ``whpk_`` public key of a ``v1a`` signing key; None for a ``v1`` secret."""
    if scheme_of(secret) != "v1a":
        return None
    raw = (
        _private_key(secret)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode()


def _private_key(secret: str) -> Ed25519PrivateKey:
    seed = base64.b64decode(secret.removeprefix(SIGNING_KEY_PREFIX))
    return Ed25519PrivateKey.from_private_bytes(seed)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` or ``v1a,<base64>`` signature of ``body`` sent as ``msg_id`` at
    ``timestamp`` (Unix s), by the scheme of ``secret``."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    if scheme_of(secret) == "v1a":
        return "v1a," + base64.b64encode(_private_key(secret).sign(content)).decode()
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers; several secrets give space-separated signatures."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }
