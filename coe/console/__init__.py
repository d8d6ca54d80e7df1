"""The operators' console at /ui: static pages over a few JSON endpoints (`coe.console.api`)."""

from coe.console.api import install_console

__all__ = ["install_console"]
