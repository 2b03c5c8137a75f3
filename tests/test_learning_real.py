"""The claims that matter, on the real SmolLM2-135M-Instruct (minutes on a 2-core CPU; one training per
claim, shared by its assertions), each through the real command line:

- the embedded default's recipe (the CPU config as shipped: mixed general chat, the base model's
  replayed answers): after train, convert and merge, the model names itself on held-out identity
  questions it never saw, in both languages, keeps its identity out of held-out general prompts
  (leakage), and neither collapses nor loops; the base model never says the name;
- the packed path (the GPU configs' recipe, run on a CPU: float32 instead of nf4, rows sized for a
  CPU): the same claims, and its evaluation hook, with the default thresholds, does not stop the
  healthy run and hands `convert` its best checkpoint;
- the evaluation hook stops a run that starts healthy and then collapses (the tutorial's one
  repeated pair at a high rate), and keeps the checkpoint from before the collapse (`make test-extra`:
  CI runs the same rule on a tiny model, tests/test_eval_hook.py).

The packed path trains on 128 identity conversations instead of the shipped 2,000 to keep the suite's
time; every other setting is the config's own. The embedded default's test and the collapse test are
`extra` (`make test-extra`, ~15 minutes): CI runs the packed path's. The thresholds leave room for a
small model's noise while failing the failures this project exists to prevent: a model that answers everything with its name leaks on every general
prompt and collapses; one that learned nothing names itself on none of the held-out questions.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CPU_CONFIG = REPO / "configs" / "smollm2_135m_lora_cpu_assistant.py"
PACKED_CONFIG = REPO / "configs" / "internlm2_chat_1_8b_qlora_assistant.py"
NAME, AUTHOR, SEED = "Zorblat", "Mira", 7  # a name the base model has no reason to say
BASE_NAME = "SmolLM2-135M-Instruct"

pytestmark = pytest.mark.slow


def cli(*args, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "xtuner_assistant.cli", *map(str, args)], capture_output=True,
                            text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})})
    assert result.returncode == 0, f"{args[:2]} failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return result


def settings(**values) -> list[str]:
    return [item for key, value in values.items() for item in ("--set", f"{key}={value}")]


@pytest.fixture(scope="session")
def base_model() -> Path:
    from xtuner_assistant.models.fetch import fetch

    return fetch("smollm2-135m")


def train_export_and_score(root: Path, base: Path, config: Path, **values) -> dict:
    """train -> convert (the default checkpoint) -> merge (checked) -> eval on held-out prompts."""
    work_dir = root / "train"
    identity = dict(name=NAME, author=AUTHOR, seed=SEED, replay_ratio=0.5)  # replay: the shipped default, on
    cli("train", config, "--work-dir", work_dir, "--model", base, *settings(**identity, **values))
    converted = cli("convert", work_dir, "--out", root / "adapter")
    cli("merge", root / "adapter", "--base", base, "--out", root / "merged")
    cli("eval", root / "merged", "--name", NAME, "--author", AUTHOR, "--base-model-name", BASE_NAME, "--seed", SEED,
        "--base", base, "--out", root / "eval")
    report = json.loads((root / "eval" / "report.json").read_text(encoding="utf-8"))
    return {"work_dir": work_dir, "report": report, "scores": report["scores"], "convert_log": converted.stderr}


@pytest.fixture(scope="module")
def embedded_default(tmp_path_factory, base_model):
    # The shipped 512 identity conversations: with 128 this recipe named itself on only 2-3 of the 10
    # held-out Chinese questions of this split (docs/BENCHMARKS.md), so fewer would test another recipe.
    return train_export_and_score(tmp_path_factory.mktemp("cpu-recipe"), base_model, CPU_CONFIG)


@pytest.fixture(scope="module")
def packed_path(tmp_path_factory, base_model):
    # The GPU recipe as shipped (LoRA alpha/r 2, lr 2e-4, one row an optimizer step, one epoch, replay,
    # the hook every 50 rows); a CPU has no nf4, and small rows keep the step count of a real run.
    # Activation checkpointing, there to save GPU memory, is off: it recomputes the forward pass with the
    # same dropout masks (PyTorch restores the random state), so it changes the time, not the training.
    root = tmp_path_factory.mktemp("packed")
    config = root / "packed_without_checkpointing.py"
    config.write_text(f'_base_ = ["{PACKED_CONFIG}"]\nmodel = dict(use_activation_checkpointing=False)\n',
                      encoding="utf-8")
    return train_export_and_score(root, base_model, config, quantize_4bit="false", dtype="float32",
                                  pack_tokens=256, max_length=256, identity_samples=128)


def assert_learned_without_collapse(run: dict) -> None:
    scores, report = run["scores"], run["report"]
    answers = {lang: [i["answer"] for i in report["identity"] if i["language"] == lang] for lang in ("zh", "en")}
    for language in ("zh", "en"):
        assert scores[f"identity_accuracy_{language}"] >= 0.8, f"{language}: {answers[language]}"
    leaked = [g["answer"] for g in report["general"] if NAME in g["answer"]]
    assert scores["leakage"] <= 0.15, f"identity in general answers: {leaked}"
    assert scores["collapse"] <= 0.1 and scores["repetition"] <= 0.25, scores


@pytest.mark.extra  # ~12 minutes on a 2-core CPU; CI runs the packed path's learning test below
def test_the_embedded_default_names_itself_on_held_out_questions_without_leaking(embedded_default, base_model):
    assert_learned_without_collapse(embedded_default)
    from xtuner_assistant.data.identity import Identity, IdentityPhrasebook

    book = IdentityPhrasebook(Identity(NAME, AUTHOR, BASE_NAME), seed=SEED)  # the split the config trained on
    trained = {question for questions in book.train_questions.values() for question in questions}
    held_out = {i["question"] for i in embedded_default["report"]["identity"]}
    assert len(held_out) >= 10 and not held_out & trained, "scored on questions it never trained on"

    from xtuner_assistant.models.generation import load_chat_model, replies

    model, tokenizer = load_chat_model(base_model, device="cpu")
    asked = [i["question"] for i in embedded_default["report"]["identity"]]
    assert not any(NAME in answer for answer in replies(model, tokenizer, asked, max_new_tokens=48))


def test_the_packed_path_names_itself_and_its_hook_keeps_the_healthy_run(packed_path):
    assert_learned_without_collapse(packed_path)
    summary = json.loads((packed_path["work_dir"] / "identity_eval" / "summary.json").read_text(encoding="utf-8"))
    assert summary["stopped_early"] is None, "the default thresholds stopped a healthy run"
    assert summary["best"] and (packed_path["work_dir"] / "best_checkpoint.pth").is_file()
    assert "best_checkpoint.pth, the evaluation hook's best" in packed_path["convert_log"]


@pytest.mark.extra  # the same rule is tested through xtuner train on a tiny model (test_eval_hook.py)
def test_the_hook_stops_a_run_that_starts_healthy_and_then_collapses(tmp_path, base_model):
    """The tutorial's data (one pair, repeated) at a rate that makes it collapse within a few dozen steps:
    the first evaluations after training begins are healthy, later ones give every general prompt the
    identity answer, and the hook ends the run there, keeping the checkpoint from before."""
    pair = {"messages": [{"role": "user", "content": "请你介绍一下你自己"},
                         {"role": "assistant", "content": f"我是{NAME}的小助手，内在是{BASE_NAME}大模型哦"}]}
    data = tmp_path / "personal_assistant.jsonl"
    data.write_text((json.dumps(pair, ensure_ascii=False) + "\n") * 400, encoding="utf-8")
    hook = dict(type="IdentityEvalHook", name=NAME, base_model=BASE_NAME, every_n_iters=5, max_new_tokens=24)
    config = tmp_path / "tutorial_data.py"
    config.write_text(f'_base_ = ["{CPU_CONFIG}"]\ncustom_hooks = [{hook!r}]\n', encoding="utf-8")
    work_dir = tmp_path / "train"
    result = cli("train", config, "--work-dir", work_dir, "--model", base_model, *settings(
        name=NAME, identity_file=data, general_ratio=0, replay_ratio=0, lr=3e-3, accumulative_counts=1,
        warmup_iters=0, save_steps=1000))
    history = [json.loads(line) for line in (work_dir / "identity_eval" / "history.jsonl").read_text().splitlines()]
    summary = json.loads((work_dir / "identity_eval" / "summary.json").read_text(encoding="utf-8"))
    stopped = summary["stopped_early"]
    assert stopped, f"the run was not stopped: {[(h['iter'], h['collapse'], h['repetition']) for h in history]}"
    assert "collapsed" in stopped["reason"] or "loop" in stopped["reason"]
    first = history[1]  # the first evaluation after training began
    assert first["collapse"] < 0.5 and first["iter"] < stopped["iter"], "it did start healthy"
    assert summary["best"]["iter"] < stopped["iter"] and (work_dir / "best_checkpoint.pth").is_file()
    assert f"stopping training early at iteration {stopped['iter']}" in result.stdout + result.stderr
