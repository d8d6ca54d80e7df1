"""coe: answer chat requests with a composition of expert LLMs.

Where to start: `coe.runtime.build_runtime` builds everything a process needs,
`coe.pipeline.Engine` answers, `coe.gateway.create_app` serves it over HTTP, and
`coe.routing` is what a router plug-in is written against (docs/architecture.md).
"""

__version__ = "0.1.0"
