"""Test helpers that ship with the package: a fault-injecting OpenAI-compatible server."""

from coe.testing.fake_upstream import FakeUpstream, Fault, make_fake_app

__all__ = ["FakeUpstream", "Fault", "make_fake_app"]
