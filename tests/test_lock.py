"""The committed lock decides every installed version, and it agrees with pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support import ROOT


UV = Path(sys.executable).with_name("uv")
pytestmark = pytest.mark.skipif(not UV.exists(), reason="uv is installed by scripts/setup.sh")


def _uv(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never",
           "UV_PROJECT_ENVIRONMENT": str(ROOT / ".venv")}
    return subprocess.run([str(UV), *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=120)


def test_lock_agrees_with_pyproject() -> None:
    res = _uv("lock", "--check", "--offline")
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("edit", ["add", "remove"])
def test_lock_check_catches_a_dependency_on_one_side_only(tmp_path: Path, edit: str) -> None:
    shutil.copy(ROOT / "uv.lock", tmp_path / "uv.lock")
    text = (ROOT / "pyproject.toml").read_text()
    line = '    "msgpack>=1.0,<2",\n'
    assert line in text
    changed = text.replace(line, line + '    "six",\n' if edit == "add" else "")
    (tmp_path / "pyproject.toml").write_text(changed)
    res = _uv("lock", "--check", "--offline", cwd=tmp_path)
    assert res.returncode != 0
    assert "needs to be updated" in res.stderr or "error" in res.stderr


def test_every_locked_package_is_pinned_with_hashes() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    packages = lock["package"]
    assert len(packages) > 20
    for pkg in packages:
        if pkg["source"].get("editable") == ".":
            continue
        assert pkg["version"], pkg["name"]
        files = pkg.get("wheels", []) + ([pkg["sdist"]] if "sdist" in pkg else [])
        assert files and all(f["hash"].startswith("sha256:") for f in files), pkg["name"]


def test_environment_is_exactly_the_lock() -> None:
    """What this checkout runs with is what the lock says (no drift, nothing to install)."""
    res = _uv("sync", "--frozen", "--inexact", "--dry-run", "--extra", "dev",
              "--extra", "loadtest")
    assert res.returncode == 0, res.stderr
    assert "Would make no changes" in res.stderr + res.stdout, res.stderr


def test_runtime_dependencies_leave_out_the_load_test_tools() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    for name in ("locust", "matplotlib", "websocket-client"):
        assert name not in runtime
        assert any(d.startswith(name) for d in project["optional-dependencies"]["loadtest"])


def test_bench_without_the_load_test_extra_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    from hubbub import cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "locust" else real(name, *a))
    for command in cli.LOADTEST_COMMANDS:
        assert cli.main([command]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "setup.sh --loadtest" in err[0] and "locust" in err[0]
