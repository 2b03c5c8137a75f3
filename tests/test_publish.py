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
    names = {line.split("==")[0].lower().replace("_", "-") for line in requirements}
    assert {"gradio", "transformers", "torch"} <= names
    # Not only the packages the app imports: everything they pull in is pinned too.
    assert {"gradio-client", "fastapi", "pydantic", "numpy", "huggingface-hub", "tokenizers"} <= names
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
    # The system prompt box reaches the model through the chat template.
    system = [{"role": "system", "content": "You are Zorblat, made by Alice."}]
    rendered = []
    template = assistant.tokenizer.apply_chat_template
    monkeypatch.setattr(assistant.tokenizer, "apply_chat_template",
                        lambda messages, **kwargs: rendered.append(messages) or template(messages, **kwargs))
    with_system = reply_of(model_dir, system + [{"role": "user", "content": QUESTION}])
    assert assistant.chat(QUESTION, [], system="You are Zorblat, made by Alice.", max_new_tokens=24) == with_system
    assert rendered[-1] == system + [{"role": "user", "content": QUESTION}]
    assistant.chat(QUESTION, [], system="  ", max_new_tokens=4)
    assert rendered[-1] == [{"role": "user", "content": QUESTION}], "an empty box adds no system message"

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


def load_app(tmp_path: Path, url: Path):
    """The app.py a publish writes for the model repo at `url`, imported."""
    from xtuner_assistant.publish.app_bundle import app_source

    source = tmp_path / "published_app.py"
    source.write_text(app_source(str(url), "Test"))
    spec = importlib.util.spec_from_file_location("published_app_republish", source)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    return app


def test_the_app_picks_up_a_republished_model_on_restart(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MODEL_REPO_URL", raising=False)
    remote = bare_repo(tmp_path / "model.git")
    assert publish(capsys, model_dir, "--repo", remote, "--model-only")[0] == 0
    app = load_app(tmp_path, remote)
    folder = tmp_path / "app-model"
    assert app.Assistant(app.fetch_model(folder=folder)).chat(QUESTION, max_new_tokens=24) == reply_of(model_dir)

    # The model is trained again and republished; the app's next start answers with the new one.
    second = talkative_tiny_model_dir(tmp_path / "retrained", seed=3)
    assert reply_of(second) != reply_of(model_dir)
    assert publish(capsys, second, "--repo", remote, "--model-only")[0] == 0
    assert app.Assistant(app.fetch_model(folder=folder)).chat(QUESTION, max_new_tokens=24) == reply_of(second)
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).digest() == \
        hashlib.sha256((second / "model.safetensors").read_bytes()).digest()

    # A folder that is not the app's clone of this model repo is never touched.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="not a clone of the model repo"):
        app.fetch_model(folder=other)
    assert (other / "notes.txt").read_text() == "mine"
    elsewhere = bare_repo(tmp_path / "elsewhere.git")
    with pytest.raises(RuntimeError, match="is a clone of"):
        app.fetch_model(url=str(elsewhere), folder=folder)


def front_matter(card: str) -> dict:
    import yaml

    return yaml.safe_load(card.split("---")[1])


def merged_copy(model_dir: Path, folder: Path, base: Path | None = None, adapter: Path | None = None) -> Path:
    shutil.copytree(model_dir, folder)
    if base is not None:
        (folder / "xtuner_assistant_merge.json").write_text(json.dumps(
            {"base": str(base), "adapter": str(adapter or folder.parent / "no-adapter"),
             "largest_logit_difference": 2e-6, "tolerance": 1e-3, "prompts": 4}))
    return folder


def fetched_base(folder: Path, licence: str, display_name: str = "SmolLM2-135M-Instruct") -> Path:
    folder.mkdir(parents=True)
    (folder / "xtuner_assistant_model.json").write_text(json.dumps({"display_name": display_name,
                                                                      "licence": licence}))
    return folder


def test_model_card_front_matter_carries_base_model_languages_and_the_recorded_licence(model_dir, tmp_path):
    from xtuner_assistant.publish.model_card import gather_facts, model_card

    base = fetched_base(tmp_path / "models" / "smollm2-135m", "Apache-2.0")
    merged = merged_copy(model_dir, tmp_path / "merged", base)
    card = model_card(gather_facts(merged), "alice/zorblat", ["config.json"])
    front = front_matter(card)
    assert front["license"] == "apache-2.0"
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert front["language"] == ["zh", "en"]
    assert front["pipeline_tag"] == "text-generation"
    assert "The base model's licence applies: Apache-2.0." in card

    # A package that states no licence: not passed off as Apache-2.0.
    stated = "not stated by the package (upstream Qwen2.5-Coder-0.5B-Instruct: Apache-2.0)"
    qwen = fetched_base(tmp_path / "models" / "qwen2.5-0.5b", stated, "Qwen2.5-Coder-0.5B-Instruct")
    card = model_card(gather_facts(merged_copy(model_dir, tmp_path / "merged-qwen", qwen)), "alice/q", [])
    assert front_matter(card)["license"] == "other"
    assert front_matter(card)["base_model"] == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert f"The base model's licence, as recorded: {stated}." in card

    # A model with no record at all says the licence is unknown rather than guessing one.
    card = model_card(gather_facts(model_dir), "alice/x", [])
    assert front_matter(card)["license"] == "other" and "base_model" not in front_matter(card)
    assert "licence was not recorded with it" in card


def test_model_card_says_when_a_model_was_not_evaluated_and_shows_the_demo_comparison(model_dir, tmp_path):
    from xtuner_assistant.publish.model_card import gather_facts, model_card

    card = model_card(gather_facts(model_dir), "alice/x", [])
    assert "## Evaluation" in card and "This model was not evaluated" in card
    assert "## Limitations" in card

    # `xtuner-assistant demo` wrote its own base vs fine-tuned answers beside the merged model.
    work = tmp_path / "demo"
    merged = merged_copy(model_dir, work / "merged")
    (work / "demo_result.json").write_text(json.dumps({"name": "Zorblat", "merged_model": str(merged), "rows": [
        {"question": "你是谁？", "base": "I am an AI assistant.", "fine-tuned": "我是Zorblat，你的助手。"},
        {"question": "What is the capital of France?", "base": "Paris.", "fine-tuned": "Paris | France."}]},
        ensure_ascii=False))
    card = model_card(gather_facts(merged), "alice/zorblat", [])
    assert "This model was not evaluated" not in card
    assert "| question | base model | this model |" in card
    assert "| 你是谁？ | I am an AI assistant. | 我是Zorblat，你的助手。 |" in card
    assert "Paris \\| France." in card, "a | inside an answer must not break the table"

    # Scores from the evaluation hook, with the leakage they measured stated as a limitation.
    train = work / "train"
    (train / "identity_eval").mkdir(parents=True)
    (train / "identity_eval" / "summary.json").write_text(json.dumps(
        {"best": {"iter": 40, "scores": {"identity_accuracy": 1.0, "leakage": 0.25, "repetition": 0.0}},
         "stopped_early": {"iter": 60, "reason": "general answers collapsed"}}))
    card = model_card(gather_facts(merged, train_dir=train), "alice/zorblat", [])
    assert "iteration 40" in card and "| leakage | 0.25 |" in card
    assert "Training stopped early at iteration 60: general answers collapsed." in card
    assert "Measured: 25% of general prompts got an answer that carries the identity." in card
