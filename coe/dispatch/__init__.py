"""Outbound calls to experts: one client, replica choice, limits, retries, fallback."""

from coe.dispatch.client import ExpertClient, prepare_body
from coe.dispatch.fallback import Answer, Failure, complete_ranked, stream_ranked

__all__ = [
    "Answer",
    "ExpertClient",
    "Failure",
    "complete_ranked",
    "prepare_body",
    "stream_ranked",
]
