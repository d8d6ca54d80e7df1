"""Secrets out of everything we show: URLs with credentials, bearer tokens, key-like query values.

One place decides what a secret looks like, so admin responses, error messages, log lines
and probes all hide the same things the same way (`***`).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

# Query parameter names whose values are credentials (whole names, any case).
_SECRET_NAMES = (
    r"api[_-]?key|key|token|access[_-]?token|auth|authorization|secret|client[_-]?secret|"
    r"password|passwd|pwd|sig|signature|credentials?|x-amz-signature|x-amz-credential|"
    r"x-amz-security-token"
)
_SECRET_PARAM = re.compile(rf"(?i)^(?:{_SECRET_NAMES})$")
_QUERY_SECRET = re.compile(rf"(?i)(?P<lead>[?&](?:{_SECRET_NAMES})=)[^&\s#\"']+")
# scheme://user:password@ or scheme://token@ inside any text.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/@?#]+)@")
_BEARER = re.compile(r"(?i)\b(?P<kind>bearer)\s+[A-Za-z0-9._~+/=\-]+")


def _mask_userinfo(userinfo: str) -> str:
    user, sep, _password = userinfo.partition(":")
    return f"{user}:{MASK}" if sep else MASK


def redact_url(url: str) -> str:
    """`url` with its password (or bare token userinfo) and key-like query values masked.

    `http://user:pw@host:8000/v1?api_key=k&x=1` -> `http://user:***@host:8000/v1?api_key=***&x=1`
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{_mask_userinfo(userinfo)}@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_SECRET_PARAM.match(k) for k, _ in pairs):
            masked = [(k, MASK if _SECRET_PARAM.match(k) else v) for k, v in pairs]
            query = urlencode(masked, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Free text with every URL password, bearer token and key-like query value
    masked: the net under explicit redaction (log lines, upstream error texts)."""
    if not text:
        return text
    out = _USERINFO.sub(lambda m: m["scheme"] + _mask_userinfo(m["userinfo"]) + "@", text)
    out = _BEARER.sub(lambda m: f"{m['kind']} {MASK}", out)
    return _QUERY_SECRET.sub(lambda m: m["lead"] + MASK, out)


def has_password(url: str) -> bool:
    """Whether `url` carries credentials that `redact_url` would mask."""
    return redact_url(url) != url


def restore_masked(new: list[str], old: list[str]) -> list[str]:
    """Endpoints sent back as shown (`user:***@`) keep the credentials they had, so an admin
    may PATCH what GET returned without erasing a password it never saw."""
    by_shown = {redact_url(u): u for u in old}
    return [by_shown.get(u, u) if MASK in u else u for u in new]
