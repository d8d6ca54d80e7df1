"""coe: answer chat requests with a composition of expert LLMs.

The public surface is small: load a config, build the app or a pipeline.
"""

__version__ = "0.1.0"
