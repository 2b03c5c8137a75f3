"""The base model's own answers, generated once and cached: general data that needs no outside data
set (replayed in training so the model keeps what it knew) and the reference that retention is
measured against.

Prompts come from the shipped bilingual pool (data/general_prompts.json) plus any the user adds
(a .txt file, one prompt a line, or a JSON list of strings). Answers are cached under
~/.cache/xtuner-assistant/answers/, keyed by the model's files, the prompts and the length limit.
"""
from __future__ import annotations

import hashlib
import json
import re
from importlib import resources
from pathlib import Path

from xtuner_assistant import metrics
from xtuner_assistant.paths import home, write_json_atomic, write_jsonl_atomic

DEFAULT_MAX_NEW_TOKENS = 96
SENTENCE_END = re.compile(r"[.!?。！？]")


class ReplayError(ValueError):
    pass


def prompt_pool() -> dict:
    return json.loads(resources.files("xtuner_assistant.data").joinpath("general_prompts.json").read_text("utf-8"))


def replay_prompts(extra_prompts: str | Path | None = None) -> list[str]:
    pool = prompt_pool()["replay"]
    prompts = [p for language in pool for p in pool[language]]
    if extra_prompts:
        prompts += user_prompts(extra_prompts)
    return list(dict.fromkeys(prompts))


def general_eval_prompts() -> list[dict]:
    """Held-out general prompts: {prompt, language, accepted} (accepted is None unless a fact)."""
    pool = prompt_pool()
    items = [{"prompt": p, "language": language, "accepted": None}
             for language in pool["eval"] for p in pool["eval"][language]]
    items += [{"prompt": f["prompt"], "language": f["language"], "accepted": f["accepted"]} for f in pool["facts"]]
    return items


def user_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"{path}: no such prompts file (a .txt with one prompt a line, or a JSON list of strings)")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ReplayError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        if not isinstance(data, list):
            raise ReplayError(f"{path}: expected a JSON list of prompt strings")
        for i, item in enumerate(data):
            if not isinstance(item, str) or not item.strip():
                raise ReplayError(f"{path}: item {i} is not a non-empty string")
        return [item.strip() for item in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


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


def generate_with(model, tokenizer, batch_size: int = 16):
    """A `generate` for cached_answers from a loaded model, with a progress bar."""
    from xtuner_assistant.generation import replies
    from xtuner_assistant.progress import bar

    def generate(prompts, max_new_tokens):
        answers = []
        with bar(total=len(prompts), desc="base model answers", unit="prompt") as progress:
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                answers += replies(model, tokenizer, chunk, batch_size=batch_size, max_new_tokens=max_new_tokens)
                progress.update(len(chunk))
        return answers

    return generate


def base_model_answers(model_path: str | Path, prompts: list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> list[str]:
    """The base model's answers to `prompts`, from the cache or generated (loading the model) once."""
    def generate(prompts, max_new_tokens):
        from xtuner_assistant.generation import load_chat_model

        model, tokenizer = load_chat_model(model_path)  # the GPU where there is one
        return generate_with(model, tokenizer)(prompts, max_new_tokens)

    return cached_answers(model_path, prompts, max_new_tokens, generate)


def whole_sentences(answer: str) -> str:
    """The answer up to its last full sentence: an answer cut by the length limit would teach the
    model to stop mid-sentence. Empty when not even one sentence is complete."""
    answer = answer.strip()
    ends = [m.end() for m in SENTENCE_END.finditer(answer)]
    if not ends:
        return ""
    return answer[:ends[-1]] if ends[-1] < len(answer) else answer


def replay_file(model_path: str | Path, extra_prompts: str | Path | None = None,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
    """A JSONL of the base model's own conversations, for MixedChatDataset(replay=...).

    Answers are cut to whole sentences, and those that loop or come back empty are left out: replay
    keeps the model's knowledge, not its failure modes. Called from a config, so the answers are made the first time and reused after.
    """
    prompts = replay_prompts(extra_prompts)
    answers = base_model_answers(model_path, prompts, max_new_tokens)
    conversations = []
    for prompt, answer in zip(prompts, answers):
        answer = whole_sentences(answer)
        if answer and not metrics.loops(answer):
            conversations.append({"messages": [{"role": "user", "content": prompt},
                                               {"role": "assistant", "content": answer}]})
    if not conversations:
        raise ReplayError(f"{model_path}: the base model gave no usable answer to {len(prompts)} replay prompts; "
                          "set replay_ratio=0 or check the model with `xtuner-assistant chat`")
    target = cache_path(model_path, prompts, max_new_tokens).with_suffix(".jsonl")
    if not target.is_file():
        write_jsonl_atomic(target, conversations)
    return str(target)
