"""Metrics and structured logs: one Metrics object per process, request ids in every log line."""

from coe.observability.logs import bind_request_id, configure_logging, current_request_id
from coe.observability.metrics import Metrics

__all__ = ["Metrics", "bind_request_id", "configure_logging", "current_request_id"]
