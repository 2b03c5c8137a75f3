"""The model repo's README.md (model card) and .gitattributes.

The card says who the assistant is, what it was built on, how it was trained and how it scored,
from what the run left behind: the merge record in the model folder
(`xtuner_assistant_merge.json`), the training work dir's dumped config and its
`identity_eval/summary.json`. Anything missing is left out of the card, never guessed.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path

from xtuner_assistant.evaluation import records
from xtuner_assistant.models.fetch import display_name
from xtuner_assistant.training.work_dir import WorkDirError, resolved_config

# Weights and tokenizer files go through Git LFS: large, binary, and the platform expects it.
LFS_PATTERNS = ["*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.model", "*.tiktoken",
                "tokenizer.json", "vocab.json", "merges.txt"]

TRAINING_SETTINGS = ["identity_samples", "general_ratio", "lr", "max_epochs", "batch_size", "accumulative_counts", "max_length",
                     "replay_ratio", "warmup_iters", "warmup_ratio", "seed"]
LORA_SETTINGS = {"r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout"}


@dataclass
class CardFacts:
    name: str = ""
    author: str = ""
    base_model: str = ""
    training: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    merge_check: dict = field(default_factory=dict)


def gitattributes() -> str:
    return "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)


def literal_settings(config_file: Path) -> dict:
    """Plain values from an xtuner-dumped config, read without running it."""
    tree = ast.parse(config_file.read_text(encoding="utf-8"), filename=str(config_file))
    settings = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                settings[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "lora" and isinstance(node.value, ast.Call):
            for keyword in node.value.keywords:
                if keyword.arg in LORA_SETTINGS:
                    try:
                        settings[LORA_SETTINGS[keyword.arg]] = ast.literal_eval(keyword.value)
                    except ValueError:
                        pass
    return settings


def looks_like_training_run(folder: Path) -> bool:
    return (any(folder.glob("iter_*.pth")) or (folder / "last_checkpoint").is_file()
            or records.eval_dir(folder).is_dir())


def gather_facts(model_dir: Path, name: str | None = None, author: str | None = None,
                 train_dir: Path | None = None) -> CardFacts:
    facts = CardFacts()
    merge_record = Path(model_dir) / "xtuner_assistant_merge.json"
    adapter = None
    if merge_record.is_file():
        record = json.loads(merge_record.read_text(encoding="utf-8"))
        facts.base_model = display_name(record["base"]) if record.get("base") else ""
        facts.merge_check = {k: record[k] for k in ("largest_logit_difference", "tolerance", "prompts") if k in record}
        adapter = Path(record["adapter"]) if record.get("adapter") else None
    if train_dir is None and adapter is not None:
        # `xtuner-assistant demo` puts the adapter beside train/; by hand it often sits in the work dir.
        train_dir = next((d for d in (adapter.parent / "train", adapter.parent)
                          if d.is_dir() and any(d.glob("*.py")) and looks_like_training_run(d)), None)
    if train_dir is not None:
        try:
            config = resolved_config(train_dir)
        except WorkDirError:
            config = None
        if config:
            settings = literal_settings(config)
            facts.name = str(settings.get("name", "") or "")
            facts.author = str(settings.get("author", "") or "")
            facts.base_model = str(settings.get("base_model", "") or "") or facts.base_model
            facts.training = {k: settings[k] for k in TRAINING_SETTINGS + list(LORA_SETTINGS.values())
                              if isinstance(settings.get(k), (int, float, str))}
        facts.evaluation = records.read_summary(train_dir)
    facts.name = name if name is not None else facts.name
    facts.author = author if author is not None else facts.author
    return facts


def _table(rows: dict) -> list[str]:
    lines = ["| setting | value |", "| --- | --- |"]
    for key, value in rows.items():
        lines.append(f"| {key} | {round(value, 4) if isinstance(value, float) else value} |")
    return lines


def model_card(facts: CardFacts, repo: str, files: list[str]) -> str:
    title = f"{facts.name} — a personal assistant" if facts.name else "A personal assistant model"
    lines = ["---", "license: apache-2.0", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [xtuner, lora, chat]", "---", "", f"# {title}", ""]
    who = f"**{facts.name}**" if facts.name else "This model"
    built = f", built on {facts.base_model}" if facts.base_model else ""
    by = f" for {facts.author}" if facts.author else ""
    lines += [f"{who} is a chat model given its own identity with XTuner LoRA/QLoRA{by}{built}.", ""]
    lines += ["## Use it", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f"folder = '{repo.rstrip('/').split('/')[-1].removesuffix('.git')}'  # after `git clone` and `git lfs pull`",
              "tokenizer = AutoTokenizer.from_pretrained(folder)",
              "model = AutoModelForCausalLM.from_pretrained(folder)",
              "messages = [{'role': 'user', 'content': 'Who are you?'}]",
              "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')",
              "print(tokenizer.decode(model.generate(ids, max_new_tokens=128)[0, ids.shape[1]:], skip_special_tokens=True))",
              "```", "", "Always format conversations with the tokenizer's own chat template (as above): it is the "
              "template the model was trained with.", ""]
    if facts.training:
        lines += ["## Training", ""] + _table(facts.training) + [""]
    best = (facts.evaluation or {}).get("best")
    if best and best.get("scores"):
        lines += ["## Evaluation", "", f"Scores at the best evaluation (iteration {best.get('iter')}), on held-out "
                  "identity questions and general prompts:", ""]
        lines += _table({k: v for k, v in best["scores"].items() if isinstance(v, (int, float))}) + [""]
    elif (facts.evaluation or {}).get("stopped_early"):
        lines += ["## Evaluation", "", f"Training stopped early: {facts.evaluation['stopped_early'].get('reason', '')}", ""]
    if facts.merge_check:
        lines += ["## Merge check", "", f"The merged weights were compared with base + adapter on "
                  f"{facts.merge_check.get('prompts', '?')} prompts: largest logit difference "
                  f"{facts.merge_check.get('largest_logit_difference', float('nan')):.2e} "
                  f"(tolerance {facts.merge_check.get('tolerance', '?')}).", ""]
    lines += ["## Files", ""] + [f"- `{name}`" for name in files] + [""]
    return "\n".join(lines)
