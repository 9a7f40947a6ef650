"""No Docker engine runs here: check that the deployment files match the code they run."""

from __future__ import annotations

import re

import yaml

from cli import build_parser
from service.settings import Settings
from tests.support import REPO

SETTINGS_ENV = {f"FLATLAY_{name.upper()}" for name in Settings.model_fields}


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _check_flatlay_command(argv: list[str]) -> None:
    assert argv[0] == "flatlay", argv
    build_parser().parse_args(argv[1:])  # SystemExit on an unknown command or flag


def test_compose_has_the_services_of_the_design() -> None:
    services = _compose()["services"]
    assert {"api", "worker", "redis", "postgres"} <= set(services)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["api"]["volumes"] == services["worker"]["volumes"]  # one shared volume


def test_compose_commands_are_real_cli_commands() -> None:
    services = _compose()["services"]
    _check_flatlay_command(services["api"]["command"])
    _check_flatlay_command(services["worker"]["command"])
    assert services["api"]["command"][1] == "api" and services["worker"]["command"][1] == "worker"


def test_compose_environment_names_are_settings() -> None:
    for name in ("api", "worker"):
        env = _compose()["services"][name]["environment"]
        flatlay_vars = {k for k in env if k.startswith("FLATLAY_")}
        assert flatlay_vars, name
        unknown = flatlay_vars - SETTINGS_ENV
        assert not unknown, f"{name} sets variables no setting reads: {unknown}"
        assert env["FLATLAY_BROKER_URL"].startswith("redis://")
        assert env["FLATLAY_DATABASE_URL"].startswith("postgresql+psycopg://")
        Settings(**{k.removeprefix("FLATLAY_").lower(): v for k, v in env.items()})


def test_dockerfile_targets_and_commands() -> None:
    text = (REPO / "Dockerfile").read_text()
    targets = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.M)
    assert targets == ["api", "worker"]
    api_stage, worker_stage = text.split("AS worker")
    assert "pip install ." in api_stage and "[ml]" not in api_stage  # the API image has no torch
    assert "'.[ml]'" in worker_stage
    for cmd in re.findall(r"^CMD (\[.*\])$", text, flags=re.M):
        _check_flatlay_command(yaml.safe_load(cmd))
    for name in re.findall(r"\b(FLATLAY_[A-Z_]+)=", text):
        assert name in SETTINGS_ENV, name


def test_torch_is_pinned() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"torch==2.14.1"' in pyproject and '"torchvision==0.29.1"' in pyproject
    assert not re.search(r'"torch(?!vision)[^=]*"', pyproject.replace('"torch==2.14.1"', ""))
