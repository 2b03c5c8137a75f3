"""Why did the packed QLoRA configs not teach a real model its identity? Arms on one real model, the
same identity file and general data, each a real `xtuner-assistant train` -> convert -> merge
(checked) -> eval, side by side on one GPU. Each arm changes one thing against its neighbour:

  padded-fp32         the CPU config (padded batches of 4 x 2, LoRA r16 a32, lr 1e-3), no replay
  padded-fp32-replay  the CPU config as shipped (replay 0.5)
  packed-fp32         the packed config with the CPU arms' LoRA, lr and data, rows of 640 tokens (~8
                      conversations, one row a step): the dense-mask attention route
  packed-bf16         the same in bfloat16: the varlen flash-attention route
  packed-nf4          the same on the nf4-quantized base (QLoRA)
  shipped-before      the packed config's defaults before the fix (lr 2e-4, r64 a16, 5 rows of 3072 a step,
                      2 epochs, no replay), on its default data (2000 identity + chatterbot/chitchat)
  shipped-before-lr   the same rows and data, lr 1e-3 r16 a32, 1 epoch
  fix-3072x1          the default data, one row of 3072 a step, lr 1e-3 r16 a32, replay 0.5, 1 epoch
  shipped             the packed config as shipped now (r64 a128, lr 2e-4, one row a step, replay 0.5)
  fix-1024x1          the same with rows of 1024

Every arm is a shipped config with settings (`--set`). The diagnosis of 2026-11-29 ran these arms from an
equivalent config template at commit bd43e79 (bench/results/gpu_2026-11-29/packed_identity_arms.json).
The evaluation hook scores the adapter as it trains (on the nf4 base for QLoRA arms); `eval` scores the
merged full-precision model afterwards, so the two columns show what the merge changes.

    python bench/packed_identity_arms.py MODEL_DIR --work /tmp/arms [--arms a,b,...] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "xtuner_assistant.cli"]
NAME, AUTHOR, SEED = "星河小蜜蜂", "林舟", 0

CPU_CONFIG = REPO / "configs" / "smollm2_135m_lora_cpu_assistant.py"
PACKED_CONFIG = REPO / "configs" / "internlm2_chat_1_8b_qlora_assistant.py"
# Settings of the shipped configs (`--set NAME=VALUE`) per arm; "file" is the identity file made once.
ARM_DATA = dict(identity_file="file", general="packaged:chatterbot", general_ratio=1.0, replay_ratio=0.0)
DIAGNOSIS = dict(lr=1e-3, lora_r=16, lora_alpha=32, max_epochs=1, warmup_iters=10, accumulative_counts=1,
                 max_length=512, pack_tokens=640, evaluation_freq=30, save_steps=30, **ARM_DATA)
SHIPPED_DATA = dict(identity_file="", identity_samples=2000, general="packaged:chatterbot,packaged:chitchat",
                    max_length=1024)
ARMS = {
    "padded-fp32": (CPU_CONFIG, dict(ARM_DATA, evaluation_freq=60, max_length=256)),
    "padded-fp32-replay": (CPU_CONFIG, dict(ARM_DATA, evaluation_freq=60, max_length=256, replay_ratio=0.5)),
    "packed-fp32": (PACKED_CONFIG, dict(DIAGNOSIS, quantize_4bit=False, dtype="float32")),
    "packed-bf16": (PACKED_CONFIG, dict(DIAGNOSIS, quantize_4bit=False, dtype="bfloat16")),
    "packed-nf4": (PACKED_CONFIG, dict(DIAGNOSIS, quantize_4bit=True, dtype="bfloat16")),
    "shipped-before": (PACKED_CONFIG, dict(SHIPPED_DATA, replay_ratio=0.0, lr=2e-4, lora_r=64, lora_alpha=16,
                                           accumulative_counts=5, max_epochs=2, evaluation_freq=50, save_steps=100)),
    "shipped-before-lr": (PACKED_CONFIG, dict(SHIPPED_DATA, replay_ratio=0.0, lr=1e-3, lora_r=16, lora_alpha=32,
                                              accumulative_counts=5, max_epochs=1, evaluation_freq=25)),
    "fix-3072x1": (PACKED_CONFIG, dict(SHIPPED_DATA, lr=1e-3, lora_r=16, lora_alpha=32, evaluation_freq=25)),
    "shipped": (PACKED_CONFIG, dict(evaluation_freq=25)),  # today's defaults: r64 a128 lr 2e-4, 3072 x 1, replay 0.5
    "fix-1024x1": (PACKED_CONFIG, dict(SHIPPED_DATA, pack_tokens=1024, evaluation_freq=75)),
}


def cli(args: list, log, env=None) -> int:
    log.write(f"$ xtuner-assistant {' '.join(map(str, args))}\n")
    log.flush()
    return subprocess.run([*CLI, *map(str, args)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                          env={**os.environ, **(env or {})}).returncode


def scores_of(report_file: Path) -> dict:
    if not report_file.is_file():
        return {}
    return json.loads(report_file.read_text(encoding="utf-8"))["scores"]


def run_arm(arm: str, model_dir: str, work: Path, identity_file: Path, base_model: str) -> dict:
    config, settings = ARMS[arm]
    settings = {**settings, "name": NAME, "author": AUTHOR, "base_model": base_model}
    if settings.get("identity_file") == "file":
        settings["identity_file"] = str(identity_file)
    folder = work / arm
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = {"arm": arm, "config": config.name, "settings": settings}
    with open(folder / "log.txt", "w") as log:
        pairs = [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]
        status = cli(["train", config, "--work-dir", folder / "train", "--model", model_dir, *pairs], log)
        result["train_status"] = status
        result["train_seconds"] = round(time.monotonic() - started, 1)
        history_file = folder / "train" / "identity_eval" / "history.jsonl"
        history = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()] \
            if history_file.is_file() else []
        result["hook_history"] = history
        if status != 0:
            return result
        accumulate = float(settings.get("accumulative_counts", 1 if config == PACKED_CONFIG else 2))
        result["iterations"] = history[-1]["iter"] if history else None
        result["optimizer_steps"] = round(result["iterations"] / accumulate) if history else None
        merge_args = ["--quantized-reference"] if settings.get("quantize_4bit", config == PACKED_CONFIG) else []
        # The last checkpoint: what the arm's recipe reached, not the hook's pick.
        status = cli(["convert", folder / "train", "--checkpoint", "last", "--out", folder / "adapter"], log) or \
            cli(["merge", folder / "adapter", "--base", model_dir, "--out", folder / "merged", *merge_args], log)
        if status == 0:
            merge = json.loads((folder / "merged" / "xtuner_assistant_merge.json").read_text())
            result["merge"] = {k: v for k, v in merge.items() if k not in ("base", "adapter")}
            status = cli(["eval", folder / "merged", "--name", NAME, "--author", AUTHOR, "--base-model-name",
                          base_model, "--seed", SEED, "--base", model_dir, "--max-new-tokens", 96,
                          "--out", folder / "merged_eval"], log)
        result["merged_scores"] = scores_of(folder / "merged_eval" / "report.json")
        result["export_status"] = status
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    return result


def table(results: list[dict]) -> str:
    def cell(scores, key):
        value = scores.get(key) if scores else None
        return "-" if value is None else f"{value:.2f}"

    lines = ["| arm | optimizer steps | adapter (hook, last): id zh / id en / leak / rep | merged: id zh / id en / "
             "leak / rep / facts | train s |", "|---|---|---|---|---|"]
    for r in results:
        last = r["hook_history"][-1] if r.get("hook_history") else {}
        merged = r.get("merged_scores", {})
        lines.append(f"| {r['arm']} | {r.get('optimizer_steps', '-')} | "
                     + " / ".join(cell(last, k) for k in ("identity_accuracy_zh", "identity_accuracy_en", "leakage",
                                                          "repetition"))
                     + " | " + " / ".join(cell(merged, k) for k in ("identity_accuracy_zh", "identity_accuracy_en",
                                                                   "leakage", "repetition", "fact_retention"))
                     + f" | {r.get('train_seconds', '-')} (exit {r.get('train_status')}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--work", required=True)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--base-model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--parallel", type=int, default=len(ARMS))
    parser.add_argument("--out")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "data.log", "w") as log:
        if cli(["data", "identity", "--name", NAME, "--author", AUTHOR, "--base-model", args.base_model, "-n", 384,
                "--seed", SEED, "--out", work / "data"], log):
            raise SystemExit(f"identity data failed: {work / 'data.log'}")
    arms = args.arms.split(",")
    if any(ARMS[arm][1].get("replay_ratio", 0.5) for arm in arms):
        from xtuner_assistant.data.replay import replay_file

        started = time.monotonic()
        replay = replay_file(args.model_dir)  # once, before the arms share its cache
        print(f"replay: {replay} ({time.monotonic() - started:.0f} s)", flush=True)
    results = []

    def finished(arm):
        result = run_arm(arm, args.model_dir, work, work / "data" / "identity.jsonl", args.base_model)
        results.append(result)
        if args.out:  # after every arm: a run cut short keeps what it measured
            Path(args.out).write_text(json.dumps(results, ensure_ascii=False, indent=2))
        print(table([result]).splitlines()[-1], flush=True)
        return result

    with ThreadPoolExecutor(args.parallel) as pool:
        list(pool.map(finished, arms))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
