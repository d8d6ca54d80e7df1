"""experts.yaml parsing: good files load, bad ones fail naming the file, the key and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from coe.errors import ConfigError
from coe.experts.schema import load_config

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "experts": [
        {"name": "a", "model": "m", "endpoints": ["http://127.0.0.1:9"]},
        {"name": "b", "model": "m", "endpoints": ["http://127.0.0.1:9", "http://127.0.0.1:10/"]},
    ],
    "default_expert": "a",
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "experts.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_repository_config_is_valid() -> None:
    cfg = load_config(REPO / "experts.yaml")
    assert cfg.expert(cfg.default_expert) is not None
    assert cfg.default_pipeline in cfg.pipelines


def test_minimal_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    b = cfg.expert("b")
    assert b is not None
    assert b.base_urls() == ["http://127.0.0.1:9", "http://127.0.0.1:10"]
    assert b.limits.max_concurrency == 16
    assert cfg.pipelines == {}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["experts"][0].update(colour="red"), "experts.0.colour: unknown key"),
        (lambda d: d.update(defualt_pipeline="x"), "defualt_pipeline: unknown key"),
        (lambda d: d["experts"][0].update(endpoints=["not a url"]), "experts.0.endpoints.0"),
        (lambda d: d["experts"][0].update(endpoints=[]), "experts.0.endpoints"),
        (lambda d: d.update(default_expert="zzz"), "default_expert 'zzz' is not a listed expert"),
        (lambda d: d["experts"][1].update(name="a"), "duplicate expert names: a"),
        (lambda d: d.update(categories={"math": ["nobody"]}), "categories.math names unknown"),
        # The `categories:` table is the one category map; experts carry none of their own.
        (
            lambda d: d["experts"][0].update(categories=["math"]),
            "experts.0.categories: unknown key",
        ),
        (lambda d: d.update(pools={"gpu": {"capacity": 0}}), "pools.gpu.capacity"),
        (
            lambda d: d.update(local_servers=[{"served_model_name": "m", "port": 1, "x": 1}]),
            "local_servers.0.x: unknown key",
        ),
        (
            lambda d: d.update(pipelines={"auto": {"routers": ["missing"]}}),
            "pipelines.auto.routers names unknown router 'missing'",
        ),
        (lambda d: d["experts"][0].update(limits={"timeout_s": -1}), "experts.0.limits.timeout_s"),
        (lambda d: d["experts"][0].update(name="bad name!"), "experts.0.name"),
    ],
)
def test_bad_config_names_file_key_and_problem(tmp_path: Path, mutate, expected: str) -> None:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in err.value.message
    assert expected in err.value.message


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "experts: [unclosed"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_local_servers_and_pools(tmp_path: Path) -> None:
    data = {
        **BASE,
        "local_servers": [{"served_model_name": "smol", "port": 8101, "start_timeout_s": 30}],
        "pools": {
            "gpu": {
                "service": "http://pool-gpu:8200/",
                "controller": "my-own-kind",
                "params": {"free": "form"},
            }
        },
    }
    cfg = load_config(write(tmp_path, data))
    assert cfg.pools["gpu"].service_url == "http://pool-gpu:8200"
    server = cfg.local_servers[0]
    assert (server.log_name, server.start_timeout_s, server.model) == (
        "smol",
        30,
        "builtin:smollm2-135m-instruct",
    )
    # The kind and its params are the controller plug-in's to check, when pools are built.
    assert cfg.pools["gpu"].controller == "my-own-kind" and cfg.controllers_dirs == []


def test_pooled_experts_must_name_their_pool_service(tmp_path: Path) -> None:
    """Gateways reach a pooled expert only through its pool service; an expert that names
    another endpoint would bypass the device's scheduler."""
    pool = {"service": "http://pool-gpu:8200", "controller": "static"}
    expert = {**BASE["experts"][0], "pool": "gpu", "endpoints": ["http://vllm:8000"]}
    data = {**BASE, "experts": [expert, *BASE["experts"][1:]], "pools": {"gpu": pool}}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert "is in pool gpu, served at http://pool-gpu:8200; its endpoints must be" in str(
        err.value.message
    )
    no_service = {**data, "pools": {"gpu": {"controller": "static"}}}
    with pytest.raises(ConfigError, match=r"pools\.gpu\.service: Field required"):
        load_config(write(tmp_path, no_service))
