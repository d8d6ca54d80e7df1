"""The bearer token a request carries, for the apps' token and API-key checks."""

from __future__ import annotations

from fastapi import Request

from coe.security.tokens import bearer_token

__all__ = ["bearer", "bearer_token"]


def bearer(request: Request) -> str | None:
    return bearer_token(request.headers.get("authorization"))
