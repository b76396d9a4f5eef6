"""Standard Webhooks signatures for outbound events: ``v1`` (HMAC-SHA256) and ``v1a`` (Ed25519).

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}`` over the raw body bytes — the
bytes sent, whether the event body or a template's rendering. The scheme follows the secret's
prefix (service/core/signing_keys.py): a ``whsec_`` secret signs ``v1``, so any Standard Webhooks
library verifies it; a ``whsk_`` key signs ``v1a``, verified with its ``whpk_`` public key, which
cannot forge a signature. Several secrets (a rotation's grace period) give space-separated
signatures. Ed25519 comes from ``cryptography`` (OpenSSL underneath).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Sequence

from service.core.signing_keys import (
    SCHEMES,
    SECRET_PREFIX,
    new_secret,
    private_key,
    public_key,
    scheme_of,
)

__all__ = ["SCHEMES", "Signer", "headers", "new_secret", "public_key", "scheme_of", "sign"]

KEYS_KEPT = 4096
"""Secrets whose prepared keys a :class:`Signer` keeps (it starts over past that)."""


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` or ``v1a,<base64>`` signature of ``body`` sent as ``msg_id`` at
    ``timestamp`` (Unix s), by the scheme of ``secret``."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    if scheme_of(secret) == "v1a":
        return "v1a," + base64.b64encode(private_key(secret).sign(content)).decode()
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    # hmac.digest is OpenSSL's one-shot HMAC, without building an HMAC object per signature.
    digest = hmac.digest(key, content, hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers; several secrets give space-separated signatures."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }


class Signer:
    """Signs as :func:`sign` and :func:`headers` do, with each secret's key prepared once: a
    ``whsec_`` secret's HMAC keyed once and copied per signature (HMAC-SHA256 then hashes the
    message only, not the key's two blocks again, and the secret is not base64-decoded every
    time), a ``whsk_`` key's Ed25519 private key loaded once. Used by the dispatcher once per
    delivery (docs/performance.md §4); the keys live as long as this object."""

    def __init__(self) -> None:
        self._keys: dict[str, Callable[[bytes, bytes], bytes]] = {}

    def _key(self, secret: str) -> Callable[[bytes, bytes], bytes]:
        sign_with = self._keys.get(secret)
        if sign_with is not None:
            return sign_with
        if len(self._keys) >= KEYS_KEPT:
            self._keys.clear()
        if scheme_of(secret) == "v1a":
            key = private_key(secret)

            def sign_with(prefix: bytes, body: bytes) -> bytes:
                return b"v1a," + binascii.b2a_base64(key.sign(prefix + body), newline=False)

        else:
            keyed = hmac.new(
                base64.b64decode(secret.removeprefix(SECRET_PREFIX)), digestmod=hashlib.sha256
            )

            def sign_with(prefix: bytes, body: bytes) -> bytes:
                mac = keyed.copy()
                mac.update(prefix)
                mac.update(body)
                return b"v1," + binascii.b2a_base64(mac.digest(), newline=False)

        self._keys[secret] = sign_with
        return sign_with

    def signature(self, secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> bytes:
        """The ``webhook-signature`` header's value (ASCII): one signature per secret,
        space-separated, as :func:`headers` gives it."""
        prefix = f"{msg_id}.{timestamp}.".encode()
        if len(secrets) == 1:
            return self._key(secrets[0])(prefix, body)
        return b" ".join(self._key(secret)(prefix, body) for secret in secrets)
