"""Secret comparison in constant time, what makes a configured token too weak to use, and the
shape of the keys we hand out."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "coe-sk-"
PLACEHOLDER_TOKENS = {
    "",
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "admin",
    "token",
    "password",
    "placeholder",
    "xxx",
    "todo",
    "replace-me",
    "dev",
    "test",
}
MIN_TOKEN_LENGTH = 16
STRONG_HINT = "set a real secret (e.g. `openssl rand -hex 32`)"


def is_weak(token: str) -> bool:
    """A placeholder or a token shorter than MIN_TOKEN_LENGTH: refused outside dev mode."""
    return token.strip().lower() in PLACEHOLDER_TOKENS or len(token) < MIN_TOKEN_LENGTH


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def token_matches(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(secret: str) -> str:
    """Keys are stored only as this digest; a leaked store reveals no usable key."""
    return hashlib.sha256(secret.encode()).hexdigest()
