"""Does a packed config still teach a real model its identity? Trains a config on the real
SmolLM2-135M-Instruct on a CPU (plain LoRA, float32: 4-bit needs a GPU), merges, and asks held-out
identity questions (never trained on). Prints the answers and how many name the assistant.

    python bench/learning_check.py configs/qwen2_5_0_5b_qlora_assistant.py --work /tmp/learn \
        --set quantize_4bit=false --set dtype=float32 --set pack_tokens=1024 --set lr=1e-3
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from xtuner_assistant.data.identity_files import write_identity_files
from xtuner_assistant.models.fetch import fetch
from xtuner_assistant.models.generation import load_chat_model, replies
from xtuner_assistant.training.export import checkpoint_to_adapter, merge_adapter
from xtuner_assistant.training.settings import parse_settings
from xtuner_assistant.training.xtuner_tools import run_tool

NAME = "Zorblat"  # a name the base model has no reason to say


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--work", required=True)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--set", dest="settings", action="append", metavar="NAME=VALUE")
    args = parser.parse_args()
    work = Path(args.work)
    base = fetch("smollm2-135m")
    paths = write_identity_files(work / "data", NAME, "Mira", "SmolLM2-135M-Instruct", samples=args.samples, seed=7)
    settings = {"model": str(base), "identity_file": str(paths["train"]), "name": NAME, "max_epochs": "1",
                "general": "", "general_ratio": "0", "evaluation_freq": "0", **parse_settings(args.settings)}
    start = time.perf_counter()
    status = run_tool("train", [args.config, "--work-dir", str(work / "train")], settings)
    train_seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"training failed with exit status {status}")
    merged = work / "merged"
    check = merge_adapter(checkpoint_to_adapter(work / "train", work / "adapter"), merged, base)
    held_out = json.loads(paths["held_out"].read_text(encoding="utf-8"))["questions"]
    model, tokenizer = load_chat_model(merged, device="cpu")
    report = {"config": args.config, "settings": settings, "train_seconds": round(train_seconds, 1),
              "merge_largest_logit_difference": check["largest_logit_difference"], "languages": {}}
    for language in ("zh", "en"):
        asked = [q["question"] for q in held_out if q["language"] == language][:6]
        answers = replies(model, tokenizer, asked, max_new_tokens=48)
        report["languages"][language] = {"named": sum(NAME in a for a in answers), "asked": len(asked),
                                         "answers": list(zip(asked, answers))}
    print(json.dumps(report, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
