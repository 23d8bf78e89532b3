"""compose.yaml stays valid without a Docker engine: every service that runs cai runs a real `cai` command with
real options, the services it waits for exist and report health, and the GPU services reserve a GPU."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from loop.cli import app
from loop.config import RunConfig
from loop.config.environment import unknown_variables

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"
PARALLEL = {"dashboard"}
"""cai commands built alongside this file (accepted by name until they land)."""


def _interpolate(text: str) -> str:
    """Compose's ${VAR:-default} → default, ${VAR} and ${VAR:?message} → a placeholder path."""
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)
    return re.sub(r"\$\{\w+(:\?[^}]*)?\}", "/placeholder", text)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(_interpolate(COMPOSE.read_text()))


def _cai_services(compose: dict) -> dict[str, list[str]]:
    commands = {}
    for name, service in compose["services"].items():
        command = service.get("command")
        if isinstance(command, str):
            command = shlex.split(command)
        if command and command[0] == "cai":
            commands[name] = command
    return commands


def test_the_service_has_every_part(compose):
    assert set(compose["services"]) >= {"redis", "postgres", "vllm", "controller", "worker", "trainer", "dashboard"}
    commands = _cai_services(compose)
    assert commands["controller"][:2] == ["cai", "run"]
    assert commands["worker"][:2] == ["cai", "worker"] and "infer,cpu" in commands["worker"]
    assert commands["trainer"][:2] == ["cai", "worker"] and "train" in commands["trainer"]


def test_every_cai_command_and_option_is_real(compose):
    group = typer.main.get_command(app)
    for name, command in _cai_services(compose).items():
        words = command[1:]
        sub = group
        while hasattr(sub, "commands") and words and not words[0].startswith("-"):
            if words[0] not in sub.commands and words[0] in PARALLEL:
                sub = None
                break
            assert words[0] in sub.commands, f"{name}: `cai {' '.join(command[1:])}` is not a cai command"
            sub, words = sub.commands[words[0]], words[1:]
        if sub is None:
            continue
        options = {opt for param in sub.params for opt in getattr(param, "opts", [])}
        given = [w for w in words if w.startswith("--")]
        assert given, f"{name}: {command}"
        for option in given:
            assert option.split("=")[0] in options, f"{name}: {option} is not an option of `{sub.name}`"


def test_dependencies_start_in_order_and_report_health(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on a missing service {dependency}"
            assert condition["condition"] == "service_healthy"
            assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which reports no health"
    for name in ("redis", "postgres", "vllm"):
        assert "healthcheck" in services[name]
    for name in ("controller", "worker"):
        assert set(services[name]["depends_on"]) >= {"redis", "postgres", "vllm"}


def test_gpu_services_reserve_a_gpu_and_volumes_are_declared(compose):
    for name in ("vllm", "trainer"):
        devices = compose["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    named = {v.split(":")[0] for s in compose["services"].values() for v in s.get("volumes", [])
             if not v.startswith("/")}
    assert named <= set(compose.get("volumes") or {}), named


def test_the_cai_environment_is_known_to_cai(compose):
    for name in _cai_services(compose):
        environment = compose["services"][name]["environment"]
        assert unknown_variables(RunConfig, environment) == [], name
        assert environment["CAI_BROKER_URL"].startswith("redis://")
        assert environment["CAI_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert os.path.isfile(COMPOSE.parent / "Dockerfile")
