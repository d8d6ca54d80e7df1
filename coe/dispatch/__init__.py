"""Outbound calls to experts: one client, replica choice, limits, retries, fallback."""

from coe.dispatch.client import ExpertClient, prepare_body
from coe.dispatch.fallback import Answer, Failure, OpenStream, complete_ranked, stream_ranked

__all__ = [
    "Answer",
    "ExpertClient",
    "Failure",
    "OpenStream",
    "complete_ranked",
    "prepare_body",
    "stream_ranked",
]
