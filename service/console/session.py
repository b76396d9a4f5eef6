"""The console's session: a signed cookie naming the signed-in API key, and CSRF tokens bound to it.

The cookie carries the SHA-256 digest of the key, never the key: the digest is what the key table
stores, so every request re-checks the key (a revoked key signs the console out), and a leaked
cookie cannot be replayed as an ``X-API-Key``. Each session has a random nonce; a form's CSRF token
is the nonce signed with a salt of its own, so a token is only good with the cookie it was made for,
and a new nonce at sign-in makes tokens seen before it worthless. Signing out ends the session on
the server too, in the store (:class:`service.access.sign_outs.SignOuts`): the old cookie and its
tokens are refused after a restart and on every node.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer

COOKIE = "reelhook_console"
COOKIE_PATH = "/console"
# A signed-in session lasts a working day; signing in again is one paste.
SESSION_TTL = 12 * 3600

_SESSION_SALT = "reelhook.console-session.v1"
_CSRF_SALT = "reelhook.console-csrf.v1"


@dataclass(frozen=True, slots=True)
class Session:
    nonce: str
    key_hash: str | None = None

    @property
    def signed_in(self) -> bool:
        return self.key_hash is not None


class SessionCodec:
    """Signs and verifies session cookies and CSRF tokens with the service's secret keys (oldest
    first, so keys rotate as they do for callback tokens)."""

    def __init__(self, secret_keys: tuple[str, ...]) -> None:
        self._cookies = URLSafeTimedSerializer(list(secret_keys), salt=_SESSION_SALT)
        self._csrf = URLSafeSerializer(list(secret_keys), salt=_CSRF_SALT)

    @staticmethod
    def new(key_hash: str | None = None) -> Session:
        """A session with a fresh nonce: anonymous, or signed in as the key with ``key_hash``."""
        return Session(secrets.token_urlsafe(24), key_hash)

    def dumps(self, session: Session) -> str:
        return self._cookies.dumps([session.nonce, session.key_hash])

    def loads(self, value: str | None) -> Session | None:
        """The session in a cookie value; None when absent, tampered with, expired or malformed."""
        if not value:
            return None
        try:
            nonce, key_hash = self._cookies.loads(value, max_age=SESSION_TTL)
        except (BadSignature, ValueError, TypeError):
            return None
        if not isinstance(nonce, str) or not (key_hash is None or isinstance(key_hash, str)):
            return None
        return Session(nonce, key_hash)

    def csrf_token(self, session: Session) -> str:
        return self._csrf.dumps(session.nonce)

    def csrf_valid(self, session: Session, token: str | None) -> bool:
        """Whether ``token`` was made for this session."""
        if not token:
            return False
        try:
            nonce = self._csrf.loads(token)
        except (BadSignature, ValueError, TypeError):
            return False
        return isinstance(nonce, str) and hmac.compare_digest(nonce, session.nonce)
