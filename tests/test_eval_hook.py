"""The evaluation hook through real `xtuner train` on a tiny random model: it stops a run that
collapses (exit status 0, a message saying why), keeps the best checkpoint of a healthy run, and
`xtuner-assistant eval` reports, plots and names that checkpoint. Learning itself is measured on real
models in bench/identity_vs_tutorial.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xtuner_assistant.evaluation.hook import IdentityEvalHook
from xtuner_assistant.evaluation.records import history_file, read_history

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2_135m_lora_cpu_assistant.py"
NAME = "Zorblat"


def test_the_hook_scores_hand_made_answers():
    hook = IdentityEvalHook(name=NAME, every_n_iters=2)
    evaluation = hook.evaluation
    identity_items, general_items = evaluation.identity_items, evaluation.general_items
    assert {i["language"] for i in identity_items} == {"zh", "en"}
    assert not set(evaluation.identity_prompts) & {
        c["messages"][0]["content"] for c in evaluation.phrasebook.conversations(2000)}, "held out = never trained on"
    identity_answers = [f"I am {NAME}." if i["language"] == "en" else "我是一个助手。" for i in identity_items]
    base = [f"answer number {n} about topic {n * 7}" for n in range(len(general_items))]
    collapsed = [f"I am {NAME}, your assistant."] * len(general_items)
    scores = evaluation.score(identity_answers, collapsed, base)
    assert scores["identity_accuracy_en"] == 1.0 and scores["identity_accuracy_zh"] == 0.0
    assert scores["leakage"] == 1.0 and scores["collapse"] == 1.0 and scores["retention"] < 0.2
    assert any("collapsed" in reason for reason in hook.unhealthy(scores))
    healthy = evaluation.score(identity_answers, base, base)
    assert healthy["retention"] == 1.0 and healthy["collapse"] == 0.0 and healthy["leakage"] == 0.0
    assert hook.unhealthy(healthy) == []
    assert healthy["combined"] > scores["combined"]


def train(tmp_path: Path, tiny_model_dir: Path, hook: dict | list, work_dir: Path, epochs: int = 2,
          extra: tuple = (), save_steps: int = 100) -> subprocess.CompletedProcess:
    """Real `xtuner train` (XTuner's own train tool, this interpreter) of the shipped config plus the hook
    (or hooks): 16 conversations in batches of 4, so 4 iterations an epoch."""
    config = tmp_path / "with_eval_hook.py"
    config.write_text(f'_base_ = ["{CONFIG}"]\ncustom_hooks = {hook if isinstance(hook, list) else [hook]!r}\n')
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XTUNER_ASSISTANT_HOME": str(tmp_path / "home"),
           "XA_MODEL": str(tiny_model_dir), "XA_NAME": NAME, "XA_IDENTITY_SAMPLES": "16", "XA_GENERAL_RATIO": "0",
           "XA_BATCH_SIZE": "4", "XA_MAX_EPOCHS": str(epochs), "XA_LR": "0.05", "XA_SAVE_STEPS": str(save_steps)}
    from xtuner_assistant.training.xtuner_tools import tool_path

    return subprocess.run([sys.executable, tool_path("train"), str(config), "--work-dir", str(work_dir), *extra],
                          capture_output=True, text=True, env=env, cwd=tmp_path)


def test_the_history_is_read_while_the_hook_writes_it_and_a_damaged_line_is_named(tmp_path):
    """The web page reads history.jsonl during training: a last line still being written is left out
    until it is whole; a damaged line before it is named with what to do."""
    assert read_history(tmp_path) == []  # before the first evaluation
    history_file(tmp_path).parent.mkdir()
    history_file(tmp_path).write_text('{"iter": 0, "leakage": 0.1}\n{"iter": 2, "leak')
    assert read_history(tmp_path) == [{"iter": 0, "leakage": 0.1}]
    history_file(tmp_path).write_text('{"iter": 0, "leak\n{"iter": 2, "leakage": 0.2}\n')
    with pytest.raises(ValueError, match=r"history.jsonl:1: not valid JSON.*delete that line"):
        read_history(tmp_path)


def test_the_hook_stops_a_collapsing_run_cleanly(tmp_path, tiny_model_dir):
    # A random tiny model gives every prompt the same answer: collapse from the first evaluation.
    work_dir = tmp_path / "collapsing"
    result = train(tmp_path, tiny_model_dir, dict(type="IdentityEvalHook", name=NAME, every_n_iters=2, patience=2,
                                                  max_new_tokens=16), work_dir)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "stopping training early at iteration 4" in output and "collapsed" in output
    assert [h["iter"] for h in read_history(work_dir)] == [0, 2, 4], "stopped after 2 unhealthy evaluations of 8 iterations"
    summary = json.loads((work_dir / "identity_eval" / "summary.json").read_text())
    assert summary["stopped_early"]["iter"] == 4 and summary["best"] is None
    assert not (work_dir / "best_checkpoint.pth").exists()
    assert (work_dir / "identity_eval" / "iter_000004.txt").read_text().startswith("# iteration 4")


def test_the_hooks_state_survives_resume(tmp_path, tiny_model_dir):
    """Patience 3 and an evaluation every 2 iterations, on a model whose answers are collapsed from the
    start: the first run (one epoch, 4 iterations) ends with 2 unhealthy evaluations in a row and goes
    on; resumed, the run stops at its next evaluation (iteration 6), because the streak carried over.
    Counted afresh it would have needed evaluations 6, 8 and 10."""
    hook = dict(type="IdentityEvalHook", name=NAME, every_n_iters=2, patience=3, max_new_tokens=16)
    work_dir = tmp_path / "work"
    first = train(tmp_path, tiny_model_dir, hook, work_dir, epochs=1)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    summary = json.loads((work_dir / "identity_eval" / "summary.json").read_text())
    assert (summary["unhealthy_streak"], summary["stopped_early"], summary["last_evaluated_iter"]) == (2, None, 4)
    resumed = train(tmp_path, tiny_model_dir, hook, work_dir, epochs=3, extra=("--cfg-options", "resume=True"))
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert "stopping training early at iteration 6" in output and "3 evaluation(s) in a row" in output
    assert [h["iter"] for h in read_history(work_dir)] == [0, 2, 4, 6], "no second evaluation of the base model"


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory, tiny_model_dir):
    """Thresholds above 1 make no evaluation unhealthy: the run goes to the end and keeps its best."""
    tmp_path = tmp_path_factory.mktemp("healthy")
    work_dir = tmp_path / "work"
    result = train(tmp_path, tiny_model_dir, dict(type="IdentityEvalHook", name=NAME, every_n_iters=2, max_new_tokens=16,
                                                  collapse_threshold=1.01, repetition_threshold=1.01), work_dir)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return tmp_path, work_dir


def test_a_healthy_run_keeps_the_best_checkpoint_by_the_stated_rule(healthy_run):
    _, work_dir = healthy_run
    evaluations = read_history(work_dir)
    assert [h["iter"] for h in evaluations] == [0, 2, 4, 6, 8]
    trained = [h for h in evaluations if h["iter"] > 0]
    expected = max(trained, key=lambda h: (h["combined"], -h["iter"]))  # earlier wins a tie
    summary = json.loads((work_dir / "identity_eval" / "summary.json").read_text())
    assert summary["best"]["iter"] == expected["iter"] and summary["stopped_early"] is None
    assert "identity_accuracy + retention - leakage - repetition - collapse" in summary["rule"]
    state = torch.load(work_dir / "best_checkpoint.pth", map_location="cpu", weights_only=False)["state_dict"]
    assert state and all("lora" in key for key in state), "the best checkpoint holds the LoRA weights"
    scalars = (next(work_dir.glob("*/vis_data/scalars.json"))).read_text()
    assert '"identity_eval/identity_accuracy"' in scalars and '"identity_eval/collapse"' in scalars


def test_eval_reports_plots_and_names_the_best_checkpoint(healthy_run, capsys):
    from xtuner_assistant.cli import eval as eval_command

    _, work_dir = healthy_run
    parser = eval_command_parser(eval_command)
    args = parser.parse_args(["eval", str(work_dir)])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "best checkpoint:" in printed and "best_checkpoint.pth" in printed
    report = json.loads((work_dir / "identity_eval" / "report.json").read_text())
    assert len(report["history"]) == 5 and report["best"]["checkpoint"].endswith("best_checkpoint.pth")
    assert (work_dir / "identity_eval" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_scores_a_model_folder_against_its_base(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from xtuner_assistant.cli import eval as eval_command

    monkeypatch.setenv("XTUNER_ASSISTANT_HOME", str(tmp_path / "home"))
    parser = eval_command_parser(eval_command)
    args = parser.parse_args(["eval", str(tiny_model_dir), "--name", NAME, "--base", str(tiny_model_dir),
                              "--max-new-tokens", "8", "--out", str(tmp_path / "report")])
    assert args.run(args) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["scores"]["retention"] == 1.0, "the base model agrees with itself"
    assert len(report["identity"]) == 20 and all("answer" in item for item in report["identity"])
    assert (tmp_path / "report" / "answers.txt").read_text().count("Q (") == len(report["identity"]) + len(report["general"])


def test_eval_of_a_work_dir_without_the_hook_says_what_to_do(tmp_path):
    from xtuner_assistant.cli import eval as eval_command

    (tmp_path / "iter_4.pth").write_bytes(b"")
    args = eval_command_parser(eval_command).parse_args(["eval", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="trained without the evaluation hook"):
        args.run(args)


def eval_command_parser(module):
    import argparse

    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers())
    return parser


@pytest.mark.parametrize("batch_size, prompts, expected", [(0, 48, [48]), (0, 100, [64, 36]), (16, 48, [16, 16, 16])])
def test_the_evaluation_decodes_the_held_out_prompts_in_one_batch(monkeypatch, batch_size, prompts, expected):
    """A decoding step reads every weight whatever the batch (on a GPU it waits on kernel launches): one
    batch of the hook's prompts takes a third of the steps of three batches of 16 (issue 14), on a CPU as
    on a GPU; a batch size the user sets is kept."""
    from xtuner_assistant.evaluation.identity_evaluation import IdentityEvaluation
    from xtuner_assistant.models import generation

    batches = []

    def replies(model, tokenizer, prompts, batch_size, max_new_tokens):
        batches.extend(len(prompts[i:i + batch_size]) for i in range(0, len(prompts), batch_size))
        return ["answer"] * len(prompts)

    monkeypatch.setattr(generation, "replies", replies)
    evaluation = IdentityEvaluation("Zorblat", batch_size=batch_size)
    answers = evaluation.generator(model=None, tokenizer=None)([f"q{i}" for i in range(prompts)], 8)
    assert batches == expected and len(answers) == prompts
