"""The tutorial's identity recipe against xtuner-assistant's, same model and same compute, in one run.

Arms (each a real `xtuner train` of LoRA on a real model; all get the same number of iterations
at the same batch size, so the same number of training tokens seen):

- tutorial:  one identity pair repeated, no mixing, the tutorial's LoRA (r=64, alpha=16,
             dropout 0.1) and lr 2e-4, stock `EvaluateChatHook` on its three questions. The user
             keeps the last checkpoint (the tutorial picks by reading logs; we score the last).
- tutorial-data: the same single repeated pair, no mixing, stock `EvaluateChatHook`, but our LoRA
             and lr: the only differences from `ours` are the data and the hook.
- ours:      varied bilingual identity data (held-out questions never trained on) mixed with
             packaged general chat and the base model's own replayed answers, our LoRA/lr, and
             `IdentityEvalHook`, which keeps the best checkpoint and may stop early.

Every arm carries IdentityEvalHook, so every arm is scored the same way, on the same held-out
identity paraphrases and general prompts; in the tutorial arms it only observes (no early stop,
no best checkpoint). Results: <out>/<model>/results.json and a markdown table on stdout.

    OMP_NUM_THREADS=1 python bench/identity_vs_tutorial.py --model smollm2-135m --iters 60
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TUTORIAL_QUESTIONS = ["请你介绍一下你自己", "你是谁", "你是我的小助手吗"]
TUTORIAL_ANSWER = "我是{name}的小助手，内在是{base_model}大模型哦"

# Settings of our arm (the shipped CPU config has them, replay as an opt-in setting): on Qwen2.5-0.5B
# (CPU, 32 x 8) they met the target (identity 1.00 zh/en, leakage 0, facts kept) with two names and
# seeds, and they won the SmolLM2-135M GPU sweep against lr 2e-3 and general 2.0 + replay 1.0
# (docs/BENCHMARKS.md, issue 3).
OURS = dict(lr=1e-3, lora_r=16, lora_alpha=32, lora_dropout=0.05, general_ratio=1.0, replay_ratio=0.5)
TUTORIAL = dict(lr=2e-4, lora_r=64, lora_alpha=16, lora_dropout=0.1)

CONFIG = '''_base_ = ["{runtime}"]
model_path = {model_path!r}
tokenizer = dict(type="transformers.AutoTokenizer.from_pretrained", pretrained_model_name_or_path=model_path,
                 trust_remote_code=True, padding_side="right")
model = dict(type="xtuner.model.SupervisedFinetune", use_varlen_attn=False, use_activation_checkpointing=False,
             llm=dict(type="transformers.AutoModelForCausalLM.from_pretrained",
                      pretrained_model_name_or_path=model_path, trust_remote_code=True, torch_dtype="torch.float32"),
             lora=dict(type="peft.LoraConfig", r={lora_r}, lora_alpha={lora_alpha}, lora_dropout={lora_dropout},
                       bias="none", task_type="CAUSAL_LM"))
train_dataloader = dict(
    batch_size={batch_size}, num_workers=0,
    dataset=dict(type="MixedChatDataset", tokenizer=tokenizer, identity={identity!r}, general={general!r},
                 general_ratio={general_ratio}, replay={replay!r} or None, replay_ratio={replay_ratio},
                 max_length={max_length}, seed={seed}),
    sampler=dict(type="xtuner.dataset.samplers.LengthGroupedSampler", per_device_batch_size={batch_size}, seed={seed}),
    collate_fn=dict(type="xtuner.dataset.collate_fns.default_collate_fn"))
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr={lr}, betas=(0.9, 0.999), weight_decay=0.0),
                     clip_grad=dict(max_norm=1.0, error_if_nonfinite=False), accumulative_counts=1)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end={warmup}),
    dict(type="CosineAnnealingLR", eta_min=0.0, by_epoch=False, begin={warmup}, end={iters}),
]
train_cfg = dict(type="xtuner.engine.runner.TrainLoop", max_iters={iters})
default_hooks = dict(checkpoint=dict(interval={eval_every}, max_keep_ckpts=3),
                     logger=dict(interval=5))
custom_hooks = {hooks!r}
randomness = dict(seed={seed})
'''


def tutorial_data(path: Path, name: str, base_model: str, count: int) -> str:
    """The tutorial's personal_assistant.json: the same single pair, `count` times."""
    from xtuner_assistant.paths import write_jsonl_atomic

    pair = {"messages": [{"role": "user", "content": TUTORIAL_QUESTIONS[0]},
                         {"role": "assistant", "content": TUTORIAL_ANSWER.format(name=name, base_model=base_model)}]}
    write_jsonl_atomic(path, [pair] * count)
    return str(path)


def arm_config(arm: str, args, model_path: str, out: Path, replay: str) -> dict:
    samples = args.iters * args.batch_size
    eval_hook = dict(type="IdentityEvalHook", name=args.name, base_model=args.base_model, seed=args.seed,
                     every_n_iters=args.eval_every, max_new_tokens=args.eval_tokens, batch_size=16,
                     identity_sentences=[TUTORIAL_ANSWER.format(name=args.name, base_model=args.base_model)])
    if arm in ("tutorial", "tutorial-data"):
        settings = dict(TUTORIAL if arm == "tutorial" else OURS, general_ratio=0.0, replay_ratio=0.0)
        identity = tutorial_data(out / "personal_assistant.jsonl", args.name, args.base_model, samples)
        general, replay = [], ""
        eval_hook.update(early_stop=False, save_best=False)
        hooks = [eval_hook]
        if arm in ("tutorial", "tutorial-data"):
            hooks.insert(0, dict(type="xtuner.engine.hooks.EvaluateChatHook", tokenizer=None,
                                 every_n_iters=args.eval_every, evaluation_inputs=TUTORIAL_QUESTIONS,
                                 prompt_template="xtuner.utils.PROMPT_TEMPLATE.qwen_chat", max_new_tokens=64))
    else:
        settings = dict(OURS)
        share = 1.0 + settings["general_ratio"] + settings["replay_ratio"]
        identity = dict(type="IdentityConversations", name=args.name, base_model=args.base_model,
                        n=round(samples / share), seed=args.seed)
        general, replay = ["packaged:chatterbot"], replay
        hooks = [eval_hook]
    return dict(settings, runtime=str(REPO / "configs" / "_base_" / "runtime.py"), model_path=model_path,
                identity=identity, general=general, replay=replay, max_length=args.max_length,
                batch_size=args.batch_size, seed=args.seed, iters=args.iters, warmup=max(2, args.iters // 10),
                eval_every=args.eval_every, hooks=hooks)


def write_config(path: Path, values: dict) -> Path:
    text = CONFIG.format(**values)
    # EvaluateChatHook needs the tokenizer dict; it is the variable `tokenizer` of the config.
    text = text.replace("'tokenizer': None", "'tokenizer': tokenizer")
    path.write_text(text, encoding="utf-8")
    return path


def run_arm(arm: str, config: Path, work_dir: Path, log: Path) -> dict:
    from xtuner_assistant.training.xtuner_tools import tool_path

    start = time.monotonic()
    with open(log, "w") as output:
        status = subprocess.run([sys.executable, tool_path("train"), str(config), "--work-dir", str(work_dir)],
                                stdout=output, stderr=subprocess.STDOUT, env=os.environ.copy()).returncode
    wall = time.monotonic() - start
    from xtuner_assistant.evaluation.identity_evaluation import rescored_history
    from xtuner_assistant.evaluation.records import read_summary

    # Scored again from the saved answers, so every arm is scored by the same (current) metrics.
    history = rescored_history(work_dir)
    summary = read_summary(work_dir)
    if arm == "ours" and summary.get("best"):
        chosen = next(h for h in history if h["iter"] == summary["best"]["iter"])
        how = f"best (hook), iter {chosen['iter']}"
    else:
        chosen, how = history[-1], f"last, iter {history[-1]['iter']}"
    peak = max((h for h in history if h["iter"] > 0), key=lambda h: h["combined"])  # by the hook's rule
    return dict(arm=arm, exit_status=status, wall_seconds=round(wall, 1),
                eval_seconds=round(sum(h["eval_seconds"] for h in history), 1),
                iterations_run=history[-1]["iter"], chosen=chosen, chosen_how=how, peak_iter=peak["iter"],
                stopped_early=summary.get("stopped_early"), history=history)


def table(results: list[dict]) -> str:
    def number(value):
        return "n/a" if value is None else f"{value:.2f}"

    rows = ["| arm | checkpoint used | identity acc. zh | identity acc. en | leakage | repetition | collapse "
            "| retention | facts kept | iters run | wall s (eval s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["chosen"]
        rows.append(f"| {r['arm']} | {r['chosen_how']} | {number(c['identity_accuracy_zh'])} | "
                    f"{number(c['identity_accuracy_en'])} | {number(c['leakage'])} | {number(c['repetition'])} | "
                    f"{number(c['collapse'])} | {number(c['retention'])} | {number(c.get('fact_retention'))} | "
                    f"{r['iterations_run']} | {r['wall_seconds']:.0f} ({r['eval_seconds']:.0f}) |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a packaged model name (xtuner-assistant model list) or a model folder")
    parser.add_argument("--arms", default="tutorial,tutorial-data,ours")
    parser.add_argument("--iters", type=int, default=30, help="the compute budget: iterations per arm")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--eval-tokens", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--name", default="小菜鸡")
    parser.add_argument("--base-model", default=None, help="what the identity says it is built on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", action="store_true", help="run the arms side by side (one thread each)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                        help="change a setting of our arm, e.g. --set general_ratio=0.5 (lr, lora_r, "
                             "lora_alpha, lora_dropout, general_ratio, replay_ratio)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)

    for pair in args.overrides:
        key, _, value = pair.partition("=")
        if key not in OURS:
            parser.error(f"--set {pair}: unknown setting; known: {', '.join(OURS)}")
        OURS[key] = type(OURS[key])(value)
    from xtuner_assistant.data.replay import replay_file
    from xtuner_assistant.models.fetch import fetch

    model_path = args.model if Path(args.model).is_dir() else str(fetch(args.model))
    args.base_model = args.base_model or Path(args.model).name
    out = Path(args.out) / Path(args.model).name
    out.mkdir(parents=True, exist_ok=True)
    arms = args.arms.split(",")
    replay_seconds = []

    def run(arm):
        replay = ""
        if arm == "ours":
            # Timed on its own: made once per model, then cached for every later run.
            start = time.monotonic()
            replay = replay_file(model_path)
            replay_seconds.append(round(time.monotonic() - start, 1))
        config = write_config(out / f"{arm}.py", arm_config(arm, args, model_path, out, replay))
        return run_arm(arm, config, out / f"work_{arm}", out / f"{arm}.log")

    if args.parallel:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(arms)) as pool:
            results = list(pool.map(run, arms))
    else:
        results = [run(arm) for arm in arms]
    report = dict(model=args.model, iters=args.iters, batch_size=args.batch_size, eval_every=args.eval_every,
                  eval_tokens=args.eval_tokens, name=args.name, ours=OURS, tutorial=TUTORIAL,
                  replay_generation_seconds=replay_seconds[0] if replay_seconds else None, parallel=args.parallel,
                  threads=os.environ.get("OMP_NUM_THREADS"), results=results)
    (out / "results.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    print(table(results))
    return 0 if all(r["exit_status"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
