"""A model's own answers to a list of prompts, generated once and cached: the replayed general data
(data/replay.py) and the reference that retention is measured against (evaluation/).

Answers are cached under ~/.cache/xtuner-assistant/answers/, keyed by the model's files, the prompts
and the length limit, so a changed model or prompt list never reuses stale answers.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from xtuner_assistant.paths import home, write_json_atomic


def model_fingerprint(model_path: str | Path) -> str:
    """Identifies a model folder by its config and the names/sizes of its files, so a changed
    model never reuses stale answers."""
    path = Path(model_path).resolve()
    digest = hashlib.sha256(str(path).encode())
    for file in sorted(path.iterdir()) if path.is_dir() else ():
        if file.is_file():
            digest.update(f"{file.name}:{file.stat().st_size}".encode())
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    return digest.hexdigest()[:16]


def cache_path(model_path: str | Path, prompts: list[str], max_new_tokens: int) -> Path:
    key = hashlib.sha256(json.dumps([model_fingerprint(model_path), prompts, max_new_tokens],
                                    ensure_ascii=False).encode()).hexdigest()[:16]
    return home() / "answers" / f"{Path(model_path).name}-{key}.json"


def cached_answers(model_path: str | Path, prompts: list[str], max_new_tokens: int, generate) -> list[str]:
    """`generate(prompts, max_new_tokens) -> answers` runs once per (model, prompts, limit)."""
    path = cache_path(model_path, prompts, max_new_tokens)
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("prompts") == prompts:
            return cached["answers"]
    answers = generate(prompts, max_new_tokens)
    write_json_atomic(path, {"model": str(model_path), "max_new_tokens": max_new_tokens,
                             "prompts": prompts, "answers": answers})
    return answers


def generate_with(model, tokenizer, batch_size: int = 0):
    """A `generate` for cached_answers from a loaded model, with a progress bar (batches of
    `batch_size`, 0 = generation's BATCH_SIZE)."""
    from xtuner_assistant.models.generation import BATCH_SIZE, replies
    from xtuner_assistant.progress import bar

    batch_size = batch_size or BATCH_SIZE

    def generate(prompts, max_new_tokens):
        answers = []
        with bar(total=len(prompts), desc="base model answers", unit="prompt") as progress:
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                answers += replies(model, tokenizer, chunk, batch_size=batch_size, max_new_tokens=max_new_tokens)
                progress.update(len(chunk))
        return answers

    return generate


def base_model_answers(model_path: str | Path, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The base model's answers to `prompts`, from the cache or generated (loading the model) once."""
    def generate(prompts, max_new_tokens):
        from xtuner_assistant.models.generation import load_chat_model

        model, tokenizer = load_chat_model(model_path)  # the GPU where there is one
        return generate_with(model, tokenizer)(prompts, max_new_tokens)

    return cached_answers(model_path, prompts, max_new_tokens, generate)
