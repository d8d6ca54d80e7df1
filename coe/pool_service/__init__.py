"""The pool service front (`coe pool serve`): the web app over a device's pools; the pools
and their controllers are `coe.pool`'s."""

from coe.pool_service.app import create_pool_app
from coe.pool_service.relay import PRIORITY_HEADER, SENDER_HEADER

__all__ = ["PRIORITY_HEADER", "SENDER_HEADER", "create_pool_app"]
