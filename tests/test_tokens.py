"""Callback tokens: the fast check accepts exactly what itsdangerous accepts."""

from __future__ import annotations

import random
import string

import pytest
from itsdangerous import BadData, URLSafeSerializer

from service.core.tokens import InvalidToken, Tokens

KEYS = ["old-key-0123456789abcdef0123", "new-key-0123456789abcdef0123"]
SALT = "reelhook.callback-url.v1"


def _reference_accepts(token: str) -> bool:
    try:
        URLSafeSerializer(KEYS, salt=SALT).loads(token)
    except (BadData, ValueError, TypeError):
        return False
    return True


def _accepts(tokens: Tokens, token: str) -> bool:
    try:
        tokens.verify_callback(token, "trinetra")
    except InvalidToken:
        return False
    return True


def test_tokens_minted_with_either_key_verify_to_their_job() -> None:
    tokens = Tokens(KEYS)
    rng = random.Random(16)
    for length in (1, 5, 26, 60, 200):
        job_id = "job_" + "".join(rng.choices(string.ascii_letters, k=length))
        for keys in (KEYS, KEYS[:1]):
            token = URLSafeSerializer(keys, salt=SALT).dumps([job_id, "trinetra"])
            assert tokens.verify_callback(token, "trinetra") == job_id
        assert tokens.verify_callback(tokens.callback(job_id, "trinetra"), "trinetra") == job_id


def test_a_token_for_another_provider_or_key_or_salt_is_refused() -> None:
    tokens = Tokens(KEYS)
    with pytest.raises(InvalidToken):
        tokens.verify_callback(tokens.callback("job_1", "apiframe"), "trinetra")
    with pytest.raises(InvalidToken):
        tokens.verify_callback(
            URLSafeSerializer(["another-key-0123456789abcdef"], salt=SALT).dumps(
                ["job_1", "trinetra"]
            ),
            "trinetra",
        )
    with pytest.raises(InvalidToken):
        tokens.verify_callback(tokens.file("job_1", "trinetra"), "trinetra")


def test_every_tampered_token_is_refused_as_itsdangerous_refuses_it() -> None:
    tokens = Tokens(KEYS)
    rng = random.Random(7)
    token = tokens.callback("job_01JB0000000000000000000000", "trinetra")
    alphabet = string.ascii_letters + string.digits + "-_.="
    tampered = {token[:cut] for cut in range(len(token))} | {token + "x", "", ".", "..", "a.b"}
    for position in range(len(token)):
        for char in rng.sample(alphabet, 4):
            tampered.add(token[:position] + char + token[position + 1 :])
    tampered.discard(token)
    for candidate in tampered:
        assert _accepts(tokens, candidate) == _reference_accepts(candidate), candidate
