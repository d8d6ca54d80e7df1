"""Structured logs: each line carries the request id of the request that caused it, and no
secret (URL passwords and bearer tokens are masked in every record, whoever logged it)."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

from coe.security.redact import redact_text

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "coe_request_id", default=None
)


def bind_request_id(rid: str | None) -> contextvars.Token[str | None]:
    return _request_id.set(rid)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)


def current_request_id() -> str | None:
    return _request_id.get()


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get() or "-"
        return True


class RedactingFilter(logging.Filter):
    """The net under explicit redaction: `scheme://user:pass@` and `Bearer <token>` never
    reach a log line, whether in the message, its arguments or a traceback."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        exc_info = record.exc_info
        if exc_info is not None and exc_info[0] is not None and not record.exc_text:
            record.exc_text = self._formatter.formatException(exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_text:
            out["exc"] = record.exc_text  # formatted (and redacted) by RedactingFilter
        elif record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    """Called by the CLI entry points only; library code never configures logging."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactingFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
