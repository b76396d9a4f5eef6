"""Signed tokens: the credential in each callback URL, and expiring links to stored files.

Each purpose has its own salt, so a token minted for one can never be replayed as the other. Keys
are a list (oldest first): itsdangerous signs with the newest and accepts any.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from typing import Any

import orjson
from itsdangerous import (
    BadSignature,
    SignatureExpired,
    Signer,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)

_CALLBACK_SALT = "reelhook.callback-url.v1"
_FILE_SALT = "reelhook.file-link.v1"
_ACCOUNT_SALT = "reelhook.account-webhook.v1"
_STREAM_SALT = "reelhook.stream-token.v1"


class InvalidToken(Exception):
    """The token is not one reelhook signed for this purpose."""


class ExpiredToken(InvalidToken):
    """The token was genuine but has expired."""


class Tokens:
    def __init__(self, secret_keys: list[str]) -> None:
        if not secret_keys:
            raise ValueError("at least one secret key is required")
        # Oldest first; other signed artefacts (the console's session cookie) derive from them
        # with salts of their own.
        self.secret_keys: tuple[str, ...] = tuple(secret_keys)
        self._callbacks = URLSafeSerializer(secret_keys, salt=_CALLBACK_SALT)
        self._files = URLSafeTimedSerializer(secret_keys, salt=_FILE_SALT)
        self._accounts = URLSafeSerializer(secret_keys, salt=_ACCOUNT_SALT)
        self._streams = URLSafeTimedSerializer(secret_keys, salt=_STREAM_SALT)
        # The callback token is checked on every provider callback. itsdangerous derives the
        # signing key and builds a signer and an HMAC object on each check (~15 µs); the same
        # check against keys derived once here costs a few µs. Newest key first, as it tries.
        self._callback_keys = tuple(
            Signer(key, salt=_CALLBACK_SALT).derive_key() for key in reversed(secret_keys)
        )

    def callback(self, job_id: str, provider: str) -> str:
        """The token for ``{PUBLIC_URL}/v1/callbacks/{provider}/{token}`` of one job."""
        return self._callbacks.dumps([job_id, provider])

    def verify_callback(self, token: str, provider: str) -> str:
        """Return the job id the token was minted for; raise :class:`InvalidToken` otherwise."""
        try:
            job_id, bound_provider = self._load_callback(token)
        except (ValueError, TypeError, zlib.error):  # binascii and JSON errors are ValueErrors
            raise InvalidToken from None
        if bound_provider != provider or not isinstance(job_id, str):
            raise InvalidToken
        return job_id

    def account_webhook(self, provider: str, api_key: str) -> str:
        """The token for ``{PUBLIC_URL}/v1/callbacks/{provider}/account/{token}``: bound to the
        provider account (its API key, by a fingerprint that reveals nothing of it), so a new
        API key, which needs its webhook URL set anew anyway, gets a new URL and the old one
        stops working. The same key always gives the same URL."""
        return self._accounts.dumps([provider, _fingerprint(provider, api_key)])

    def verify_account_webhook(self, token: str, provider: str, api_key: str) -> None:
        """Raise :class:`InvalidToken` unless ``token`` was minted for this provider account."""
        try:
            bound_provider, fingerprint = self._accounts.loads(token)
        except (BadSignature, ValueError, TypeError) as exc:
            # itsdangerous's loads keeps the exception in a local of a frame its traceback
            # holds: without the traceback, no cycle left for the garbage collector per refused
            # token (docs/performance.md §4, "Garbage collection").
            exc.__traceback__ = None
            raise InvalidToken from None
        if bound_provider != provider or fingerprint != _fingerprint(provider, api_key):
            raise InvalidToken

    def _load_callback(self, token: str) -> Any:
        """What ``self._callbacks.loads(token)`` returns, for tokens it minted.

        The token is itsdangerous's URL-safe format: ``value.signature``, the signature the
        unpadded URL-safe base64 of HMAC-SHA1 under the derived key over ``value``; ``value`` is
        the URL-safe base64 of compact JSON, zlib-compressed and marked by a leading ``.`` when
        that is shorter. Nothing is decoded before the signature matches.
        """
        value, separator, signature = token.rpartition(".")
        if not separator or not value:
            raise ValueError("no signature")
        raw = value.encode()
        expected = _unpadded_b64decode(signature)
        if not any(
            hmac.compare_digest(hmac.digest(key, raw, hashlib.sha1), expected)
            for key in self._callback_keys
        ):
            raise ValueError("bad signature")
        if value.startswith("."):
            return orjson.loads(zlib.decompress(_unpadded_b64decode(value[1:])))
        return orjson.loads(_unpadded_b64decode(value))

    def file(self, digest: str, media_type: str) -> str:
        return self._files.dumps([digest, media_type])

    def verify_file(self, token: str, max_age: float) -> tuple[str, str]:
        """Return (digest, media type); raise :class:`ExpiredToken` or :class:`InvalidToken`."""
        try:
            digest, media_type = self._files.loads(token, max_age=int(max_age))
        except SignatureExpired:
            raise ExpiredToken from None
        except (BadSignature, ValueError, TypeError):
            raise InvalidToken from None
        return str(digest), str(media_type)

    def stream(self, key_id: str) -> str:
        """A read-only token for ``GET /v1/events/stream?token=…`` on behalf of ``key_id``."""
        return self._streams.dumps(["stream", key_id])

    def verify_stream(self, token: str, max_age: float) -> str:
        """Return the key id the stream token was minted for; raise :class:`ExpiredToken` or
        :class:`InvalidToken`."""
        try:
            purpose, key_id = self._streams.loads(token, max_age=int(max_age))
        except SignatureExpired:
            raise ExpiredToken from None
        except (BadSignature, ValueError, TypeError):
            raise InvalidToken from None
        if purpose != "stream" or not isinstance(key_id, str):
            raise InvalidToken
        return key_id


def _fingerprint(provider: str, api_key: str) -> str:
    # Salted and truncated: the token is visible to the provider, the key must not be.
    digest = hashlib.sha256(f"reelhook.account\0{provider}\0{api_key}".encode()).hexdigest()
    return digest[:16]


def _unpadded_b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None
