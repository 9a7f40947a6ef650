"""The front door and the walls between the wings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli import main
from tests.support import REPO


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_the_api_never_imports_torch() -> None:
    loaded = _run(
        "import sys; from service.app import create_app; from service.settings import Settings;"
        "create_app(Settings()); import workers.jobs;"
        "print(','.join(m for m in ('torch', 'diffusers', 'open_clip') if m in sys.modules))"
    )
    assert loaded == ""


def test_cli_imports_wings_lazily() -> None:
    loaded = _run("import sys, cli; cli.build_parser(); "
                  "print(','.join(m for m in ('service.app', 'fastapi', 'celery', 'torch', "
                  "'client.api', 'httpx') if m in sys.modules))")
    assert loaded == ""


def test_the_client_loads_nothing_of_the_server() -> None:
    loaded = _run("import sys, client, client.submit, client.inputs; "
                  "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
                  "('service', 'models', 'workers', 'structure_bank', 'torch', 'fastapi', "
                  "'numpy', 'PIL', 'pydantic', 'celery', 'sqlalchemy', 'tqdm'))))")
    assert loaded == ""


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bad_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--port", "eighty"])
    assert info.value.code == 2
    assert "--port" in capsys.readouterr().err


def test_bad_worker_concurrency_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--concurrency", "0"]) == 2
    assert "--concurrency must be at least 1" in capsys.readouterr().err


def test_serve_reports_a_port_in_use(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "cli", "serve", "--no-worker", "--port", str(port),
             "--data-dir", str(tmp_path / "d")],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode != 0
    assert f"could not start the API on 127.0.0.1:{port}" in proc.stderr


def test_migrate_command(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    assert main(["migrate", "--data-dir", str(tmp_path / "d")]) == 0
    assert "job store at head" in capsys.readouterr().out
    assert (tmp_path / "d" / "jobs.sqlite3").exists()
