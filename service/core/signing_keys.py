"""Subscription signing secrets: ``whsec_`` HMAC secrets (Standard Webhooks ``v1``) and ``whsk_``
Ed25519 signing keys (``v1a``) with their ``whpk_`` public keys.

The scheme follows the prefix, so a subscription stores one secret column whatever its scheme, and
rotating (or switching scheme) is making a new secret. Signing itself is service/delivery/signing.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SECRET_PREFIX = "whsec_"
SIGNING_KEY_PREFIX = "whsk_"
PUBLIC_KEY_PREFIX = "whpk_"
SCHEMES = ("v1", "v1a")
"""``v1``: HMAC-SHA256 with a shared secret; ``v1a``: Ed25519 with a key pair."""


def new_secret(scheme: str = "v1") -> str:
    """A fresh ``whsec_`` secret (``v1``: 24 random bytes) or ``whsk_`` signing key (``v1a``: a
    32-byte Ed25519 seed), base64 after the prefix."""
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


def private_key(secret: str) -> Ed25519PrivateKey:
    """The Ed25519 key of a ``whsk_`` signing key."""
    seed = base64.b64decode(secret.removeprefix(SIGNING_KEY_PREFIX))
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key(secret: str) -> str | None:
    """The ``whpk_`` public key of a ``v1a`` signing key; None for a ``v1`` secret."""
    if scheme_of(secret) != "v1a":
        return None
    raw = (
        private_key(secret)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode()
