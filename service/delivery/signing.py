"""Standard Webhooks (v1, HMAC-SHA256) signatures for outbound events.

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}`` over the raw body bytes; the
secret is ``whsec_`` + base64 of 24 random bytes, so any Standard Webhooks library verifies it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``v1,<base64>`` signature of ``body`` sent as ``msg_id`` at ``timestamp`` (Unix s)."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    # hmac.digest is OpenSSL's one-shot HMAC, without building an HMAC object per signature.
    digest = hmac.digest(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode()


def headers(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers; several secrets give space-separated signatures."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets),
    }
