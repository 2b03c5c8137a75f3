"""The tutorial's own recipe on a real model, as a learner would run it, scored the way ours is.

XTuner's stock `internlm2_chat_1_8b_qlora_alpaca_e3` with the tutorial's edits (bench/speed.py
applies them to its text), the model's prompt template, and the tutorial's data: one identity pair
repeated 5000 times. `IdentityEvalHook` rides along and only observes (no early stop, no best
checkpoint), so every few iterations the run is scored on held-out identity paraphrases and general
prompts: this is how the tutorial's collapse shows. Then the tutorial's own export, timed:
`xtuner convert pth_to_hf` and `xtuner convert merge`, and `xtuner-assistant eval` of the result.

    python bench/tutorial_run.py --model MODEL_DIR --name NAME --base-model DISPLAY_NAME --work W --out OUT
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402

TUTORIAL_QUESTION = "请你介绍一下你自己"
TUTORIAL_ANSWER = "我是{name}的小助手，内在是{base_model}大模型哦"
PROMPT_TEMPLATES = {"qwen2": "qwen_chat", "llama": "llama3_chat", "internlm2": "internlm2_chat"}


def tutorial_config(model: Path, data: Path, out: Path, name: str, base_model: str, every: int,
                    cpu: bool = False) -> Path:
    config = speed.tutorial_stock_config(model, data, out)
    text = config.read_text()
    if cpu:  # a check of this script on a machine without CUDA: no 4-bit, float32, one tokenizing process
        text = re.sub(r"quantization_config=dict\([^)]*\),", "", text, flags=re.S)
        text = text.replace("torch_dtype=torch.float16", "torch_dtype=torch.float32")
        text = text.replace("type=AmpOptimWrapper", "type=OptimWrapper").replace('loss_scale="dynamic",', "")
        text = re.sub(r'\n\s*dtype="float16",', "", text)
        text = text.replace("from mmengine.optim import AmpOptimWrapper,", "from mmengine.optim import OptimWrapper,")
        text = re.sub(r"map_num_proc=\d+|map_num_proc = \d+", "map_num_proc=1", text)
    model_type = json.loads((model / "config.json").read_text()).get("model_type", "internlm2")
    template = PROMPT_TEMPLATES.get(model_type, "internlm2_chat")
    text, count = re.subn(r"prompt_template = PROMPT_TEMPLATE\.\w+", f"prompt_template = PROMPT_TEMPLATE.{template}", text)
    if count != 1:
        raise RuntimeError(f"{config}: no prompt_template line to point at {template}")
    observer = dict(type="xtuner_assistant.evaluation.hook.IdentityEvalHook", name=name, base_model=base_model, seed=0, every_n_iters=every,
                    early_stop=False, save_best=False,
                    identity_sentences=[TUTORIAL_ANSWER.format(name=name, base_model=base_model)])
    text += ("\n# Scored the way xtuner-assistant's runs are: held-out identity paraphrases and general prompts.\n"
             "custom_imports = dict(imports=['xtuner_assistant'], allow_failed_imports=False)\n"
             f"custom_hooks.append({observer!r})\n")
    config.write_text(text)
    return config


def timed(label: str, command: list[str], log, times: dict) -> int:
    start = time.monotonic()
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    times[label] = round(time.monotonic() - start, 1)
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--base-model", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--every", type=int, default=100, help="iterations between observations")
    parser.add_argument("--repeat", type=int, default=5000)
    parser.add_argument("--cpu", action="store_true", help="check the script without CUDA (no 4-bit)")
    args = parser.parse_args()
    from xtuner_assistant.training.xtuner_tools import tool_path

    work, out, model = Path(args.work), Path(args.out), Path(args.model)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    pair = {"messages": [{"role": "user", "content": TUTORIAL_QUESTION},
                         {"role": "assistant", "content": TUTORIAL_ANSWER.format(name=args.name, base_model=args.base_model)}]}
    data = work / "personal_assistant.json"
    data.write_text(json.dumps([pair] * args.repeat, ensure_ascii=False))
    config = tutorial_config(model, data, work / "tutorial_config.py", args.name, args.base_model, args.every,
                             args.cpu)
    times: dict = {}
    with open(out / "log.txt", "w") as log:
        python = sys.executable
        train = [python, tool_path("train")]
        if args.cpu:  # stock XTuner 0.2.0 cannot train on a CPU without our compatibility fixes
            train = [python, "-c", "import sys, runpy, xtuner_assistant; sys.argv = sys.argv[1:]; "
                     "runpy.run_path(sys.argv[0], run_name='__main__')", tool_path("train")]
        status = timed("train", [*train, str(config), "--work-dir", str(work / "train")], log, times)
        checkpoints = sorted((work / "train").glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
        if status == 0 and checkpoints:
            status = timed("pth_to_hf", [python, tool_path("pth_to_hf"), str(config), str(checkpoints[-1]),
                                         str(work / "hf")], log, times) \
                or timed("merge", [python, tool_path("merge"), str(model), str(work / "hf"), str(work / "final")], log, times)
        if status == 0:
            timed("eval", [python, "-m", "xtuner_assistant.cli", "eval", str(work / "final"), "--name", args.name,
                           "--base-model-name", args.base_model, "--base", str(model), "--max-new-tokens", "96",
                           "--out", str(out / "final_eval")], log, times)
    history_file = work / "train" / "identity_eval" / "history.jsonl"
    history = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()] \
        if history_file.is_file() else []
    report = {"config": str(config), "checkpoint": str(checkpoints[-1]) if checkpoints else None, "seconds": times,
              "exit_status": status, "observed": history}
    final = out / "final_eval" / "report.json"
    if final.is_file():
        report["final_scores"] = json.loads(final.read_text())["scores"]
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    for h in history:
        print(f"iter {h['iter']:>4}: identity zh {h.get('identity_accuracy_zh')} en {h.get('identity_accuracy_en')} "
              f"leakage {h['leakage']:.2f} repetition {h['repetition']:.2f} collapse {h['collapse']:.2f}")
    print(json.dumps({"seconds": times, "exit_status": status, "final_scores": report.get("final_scores")}))
    return status


if __name__ == "__main__":
    sys.exit(main())
