"""Deployment helpers: check docker-compose.yml against the compose-flavoured experts files."""

from coe.deploy.compose import check_compose, check_config, expert_services, parse_services

__all__ = ["check_compose", "check_config", "expert_services", "parse_services"]
