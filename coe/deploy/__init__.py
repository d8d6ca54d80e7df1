"""Deployment helpers: check docker-compose.yml against the compose-flavoured experts files."""

from coe.deploy.compose import check_compose, check_config, check_files
from coe.deploy.generate import expert_services
from coe.deploy.services import load_compose, parse_services

__all__ = [
    "check_compose",
    "check_config",
    "check_files",
    "expert_services",
    "load_compose",
    "parse_services",
]
