"""A model's own answers to a list of prompts, generated once and cached: the replayed general data
(data/replay.py) and the reference that retention is measured against (evaluation/).

Answers are cached under ~/.cache/xtuner-assistant/answers/, keyed by the model's files, the prompts
and the length limit, so a changed model or prompt list never reuses stale answers. For the models
that `model fetch` makes from a package, the answers the shipped configs ask for ship with us
(models/shipped_answers/, `python -m xtuner_assistant.data.replay ship NAME` writes them): the
same weights give every user the same answers, which a 2-core CPU would spend minutes on.
"""
from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from xtuner_assistant.models.zoo import MANIFEST
from xtuner_assistant.paths import home, write_json_atomic

SHIPPED = "shipped_answers"


def fetched_weights(path: Path) -> dict | None:
    """The weights digests `model fetch` recorded in `path`, while every file it recorded is there at
    its recorded size; else None."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        intact = all((path / name).stat().st_size == size for name, size in manifest["files"].items())
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
    return (manifest.get("weights_sha256") or None) if intact else None


def model_fingerprint(model_path: str | Path) -> str:
    """Identifies a model folder by its config and the names/sizes of its files, so a changed
    model never reuses stale answers; and by where it is, unless `model fetch` made it (then by the
    digests of its weights, the same in every user's copy)."""
    path = Path(model_path).resolve()
    weights = fetched_weights(path)
    digest = hashlib.sha256(json.dumps(weights, sort_keys=True).encode() if weights else str(path).encode())
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


def shipped_file(name: str):
    return resources.files("xtuner_assistant.models").joinpath(SHIPPED, name)


def cached_answers(model_path: str | Path, prompts: list[str], max_new_tokens: int, generate) -> list[str]:
    """`generate(prompts, max_new_tokens) -> answers` runs once per (model, prompts, limit)."""
    path = cache_path(model_path, prompts, max_new_tokens)
    for source in (path, shipped_file(path.name)):
        if source.is_file():
            cached = json.loads(source.read_text(encoding="utf-8"))
            if cached.get("prompts") == prompts and cached.get("max_new_tokens") == max_new_tokens:
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
