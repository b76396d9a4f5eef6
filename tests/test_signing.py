"""Standard Webhooks ``v1a`` (Ed25519) signatures, verified with libsodium (PyNaCl) — not the
OpenSSL implementation that signs — as a subscriber holding only the public key would."""

from __future__ import annotations

import base64
import time

import nacl.exceptions
import nacl.signing
import pytest
from standardwebhooks.webhooks import Webhook

from service.delivery import signing

BODY = b'{"type":"job.succeeded","timestamp":"2026-12-05T06:00:00Z","data":{}}'


def verify_v1a(public_key: str, header: dict[str, str], body: bytes) -> bool:
    """A subscriber's check: any ``v1a`` signature in the header verifies with ``public_key``."""
    key = nacl.signing.VerifyKey(base64.b64decode(public_key.removeprefix("whpk_")))
    content = f"{header['webhook-id']}.{header['webhook-timestamp']}.".encode() + body
    for part in header["webhook-signature"].split(" "):
        version, _, signature = part.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(content, base64.b64decode(signature))
        except nacl.exceptions.BadSignatureError:
            continue
        return True
    return False


def test_a_v1a_key_pair() -> None:
    secret = signing.new_secret("v1a")
    assert secret.startswith("whsk_") and len(base64.b64decode(secret[5:])) == 32
    public = signing.public_key(secret)
    assert public is not None and public.startswith("whpk_")
    assert len(base64.b64decode(public[5:])) == 32
    assert signing.scheme_of(secret) == "v1a"
    assert signing.public_key(signing.new_secret("v1")) is None
    assert signing.new_secret("v1a") != secret


def test_v1a_signatures_verify_with_an_independent_ed25519() -> None:
    secret = signing.new_secret("v1a")
    public = signing.public_key(secret)
    assert public is not None
    header = signing.headers([secret], "evt_1", 1_790_000_000, BODY)
    assert header["webhook-signature"].startswith("v1a,")
    assert verify_v1a(public, header, BODY)
    # Any change to the bytes, the id or the timestamp breaks it.
    assert not verify_v1a(public, header, BODY + b" ")
    assert not verify_v1a(public, {**header, "webhook-id": "evt_2"}, BODY)
    assert not verify_v1a(public, {**header, "webhook-timestamp": "1790000001"}, BODY)
    # Another key pair's public key does not verify it.
    other = signing.public_key(signing.new_secret("v1a"))
    assert other is not None and not verify_v1a(other, header, BODY)


def test_rotation_carries_both_signatures() -> None:
    old, new = signing.new_secret("v1a"), signing.new_secret("v1a")
    header = signing.headers([new, old], "evt_1", 1_790_000_000, BODY)
    assert header["webhook-signature"].count("v1a,") == 2
    for secret in (old, new):
        public = signing.public_key(secret)
        assert public is not None and verify_v1a(public, header, BODY)


def test_switching_from_v1_to_v1a_signs_with_both_schemes() -> None:
    hmac_secret, key = signing.new_secret("v1"), signing.new_secret("v1a")
    header = signing.headers([key, hmac_secret], "evt_1", int(time.time()), BODY)
    schemes = [part.partition(",")[0] for part in header["webhook-signature"].split(" ")]
    assert schemes == ["v1a", "v1"]
    public = signing.public_key(key)
    assert public is not None and verify_v1a(public, header, BODY)
    # The reference Standard Webhooks library still verifies the v1 signature among them.
    Webhook(hmac_secret).verify(BODY, header)  # raises if it does not verify


def test_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="unknown signature scheme"):
        signing.new_secret("v2")
