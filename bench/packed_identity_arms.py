"""Why did the packed QLoRA configs not teach a real model its identity? Arms on one real model, the
same identity file and general data, each a real `xtuner-assistant train` -> convert -> merge
(checked) -> eval, side by side on one GPU. Each arm changes one thing against its neighbour:

  padded-fp32        the CPU default recipe (padded batches of 4 x 2, LoRA r16 a32, lr 1e-3), no replay
  padded-fp32-replay the CPU default exactly (replay 0.5)
  packed-fp32        packed rows of 640 tokens (~8 conversations, one row a step): the dense mask route
  packed-bf16        the same in bfloat16: the varlen flash-attention route
  packed-nf4         the same on the nf4-quantized base (QLoRA)
  shipped            configs/internlm2_chat_1_8b_qlora_assistant.py as shipped (2000 identity, 3072 x 5, lr 2e-4, r64 a16)
  shipped-lr         shipped data and rows, lr 1e-3 r16 a32, 1 epoch (the issue's second row)
  fix-3072x1         shipped data + replay 0.5, rows of 3072, one row a step, lr 1e-3 r16 a32, 1 epoch
  fix-3072x1-r64     the same with r64 a128 and lr 2e-4
  fix-1024x1         the same as fix-3072x1 with rows of 1024

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

COMMON = dict(lr=1e-3, lora_r=16, lora_alpha=32, dropout=0.05, epochs=1, replay_ratio=0.0, general_ratio=1.0,
              general=["packaged:chatterbot"], identity="file", quantize=False, dtype="float32", accumulate=1,
              max_length=512, pack_tokens=512, warmup=10, eval_every=30)
SHIPPED_DATA = dict(identity=2000, general=["packaged:chatterbot", "packaged:chitchat"], max_length=1024)
ARMS = {
    "padded-fp32": dict(packed=False, batch_size=4, accumulate=2, eval_every=60, warmup=20, max_length=256),
    "padded-fp32-replay": dict(packed=False, batch_size=4, accumulate=2, eval_every=60, warmup=20, max_length=256,
                               replay_ratio=0.5),
    "packed-fp32": dict(packed=True, pack_tokens=640),
    "packed-bf16": dict(packed=True, pack_tokens=640, dtype="bfloat16"),
    "packed-nf4": dict(packed=True, pack_tokens=640, dtype="bfloat16", quantize=True),
    "shipped": dict(shipped=True),
    "shipped-lr": dict(packed=True, dtype="bfloat16", quantize=True, pack_tokens=3072, accumulate=5, eval_every=25,
                       **SHIPPED_DATA),
    "fix-3072x1": dict(packed=True, dtype="bfloat16", quantize=True, pack_tokens=3072, replay_ratio=0.5,
                       eval_every=25, **SHIPPED_DATA),
    "fix-3072x1-r64": dict(packed=True, dtype="bfloat16", quantize=True, pack_tokens=3072, replay_ratio=0.5,
                           lr=2e-4, lora_r=64, lora_alpha=128, eval_every=25, **SHIPPED_DATA),
    "fix-1024x1": dict(packed=True, dtype="bfloat16", quantize=True, pack_tokens=1024, replay_ratio=0.5,
                       eval_every=75, **SHIPPED_DATA),
}

def cli(args: list, log, env=None) -> int:
    log.write(f"$ xtuner-assistant {' '.join(map(str, args))}\n")
    log.flush()
    return subprocess.run([*CLI, *map(str, args)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                          env={**os.environ, **(env or {})}).returncode


def arm_config(arm: str, model_dir: str, work: Path, identity_file: Path, replay: str, base_model: str) -> Path:
    """The arm's config, its pieces put together here (bench/wiring.py) and written out as plain dicts."""
    from wiring import (assistant_eval_hook, chat_tokenizer, lora_model, mixed_dataloader, optimizer,
                        packed_dataloader, packed_lora_model, schedule)

    values = {**COMMON, **ARMS[arm]}
    identity = str(identity_file) if values["identity"] == "file" else dict(
        type="IdentityConversations", name=NAME, author=AUTHOR, base_model=base_model, n=values["identity"], seed=SEED)
    replay = replay if values["replay_ratio"] else ""
    tokenizer = chat_tokenizer(model_dir)
    if values["packed"]:
        model = packed_lora_model(model_dir, r=values["lora_r"], alpha=values["lora_alpha"], dropout=values["dropout"],
                                  quantize_4bit=values["quantize"], dtype=f"torch.{values['dtype']}")
        train_dataloader = packed_dataloader(tokenizer, identity, values["general"], values["general_ratio"],
                                             values["max_length"], values["pack_tokens"], 1, SEED, replay=replay,
                                             replay_ratio=values["replay_ratio"])
    else:
        model = lora_model(model_dir, r=values["lora_r"], alpha=values["lora_alpha"], dropout=values["dropout"],
                           quantize_4bit=False, gradient_checkpointing=False)
        train_dataloader = mixed_dataloader(tokenizer, identity, values["general"], values["general_ratio"],
                                            values["max_length"], values.get("batch_size", 1), SEED, replay=replay,
                                            replay_ratio=values["replay_ratio"])
    param_scheduler, train_cfg = schedule(values["epochs"], values["warmup"])
    config = dict(
        model_path=model_dir, tokenizer=tokenizer, identity=identity, model=model, train_dataloader=train_dataloader,
        optim_wrapper=optimizer(values["lr"], values["accumulate"],
                                mixed_precision=None if values["dtype"] == "float32" else values["dtype"]),
        param_scheduler=param_scheduler, train_cfg=train_cfg,
        default_hooks=dict(checkpoint=dict(interval=100000, max_keep_ckpts=1), logger=dict(interval=10)),
        # Observe only: every arm trains to its end, so its last checkpoint is what gets merged.
        custom_hooks=[dict(assistant_eval_hook(NAME, AUTHOR, base_model, SEED, values["eval_every"]), early_stop=False)],
        randomness=dict(seed=SEED))
    text = f"_base_ = [{str(REPO / 'configs' / '_base_' / 'runtime.py')!r}]\n"
    text += "".join(f"{key} = {value!r}\n" for key, value in config.items())
    path = work / f"{arm}.py"
    path.write_text(text, encoding="utf-8")
    return path


def scores_of(report_file: Path) -> dict:
    if not report_file.is_file():
        return {}
    return json.loads(report_file.read_text(encoding="utf-8"))["scores"]


def run_arm(arm: str, model_dir: str, work: Path, identity_file: Path, replay: str, base_model: str) -> dict:
    values = {**COMMON, **ARMS[arm]}
    folder = work / arm
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = {"arm": arm, "settings": {k: v for k, v in values.items() if k != "general"}}
    with open(folder / "log.txt", "w") as log:
        if values.get("shipped"):
            config = REPO / "configs" / "internlm2_chat_1_8b_qlora_assistant.py"
            status = cli(["train", config, "--work-dir", folder / "train", "--model", model_dir,
                          "--set", f"name={NAME}", "--set", f"author={AUTHOR}", "--set", f"base_model={base_model}",
                          "--set", "evaluation_freq=50"], log)
            result["settings"] = {"config": str(config)}
        else:
            config = arm_config(arm, model_dir, work, identity_file, replay, base_model)
            status = cli(["train", config, "--work-dir", folder / "train"], log)
        result["train_status"] = status
        result["train_seconds"] = round(time.monotonic() - started, 1)
        history_file = folder / "train" / "identity_eval" / "history.jsonl"
        history = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()] \
            if history_file.is_file() else []
        result["hook_history"] = history
        if status != 0:
            return result
        steps_per_iter = 1 / values["accumulate"] if not values.get("shipped") else 1 / 5
        result["iterations"] = history[-1]["iter"] if history else None
        result["optimizer_steps"] = round(result["iterations"] * steps_per_iter) if history else None
        merge_args = ["--quantized-reference"] if values.get("quantize") or values.get("shipped") else []
        status = cli(["convert", folder / "train", "--out", folder / "adapter"], log) or \
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
    replay = ""
    if any({**COMMON, **ARMS[arm]}["replay_ratio"] or ARMS[arm].get("shipped") for arm in arms):
        from xtuner_assistant.data.replay import replay_file

        started = time.monotonic()
        replay = replay_file(args.model_dir)  # once, before the arms share its cache
        print(f"replay: {replay} ({time.monotonic() - started:.0f} s)", flush=True)
    results = []

    def finished(arm):
        result = run_arm(arm, args.model_dir, work, work / "data" / "identity.jsonl", replay, args.base_model)
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
