"""The bearer token a request carries, for the apps' token and API-key checks."""

from __future__ import annotations

from fastapi import Request


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def bearer(request: Request) -> str | None:
    return bearer_token(request.headers.get("authorization"))
