"""The model repo's README.md (model card) and .gitattributes.

The card says who the assistant is, what it was built on, how it was trained and how it scored,
from the merge record in the model folder (`xtuner_assistant_merge.json`), which carries the run's
identity, settings and evaluation (training/export.py), or from a training work dir given with
--train-dir. Anything missing is left out of the card, never guessed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from xtuner_assistant.models.zoo import model_display_name
from xtuner_assistant.training.work_dir import find_training_run, run_facts

# Weights and tokenizer files go through Git LFS: large, binary, and the platform expects it.
LFS_PATTERNS = ["*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.model", "*.tiktoken",
                "tokenizer.json", "vocab.json", "merges.txt"]


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


def gather_facts(model_dir: Path, name: str | None = None, author: str | None = None,
                 train_dir: Path | None = None) -> CardFacts:
    facts = CardFacts()
    merge_record = Path(model_dir) / "xtuner_assistant_merge.json"
    run: dict = {}
    if merge_record.is_file():
        record = json.loads(merge_record.read_text(encoding="utf-8"))
        facts.base_model = record.get("base_model") or model_display_name(record.get("base", ""))
        facts.merge_check = {k: record[k] for k in ("largest_logit_difference", "tolerance", "prompts") if k in record}
        run = record
        if "identity" not in record and record.get("adapter") and train_dir is None:
            # A record of an earlier version names the adapter as typed: look from here and from the model.
            adapter = Path(record["adapter"])
            for candidate in ([adapter] if adapter.is_absolute() else [adapter, Path(model_dir).parent / adapter]):
                train_dir = find_training_run(candidate) if candidate.is_dir() else None
                if train_dir:
                    break
    if train_dir is not None:
        run = run_facts(Path(train_dir))
    identity = run.get("identity") or {}
    facts.name = identity.get("name", "")
    facts.author = identity.get("author", "")
    facts.base_model = identity.get("base_model") or facts.base_model
    facts.training = dict(run.get("training") or {})
    facts.evaluation = dict(run.get("evaluation") or {})
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
