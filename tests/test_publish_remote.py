"""Publishing into a remote that already holds files: what xtuner-assistant did not write is kept
(LICENSE, NOTES.md, the platform's README.md unless --replace-remote), what an earlier publish wrote
and the new one lacks is removed, and nothing published names a folder of this machine."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from talkative_model import talkative_tiny_model_dir
from test_hostile_inputs import SECRET, assert_refused, tree

CLI = [sys.executable, "-m", "xtuner_assistant.cli"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    if shutil.which("git-lfs") is None:
        pytest.fail("git-lfs is not installed: `apt-get update && apt-get install -y git-lfs`")
    folder = tmp_path / "home"
    folder.mkdir()
    return {"HOME": str(folder), "XA_GIT_TOKEN": SECRET, "GIT_CONFIG_NOSYSTEM": "1",
            "XTUNER_ASSISTANT_HOME": str(tmp_path / "xa-home"), "OMP_NUM_THREADS": "2"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return talkative_tiny_model_dir(tmp_path_factory.mktemp("publish-remote") / "merged", seed=1)


def git(*args, cwd, env=None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}).stdout


def remote_with(tmp_path: Path, files: dict[str, str], env: dict) -> Path:
    """A bare remote whose main branch holds `files`, committed by someone else."""
    remote = tmp_path / "model.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    work = tmp_path / "someone"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    for name, text in files.items():
        (work / name).write_text(text)
    git("add", ".", cwd=work)
    git("-c", "user.name=Someone", "-c", "user.email=s@example.org", "commit", "-q", "-m", "theirs", cwd=work)
    git("push", "-q", str(remote), "main", cwd=work)
    return remote


def publish(model: Path, remote: Path, env: dict, *extra, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "publish", str(model), "--repo", str(remote), "--model-only", *extra],
                          cwd=cwd, capture_output=True, text=True, env={**os.environ, **env})


def remote_file(remote: Path, name: str) -> str:
    return git("show", f"main:{name}", cwd=remote)


def test_files_the_remote_holds_are_kept_and_our_stale_ones_removed(model_dir, tmp_path, home):
    theirs = {"LICENSE": "MIT License, Alice 2026\n", "NOTES.md": "# our notes\n"}
    remote = remote_with(tmp_path, theirs, home)
    result = publish(model_dir, remote, home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "kept 2 file(s) of the remote that xtuner-assistant did not write: LICENSE, NOTES.md" in result.stdout
    for name, text in theirs.items():
        assert remote_file(remote, name) == text
    assert "model.safetensors" in git("ls-tree", "-r", "--name-only", "main", cwd=remote).split()

    # A second model without one of the files the first publish wrote: that file goes, theirs stay.
    second = tmp_path / "second"
    shutil.copytree(model_dir, second)
    (second / "generation_config.json").unlink()
    result = publish(second, remote, home, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "removed 1 file(s) an earlier publish wrote: generation_config.json" in result.stdout
    listed = git("ls-tree", "-r", "--name-only", "main", cwd=remote).split()
    assert "generation_config.json" not in listed and {"LICENSE", "NOTES.md"} <= set(listed)
    assert SECRET not in result.stdout + result.stderr


def test_a_file_we_did_not_write_is_replaced_only_with_replace_remote(model_dir, tmp_path, home):
    remote = remote_with(tmp_path, {"README.md": "# Made on the platform\n", "LICENSE": "MIT\n",
                                    ".gitattributes": "*.zip filter=lfs diff=lfs merge=lfs -text\n"}, home)
    head = git("rev-parse", "main", cwd=remote)
    before = tree(remote)
    line = assert_refused(publish(model_dir, remote, home, cwd=tmp_path), "README.md", "--replace-remote",
                          "Nothing was pushed")
    assert ".gitattributes" not in line, "their .gitattributes is merged with ours, never replaced"
    assert git("rev-parse", "main", cwd=remote) == head and tree(remote) == before

    result = publish(model_dir, remote, home, "--replace-remote", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "# Made on the platform" not in remote_file(remote, "README.md")
    assert remote_file(remote, "LICENSE") == "MIT\n"
    attributes = remote_file(remote, ".gitattributes")
    assert "*.zip filter=lfs" in attributes and "*.safetensors filter=lfs" in attributes

    # Our own files, unchanged since we wrote them, are ours to replace without the flag.
    second = tmp_path / "second"
    shutil.copytree(model_dir, second)
    (second / "config.json").write_text(json.dumps({**json.loads((second / "config.json").read_text()), "note": 1}))
    assert publish(second, remote, home, cwd=tmp_path).returncode == 0


def test_nothing_published_names_a_folder_of_this_machine(model_dir, tmp_path, home):
    """A merge record of an earlier version (paths as typed) and a config.json naming the folder the
    model was loaded from: both are published without those paths."""
    model = tmp_path / "deep" / "inside" / "merged"
    shutil.copytree(model_dir, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "_name_or_path": str(tmp_path / "models" / "base")}))
    (model / "xtuner_assistant_merge.json").write_text(json.dumps(
        {"base": str(tmp_path / "models" / "smollm2-135m"), "adapter": "work/hf_adapter",
         "largest_logit_difference": 1e-6, "tolerance": 1e-3, "prompts": 4}))
    remote = remote_with(tmp_path, {"LICENSE": "MIT\n"}, home)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = publish(model, remote, home, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(remote), str(clone)], check=True,
                   env={**os.environ, "GIT_LFS_SKIP_SMUDGE": "1"})
    for path in clone.rglob("*"):
        if path.is_file() and ".git" not in path.relative_to(clone).parts:
            text = path.read_bytes().decode("utf-8", "replace")
            assert str(tmp_path) not in text and str(Path.home()) not in text, path.name
    record = json.loads((clone / "xtuner_assistant_merge.json").read_text())
    assert record["base"] == "smollm2-135m" and record["adapter"] == "hf_adapter"
    assert record["largest_logit_difference"] == 1e-6
    assert json.loads((clone / "config.json").read_text())["_name_or_path"] == "base"
    assert "built on SmolLM2-135M-Instruct" in (clone / "README.md").read_text()
