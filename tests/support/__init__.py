"""Helpers for the tests and benchmarks: an ASGI app served from a thread, loopback ports,
an isolated Redis store, a TCP proxy that can be cut."""
