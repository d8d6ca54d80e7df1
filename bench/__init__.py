"""Benchmarks run from the repository root (`python bench/NAME.py`); not part of the package."""
