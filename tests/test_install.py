"""`make install` tells the truth about Python: another Python stops it at once with the sentence that
says why, and a .venv that another Python built is built again instead of failing every later run.
pyproject.toml says the same range."""
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SENTENCE = ("xtuner-assistant needs Python >= 3.11 and < 3.13: its pinned dependencies need 3.11 or newer "
            "(numpy, streamlit, matplotlib) and XTuner 0.2.0 needs older than 3.13.")


def fake_python(path: Path, version: str) -> Path:
    """A `python` that says it is `version` and fails the version check, as that Python would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "Python {version}" && exit 0\nexit 1\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def checkout(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    # The Makefile and every file its install targets depend on.
    for name in ("Makefile", "pyproject.toml", "constraints.txt", "requirements-assets.txt",
                 "xtuner_assistant/publish/openxlab-requirements.txt", "xtuner_assistant/compat.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_pyproject_states_the_python_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == ">=3.11,<3.13"
    assert project["optional-dependencies"]["deepspeed"] == ["deepspeed==0.17.6"]


@pytest.mark.parametrize("version", ["3.10.13", "3.13.0"])
def test_make_install_with_another_python_stops_at_once_saying_why(checkout, version):
    python = fake_python(checkout / "other" / "python3", version)
    result = subprocess.run(["make", "install", f"PYTHON={python}"], cwd=checkout, capture_output=True, text=True)
    assert result.returncode != 0
    assert SENTENCE in result.stderr and f"is Python {version}" in result.stderr
    assert not (checkout / ".venv").exists(), "nothing was made"


def test_a_venv_built_by_another_python_is_built_again(checkout):
    fake_python(checkout / ".venv" / "bin" / "python", "3.10.13")
    (checkout / ".venv" / ".installed").touch()
    result = subprocess.run(["make", "python-check", f"PYTHON={sys.executable}"], cwd=checkout, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert ".venv was not built by a Python >= 3.11 and < 3.13 (or is broken): building it again" in result.stderr
    assert not (checkout / ".venv" / ".installed").exists(), "so `make install` rebuilds it"
    dry_run = subprocess.run(["make", "-n", "install", f"PYTHON={sys.executable}"], cwd=checkout, capture_output=True,
                             text=True).stdout
    assert "rm -rf .venv" in dry_run and "-m venv .venv" in dry_run
