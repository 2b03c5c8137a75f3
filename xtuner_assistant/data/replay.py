"""Replay: the base model's own answers as general training data, which needs no outside data set
and keeps what the model knew.

Prompts come from the shipped bilingual pool (data/phrases/replay_prompts.json: hand-written prompts,
and templates filled with topics) plus any the user adds (a .txt file, one prompt a line, or a JSON
list of strings). The answers are made once and cached (models/answers.py).
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from importlib import resources
from pathlib import Path

from xtuner_assistant.evaluation import metrics
from xtuner_assistant.models.answers import base_model_answers, cache_path, shipped_file
from xtuner_assistant.paths import read_json_list, write_json_atomic, write_jsonl_atomic

# Answers are cut to whole sentences anyway; 64 tokens keep the first use of a 2-core CPU short.
DEFAULT_MAX_NEW_TOKENS = 64
SENTENCE_END = re.compile(r"[.!?。！？]")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]")
# The same character five times in a row ("！！！！！", "？？？？？", "100000"): too short a loop for metrics.loops.
_RUN = re.compile(r"(\S)\1{4,}")


class ReplayError(ValueError):
    pass


def prompt_pool() -> dict:
    return json.loads(resources.files("xtuner_assistant.data").joinpath("phrases", "replay_prompts.json")
                      .read_text("utf-8"))


def templated_prompts(pool: dict | None = None, seed: int = 0) -> list[str]:
    """`count` prompts per language from `replay_templates`: each family's share of every
    (template, topic) pair, drawn without repeats with a fixed seed."""
    spec = (pool or prompt_pool()).get("replay_templates", {})
    rng = random.Random(f"replay-templates-{seed}")
    prompts = []
    for language in ("zh", "en"):
        if language not in spec:
            continue
        for family in spec[language]["families"]:
            pairs = [t.replace("{x}", x) for t in family["templates"] for x in family["topics"]]
            rng.shuffle(pairs)
            prompts += pairs[:round(spec[language]["count"] * family["share"])]
    return prompts


def replay_prompts(extra_prompts: str | Path | None = None) -> list[str]:
    pool = prompt_pool()
    prompts = [p for language in ("en", "zh") for p in pool[language]] + templated_prompts(pool)
    if extra_prompts:
        prompts += user_prompts(extra_prompts)
    return list(dict.fromkeys(prompts))


def user_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    missing = "no such prompts file (a .txt with one prompt a line, or a JSON list of strings)"
    if path.suffix == ".json":
        data = read_json_list(path, "prompt strings", ReplayError, missing)
        for i, item in enumerate(data):
            if not isinstance(item, str) or not item.strip():
                raise ReplayError(f"{path}: item {i} is not a non-empty string")
        return [item.strip() for item in data]
    if not path.is_file():
        raise ReplayError(f"{path}: {missing}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def whole_sentences(answer: str) -> str:
    """The answer up to its last full sentence: an answer cut by the length limit would teach the
    model to stop mid-sentence. Empty when not even one sentence is complete."""
    answer = answer.strip()
    ends = [m.end() for m in SENTENCE_END.finditer(answer)]
    if not ends:
        return ""
    return answer[:ends[-1]] if ends[-1] < len(answer) else answer


def language(text: str) -> str:
    """'zh' when CJK characters are at least a third of the letters, 'en' when there are letters."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    return "zh" if cjk and cjk >= (cjk + latin) / 3 else "en" if latin else ""


def echoes(prompt: str, answer: str) -> bool:
    """The answer opens by repeating the question (a small model's way of not answering)."""
    asked, said = metrics.units(prompt), metrics.units(answer)
    return bool(asked) and said[:len(asked)] == asked


def usable(prompt: str, answer: str) -> bool:
    """A replay answer worth learning: not empty, no loop, not an echo of the question, and in the
    question's language (a Chinese question answered in English teaches the wrong habit)."""
    return (bool(answer) and not metrics.loops(answer) and not _RUN.search(answer) and not echoes(prompt, answer)
            and language(answer) == language(prompt))


def replay_file(model_path: str | Path, extra_prompts: str | Path | None = None,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
    """A JSONL of the base model's own conversations, for MixedChatDataset(replay=...).

    Answers are cut to whole sentences, and those that loop, echo the question, change language or
    come back empty are left out: replay keeps the model's knowledge, not its failure modes. Called from a config, so the answers are made the first time and reused after.
    """
    prompts = replay_prompts(extra_prompts)
    answers = base_model_answers(model_path, prompts, max_new_tokens)
    conversations = []
    for prompt, answer in zip(prompts, answers):
        answer = whole_sentences(answer)
        if usable(prompt, answer):
            conversations.append({"messages": [{"role": "user", "content": prompt},
                                               {"role": "assistant", "content": answer}]})
    if not conversations:
        raise ReplayError(f"{model_path}: the base model gave no usable answer to {len(prompts)} replay prompts; "
                          "set replay_ratio=0 or check the model with `xtuner-assistant chat`")
    # Named by what it holds: answers filtered another way (a changed `usable`) never reuse an older file.
    content = hashlib.sha256(json.dumps(conversations, ensure_ascii=False).encode()).hexdigest()[:12]
    answers_file = cache_path(model_path, prompts, max_new_tokens)
    target = answers_file.with_name(f"{answers_file.stem}-replay-{content}.jsonl")
    if not target.is_file():
        write_jsonl_atomic(target, conversations)
    return str(target)


def ship_answers(name: str) -> Path:
    """The fetched packaged model `name`'s answers to the shipped pool, as the configs ask for them, into
    models/shipped_answers/ (made now if they are not cached), so that no user's machine makes them again."""
    from xtuner_assistant.models.fetch import fetch

    model, prompts = fetch(name), replay_prompts()
    answers = base_model_answers(model, prompts, DEFAULT_MAX_NEW_TOKENS)
    target = Path(str(shipped_file(cache_path(model, prompts, DEFAULT_MAX_NEW_TOKENS).name)))
    write_json_atomic(target, {"model": name, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "prompts": prompts,
                               "answers": answers})
    return target


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["ship"] or len(sys.argv) != 3:
        sys.exit("usage: python -m xtuner_assistant.data.replay ship MODEL_NAME")
    print(ship_answers(sys.argv[2]))
