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
import hashlib
import hmac

from service.core.signing_keys import (
    SCHEMES,
    SECRET_PREFIX,
    new_secret,
    private_key,
    public_key,
    scheme_of,
)

__all__ = ["SCHEMES", "headers", "new_secret", "public_key", "scheme_of", "sign"]


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
