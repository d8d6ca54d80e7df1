"""What each built-in controller says about its experts: where a resident one answers
(`upstream`), which are loaded now (`resident`, asked of the backend), and the params every
member needs now that an expert's endpoint is its pool service."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from coe.errors import ConfigError, ExpertUnavailable
from coe.experts.schema import parse_config
from coe.pool import build_pools
from coe.pool.controllers.lora import LoraController
from coe.pool.controllers.process import ProcessController
from coe.pool.controllers.sleep import SleepController
from coe.pool.controllers.static import StaticController
from tests.pool.fake_lora import LoraServer
from tests.support.net import free_port

SERVICE = "http://pool.test:8200"


def controller_of(controller: str, params: dict[str, Any], capacity: int = 2) -> Any:
    cfg = parse_config(
        {
            "experts": [
                {"name": n, "model": f"m-{n}", "endpoints": [SERVICE], "pool": "gpu0"}
                for n in ("x", "y")
            ],
            "default_expert": "x",
            "pools": {
                "gpu0": {
                    "service": SERVICE,
                    "controller": controller,
                    "capacity": capacity,
                    "params": params,
                }
            },
        }
    )
    pool = build_pools(cfg, httpx.AsyncClient()).pool_of("x")
    assert pool is not None
    return pool.controller


@pytest.mark.parametrize(
    ("controller", "params", "expected"),
    [
        ("static", {}, r"pools\.gpu0\.params \(static\): upstreams: Field required"),
        (
            "static",
            {"upstreams": {"x": "http://a:1"}},
            r"pools\.gpu0\.params\.upstreams: no upstream for y",
        ),
        ("sleep", {}, r"pools\.gpu0\.params \(sleep\): servers: Field required"),
        (
            "sleep",
            {"servers": {"y": "http://gpu:8001"}},
            r"pools\.gpu0\.params\.servers: no server for x",
        ),
        (
            "process",
            {"servers": {"x": {"served_model_name": "m", "port": 1}}, "host": ""},
            r"pools\.gpu0\.params \(process\): host: String should have at least 1 character",
        ),
    ],
)
def test_every_member_needs_its_own_server(
    controller: str, params: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        controller_of(controller, params)


def test_each_controller_names_where_a_resident_expert_answers() -> None:
    static = controller_of("static", {"upstreams": {"x": "http://a:1/", "y": "http://b:2"}})
    assert isinstance(static, StaticController)
    assert (static.upstream("x"), static.upstream("y")) == ("http://a:1", "http://b:2")
    adapters = {"x": "/ad/x", "y": "/ad/y"}
    lora = controller_of(
        "lora", {"base_url": "http://lora:8000/", "max_loras": 2, "adapters": adapters}
    )
    assert isinstance(lora, LoraController)
    assert lora.upstream("x") == lora.upstream("y") == "http://lora:8000"
    sleep = controller_of("sleep", {"servers": {"x": "http://gx:8000", "y": "http://gy:8000/"}})
    assert isinstance(sleep, SleepController)
    assert (sleep.upstream("x"), sleep.upstream("y")) == ("http://gx:8000", "http://gy:8000")
    servers = {n: {"served_model_name": f"m-{n}", "port": 8100 + i} for i, n in enumerate("xy")}
    process = controller_of("process", {"servers": servers})
    assert isinstance(process, ProcessController)
    assert process.upstream("y") == "http://127.0.0.1:8101"
    process = controller_of("process", {"servers": servers, "host": "10.0.0.5"})
    assert process.upstream("x") == "http://10.0.0.5:8100"
    assert process._server("x").host == "10.0.0.5"  # the server binds where it is called


async def test_static_experts_are_always_resident() -> None:
    static = StaticController({"x": "http://a:1"})
    assert await static.resident() == await static.start() == {"x"}


async def test_lora_residents_are_the_adapters_the_server_lists() -> None:
    server = LoraServer()
    server.loaded = {"m-y", "someone-elses"}
    transport = httpx.ASGITransport(server.app)
    async with httpx.AsyncClient(transport=transport) as http:
        adapters = {"x": ("m-x", "/ad/x"), "y": ("m-y", "/ad/y")}
        lora = LoraController(http, server.base_url, 2, adapters)
        assert await lora.resident() == {"y"}
        await lora.load("x")
        assert await lora.resident() == {"x", "y"}
        await lora.unload("y")
        assert await lora.start() == {"x"}


async def test_sleep_residents_are_the_awake_servers() -> None:
    asleep = {"http://gx:8000": False, "http://gy:8000": True}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/is_sleeping"
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        return httpx.Response(200, json={"is_sleeping": asleep[base]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        sleep = SleepController(http, {"x": "http://gx:8000", "y": "http://gy:8000"})
        assert await sleep.resident() == {"x"}


async def test_sleep_cannot_confirm_without_dev_endpoints() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"detail": "Not Found"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        sleep = SleepController(http, {"x": "http://gx:8000"})
        with pytest.raises(ExpertUnavailable, match="no /is_sleeping"):
            await sleep.resident()  # "not awake" would wrongly free its place


async def test_process_residents_are_ports_that_answer() -> None:
    from coe.experts.schema import LocalServer

    closed, busy = free_port(), free_port()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.port == closed:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    specs = {
        "x": LocalServer(served_model_name="m-x", port=closed),
        "y": LocalServer(served_model_name="m-y", port=busy),
    }
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        process = ProcessController(specs, http=http)
        assert await process.resident() == {"y"}  # a server it did not start still counts
        with pytest.raises(ExpertUnavailable, match=r"still answers .* did not start it"):
            await process.unload("y")  # and cannot be stopped from here
        await process.unload("x")


async def test_process_resident_says_when_it_cannot_tell() -> None:
    from coe.experts.schema import LocalServer

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("silent", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        process = ProcessController({"x": LocalServer(served_model_name="m", port=1)}, http=http)
        assert await process.resident() == {"x"}  # something holds the port: not gone
