"""GET /metrics on a web app: the Prometheus exposition, behind COE_METRICS_TOKEN when set."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI, Request, Response

from coe.observability.metrics import check_scrape

EXPOSITION = "text/plain; version=0.0.4"


def install_metrics(
    app: FastAPI, render: Callable[[Request], bytes], token: str | None, *, in_schema: bool
) -> None:
    """Serve what `render` gives for the request's app at /metrics, to scrapers with `token`
    (everyone when it is None)."""

    async def prometheus(request: Request) -> Response:
        check_scrape(request.headers.get("authorization"), token)
        return Response(render(request), media_type=EXPOSITION)

    app.add_api_route("/metrics", prometheus, methods=["GET"], include_in_schema=in_schema)
