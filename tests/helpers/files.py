"""Signed file links under test: links made old without waiting, and tampered ones."""

from __future__ import annotations

import time

from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from service.core.tokens import _FILE_SALT


def minted_ago(seconds: int, digest: str, media_type: str = "video/mp4") -> str:
    """A file token signed ``seconds`` ago: a link made old without waiting.

    The timestamp comes from the signer (``TimestampSigner.get_timestamp``), so pin it there.
    """
    timestamp = int(time.time()) - seconds

    class Then(TimestampSigner):
        def get_timestamp(self) -> int:
            return timestamp

    serializer = URLSafeTimedSerializer([SECRET], salt=_FILE_SALT, signer=Then)
    token = serializer.dumps([digest, media_type])
    assert isinstance(token, str)
    return token


def tamper(token: str, position: int) -> str:
    flipped = "A" if token[position] != "A" else "B"
    return token[:position] + flipped + token[position + 1 :]


SECRET = "test-secret-key-0123456789"  # what settings_factory configures
