"""The only FastAPI code: app factory, OpenAI wire models, endpoints, error handling."""

from coe.gateway.app import create_app

__all__ = ["create_app"]
