"""The test suite (a package so that tests and benchmarks can import `tests.support`)."""
