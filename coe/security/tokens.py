"""Secret comparison in constant time, and the shape of the keys we hand out."""

from __future__ import annotations

import hashlib
import hmac
import secrets

KEY_PREFIX = "coe-sk-"


def token_matches(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(secret: str) -> str:
    """Keys are stored only as this digest; a leaked store reveals no usable key."""
    return hashlib.sha256(secret.encode()).hexdigest()
