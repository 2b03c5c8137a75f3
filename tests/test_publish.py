"""Publishing as a user does it, against real parts: a tiny model pushed with git + real Git LFS to
local bare repos (file remotes), cloned back, loaded and chatted with; the generated app.py fetching
the model repo and answering; bad inputs, a rejected push and a re-run; and a fake secret that must
not show up anywhere."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from talkative_model import talkative_tiny_model_dir
from xtuner_assistant.cli.main import main as cli_main

SECRET = "xa-FAKE-SECRET-7f3a9c1e"
QUESTION = "Hello, who are you?"

@pytest.fixture(autouse=True)
def clean_git_home(tmp_path, monkeypatch):
    """A HOME with no git config or credential helper, and a private xtuner-assistant home."""
    if shutil.which("git-lfs") is None:
        pytest.fail("git-lfs is not installed: `apt-get update && apt-get install -y git-lfs`")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XTUNER_ASSISTANT_HOME", str(tmp_path / "xa-home"))
    for variable in ("XA_GIT_TOKEN", "XA_GIT_USERNAME", "OPENXLAB_AK", "OPENXLAB_SK", "GIT_CONFIG_COUNT"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return talkative_tiny_model_dir(tmp_path_factory.mktemp("publish") / "merged", seed=0)


def bare_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return path


def git(*args, cwd=None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def clone_with_lfs(url: Path, folder: Path) -> Path:
    env = {**os.environ, "GIT_LFS_SKIP_SMUDGE": "1"}
    subprocess.run(["git", "clone", "-q", "-b", "main", str(url), str(folder)], check=True, env=env)
    subprocess.run(["git", "lfs", "pull"], cwd=folder, check=True, capture_output=True)
    return folder


def fingerprint(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() + f"{p.stat().st_mtime_ns}"
            for p in sorted(folder.rglob("*")) if p.is_file()}


def publish(capsys, *args) -> tuple[int, str, str]:
    status = cli_main(["publish", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def reply_of(folder: Path, messages=None) -> str:
    from xtuner_assistant.models.generation import load_chat_model, reply

    model, tokenizer = load_chat_model(folder, device="cpu")
    return reply(model, tokenizer, messages or [{"role": "user", "content": QUESTION}], max_new_tokens=24)


def test_publish_with_lfs_then_clone_load_chat_and_run_the_app(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XA_GIT_TOKEN", SECRET)
    monkeypatch.setenv("OPENXLAB_SK", SECRET + "-sk")
    model_remote, app_remote = bare_repo(tmp_path / "model.git"), bare_repo(tmp_path / "app.git")
    before = fingerprint(model_dir)

    status, dry_out, dry_err = publish(capsys, model_dir, "--repo", model_remote, "--app-repo", app_remote,
                                       "--name", "Zorblat", "--author", "Alice", "--dry-run")
    assert status == 0, dry_err
    assert git("for-each-ref", cwd=model_remote) == "" and git("for-each-ref", cwd=app_remote) == ""

    status, out, err = publish(capsys, model_dir, "--repo", model_remote, "--app-repo", app_remote,
                               "--name", "Zorblat", "--author", "Alice")
    assert status == 0, err
    assert fingerprint(model_dir) == before, "publishing must only read the model folder"

    # --dry-run listed exactly what was pushed, LFS marks included.
    listed = {}
    for line in dry_out.splitlines():
        if line.startswith("would push the "):
            repo = "model" if "model repo" in line else "app"
        elif line.startswith("  "):
            kind, *_, path = line.split()
            listed[(repo, path)] = kind
    pushed = {("model", p) for p in git("ls-tree", "-r", "--name-only", "main", cwd=model_remote).split()}
    pushed |= {("app", p) for p in git("ls-tree", "-r", "--name-only", "main", cwd=app_remote).split()}
    assert set(listed) == pushed
    lfs_files = set(git("lfs", "ls-files", "--name-only", "main", cwd=clone_with_lfs(model_remote, tmp_path / "c1")).split())
    assert lfs_files == {path for (repo, path), kind in listed.items() if repo == "model" and kind == "lfs"}
    assert {"model.safetensors", "tokenizer.json"} <= lfs_files

    # The weights in git history are LFS pointers; the bytes live in the remote's LFS store.
    pointer = git("show", "main:model.safetensors", cwd=model_remote)
    assert pointer.startswith("version https://git-lfs")
    oid = pointer.split("oid sha256:")[1].split()[0]
    assert oid == hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert (model_remote / "lfs" / "objects" / oid[:2] / oid[2:4] / oid).is_file()

    # Clone it back like a user: the clone loads and answers exactly as the original.
    clone = tmp_path / "c1"
    assert reply_of(clone) == reply_of(model_dir) != ""
    card = (clone / "README.md").read_text(encoding="utf-8")
    assert "Zorblat" in card and "Alice" in card and "model.safetensors" in card
    assert "*.safetensors filter=lfs" in (clone / ".gitattributes").read_text()

    # The app repo: pinned requirements, system packages, platform front matter, and an app.py that
    # fetches the model repo at start-up and answers with the same chat-template contract.
    app_clone = tmp_path / "app"
    subprocess.run(["git", "clone", "-q", "-b", "main", str(app_remote), str(app_clone)], check=True)
    requirements = (app_clone / "requirements.txt").read_text().split()
    assert requirements and all("==" in line for line in requirements)
    assert {"gradio", "transformers", "torch"} <= {line.split("==")[0] for line in requirements}
    assert (app_clone / "packages.txt").read_text().split() == ["git", "git-lfs"]
    front = (app_clone / "README.md").read_text(encoding="utf-8").split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front

    monkeypatch.delenv("MODEL_REPO_URL", raising=False)
    spec = importlib.util.spec_from_file_location("published_app", app_clone / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    assert "gradio" not in sys.modules, "app.py imports gradio only to build the page, never to chat"
    fetched = app.fetch_model(folder=tmp_path / "app-model")
    assert app.MODEL_REPO_URL == str(model_remote)
    assistant = app.Assistant(fetched)
    from xtuner_assistant.chat_template import end_of_turn_token_ids
    from xtuner_assistant.models.generation import load_chat_model

    assert assistant.stop_ids == end_of_turn_token_ids(load_chat_model(model_dir, device="cpu")[1])
    assert assistant.chat(QUESTION, max_new_tokens=24) == reply_of(model_dir)
    pieces = list(assistant.stream(QUESTION, max_new_tokens=24))
    assert len(pieces) > 1 and all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "I am Zorblat."}]
    expected = reply_of(model_dir, history + [{"role": "user", "content": "And who made you?"}])
    assert assistant.chat("And who made you?", history, max_new_tokens=24) == expected
    assert assistant.chat("And who made you?", [[QUESTION, "I am Zorblat."]], max_new_tokens=24) == expected

    # The fake secrets appear nowhere: not in output, repo history, objects, clones or leftovers.
    assert not list((tmp_path / "xa-home" / "publish").iterdir()), "staging clones must be removed"
    everything = dry_out + dry_err + out + err
    for repo in (model_remote, app_remote):
        everything += git("log", "-p", "--all", cwd=repo)
        everything += subprocess.run(["git", "cat-file", "--batch-all-objects", "--batch"], cwd=repo,
                                     capture_output=True).stdout.decode("utf-8", "replace")
    for folder in (tmp_path, model_dir):
        for path in folder.rglob("*"):
            if path.is_file():
                everything += path.read_bytes().decode("utf-8", "replace")
    assert SECRET not in everything


def test_a_push_rejected_half_way_changes_nothing_and_a_rerun_completes(model_dir, tmp_path, capsys):
    remote = bare_repo(tmp_path / "model.git")
    hook = remote / "hooks" / "pre-receive"
    # Rejects the first push after its LFS objects were uploaded: the half-way failure.
    hook.write_text(f"#!/bin/sh\nif [ ! -e {tmp_path}/rejected-once ]; then touch {tmp_path}/rejected-once; "
                    "echo 'quota exceeded' >&2; exit 1; fi\n")
    hook.chmod(0o755)
    before = fingerprint(model_dir)

    status, out, err = publish(capsys, model_dir, "--repo", remote, "--model-only")
    assert status == 2
    assert "quota exceeded" in err and "run the same command again" in err and "Traceback" not in err
    assert git("for-each-ref", cwd=remote) == ""
    assert fingerprint(model_dir) == before

    status, out, err = publish(capsys, model_dir, "--repo", remote, "--model-only")
    assert status == 0, err
    assert reply_of(clone_with_lfs(remote, tmp_path / "clone")) == reply_of(model_dir)

    # Publishing again changes nothing; a new name changes only the model card (and the record of what
    # we wrote, which holds the card's blob id).
    status, out, err = publish(capsys, model_dir, "--repo", remote, "--model-only")
    assert status == 0 and "already up to date" in out
    status, out, err = publish(capsys, model_dir, "--repo", remote, "--model-only", "--name", "Zorblat")
    assert status == 0, err
    assert git("diff", "--name-only", "main~1", "main", cwd=remote).split() == [".xtuner-assistant-published.json",
                                                                              "README.md"]


def broken_copy(model_dir: Path, folder: Path, drop=(), tokenizer_config=None) -> Path:
    shutil.copytree(model_dir, folder)
    for name in drop:
        (folder / name).unlink()
    if tokenizer_config is not None:
        (folder / "tokenizer_config.json").write_text(tokenizer_config)
    return folder


def test_bad_inputs_get_clear_errors_and_touch_nothing(model_dir, tmp_path, capsys):
    remote = bare_repo(tmp_path / "model.git")
    empty = tmp_path / "empty"
    empty.mkdir()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    cases = [
        ((empty, "--repo", remote, "--model-only"), "not a model folder (no config.json)"),
        ((tmp_path / "nowhere", "--repo", remote, "--model-only"), "no such folder"),
        ((adapter, "--repo", remote, "--model-only"), "this is a LoRA adapter"),
        ((broken_copy(model_dir, tmp_path / "no-tok", drop=["tokenizer.json"]), "--repo", remote, "--model-only"),
         "the tokenizer is incomplete"),
        ((broken_copy(model_dir, tmp_path / "no-tok-config", drop=["tokenizer_config.json"]), "--repo", remote,
          "--model-only"), "has no tokenizer (tokenizer_config.json)"),
        ((broken_copy(model_dir, tmp_path / "no-template", tokenizer_config=json.dumps(config)), "--repo", remote,
          "--model-only"), "no chat_template"),
        ((broken_copy(model_dir, tmp_path / "bad-json", tokenizer_config="{\n  'x': 1\n}"), "--repo", remote,
          "--model-only"), "tokenizer_config.json:2: not valid JSON"),
        ((model_dir, "--repo", "not a repo!", "--model-only"), "is not a repository name: use owner/name"),
        ((model_dir, "--repo", "a/b/c", "--model-only"), "is not a repository name"),
        ((model_dir, "--repo", remote), "give --app-repo"),
        ((model_dir, "--repo", f"https://alice:{SECRET}@example.org/alice/m.git", "--model-only"),
         "holds a password or token"),
        ((model_dir, "--repo", "alice/assistant", "--model-only"), "no credentials for https://code.openxlab.org.cn/"
                                                                   "alice/assistant.git"),
    ]
    before = fingerprint(model_dir)
    for args, message in cases:
        status, out, err = publish(capsys, *args)
        assert status == 2, (args, err)
        assert message in err, (message, err)
        assert "Traceback" not in err and SECRET not in err + out
    assert git("for-each-ref", cwd=remote) == ""
    assert fingerprint(model_dir) == before


def test_token_reaches_git_only_through_the_environment(model_dir, tmp_path, capsys, monkeypatch):
    from xtuner_assistant.publish.git_repo import git_environment

    monkeypatch.setenv("XA_GIT_USERNAME", "alice")
    monkeypatch.setenv("XA_GIT_TOKEN", SECRET)
    env = git_environment()
    assert SECRET not in "".join(v for k, v in env.items() if k.startswith("GIT_"))
    answer = subprocess.run(["git", "credential", "fill"], input="protocol=https\nhost=example.org\n\n",
                            capture_output=True, text=True, env=env, cwd=tmp_path).stdout
    assert f"username=alice\npassword={SECRET}" in answer

    # A push that fails on the wire (nothing listens on this loopback port) says so, without the token.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status, out, err = publish(capsys, model_dir, "--repo", f"http://alice@127.0.0.1:{port}/alice/m.git",
                               "--model-only")
    assert status == 2 and f"127.0.0.1:{port}" in err and "Traceback" not in err
    assert SECRET not in out + err and "alice@" not in err


def test_model_card_tells_identity_base_training_and_evaluation_from_the_run(model_dir, tmp_path):
    from xtuner_assistant.publish.model_card import gather_facts, model_card

    work = tmp_path / "work"
    (work / "train" / "identity_eval").mkdir(parents=True)
    (work / "hf_adapter").mkdir()
    (work / "train" / "assistant_cfg.py").write_text(  # as `xtuner train` dumps it
        f"name = 'Zorblat'\nauthor = 'Alice'\nbase_model = 'SmolLM2-135M-Instruct'\nlr = 0.0002\nmax_epochs = 2\n"
        f"work_dir = '{work / 'train'}'\n"
        "model = dict(type='SupervisedFinetune', lora=dict(type='LoraConfig', r=16, lora_alpha=32, lora_dropout=0.05))\n")
    (work / "train" / "identity_eval" / "summary.json").write_text(json.dumps(
        {"best": {"iter": 40, "scores": {"identity_accuracy": 0.9, "leakage": 0.05, "combined": 1.7}}}))
    merged = tmp_path / "merged"
    shutil.copytree(model_dir, merged)
    (merged / "xtuner_assistant_merge.json").write_text(json.dumps(
        {"base": "/somewhere/models/smollm2-135m", "adapter": str(work / "hf_adapter"),
         "largest_logit_difference": 2e-6, "tolerance": 1e-3, "prompts": 4}))
    facts = gather_facts(merged)
    card = model_card(facts, "alice/zorblat", ["config.json"])
    for expected in ("# Zorblat", "for Alice", "built on SmolLM2-135M-Instruct", "| lr | 0.0002 |",
                     "| lora_r | 16 |", "| identity_accuracy | 0.9 |", "iteration 40", "2.00e-06"):
        assert expected in card, expected
    assert "Alice" not in model_card(gather_facts(merged, author=""), "alice/zorblat", [])
