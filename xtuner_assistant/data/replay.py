"""Replay: the base model's own answers as general training data, which needs no outside data set
and keeps what the model knew.

Prompts come from the shipped bilingual pool (data/phrases/replay_prompts.json) plus any the user
adds (a .txt file, one prompt a line, or a JSON list of strings). The answers are made once and cached
(models/answers.py).
"""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from xtuner_assistant.evaluation import metrics
from xtuner_assistant.models.answers import base_model_answers, cache_path
from xtuner_assistant.paths import read_json_list, write_jsonl_atomic

DEFAULT_MAX_NEW_TOKENS = 96
SENTENCE_END = re.compile(r"[.!?。！？]")


class ReplayError(ValueError):
    pass


def replay_prompts(extra_prompts: str | Path | None = None) -> list[str]:
    pool = json.loads(resources.files("xtuner_assistant.data").joinpath("phrases", "replay_prompts.json")
                      .read_text("utf-8"))
    prompts = [p for language in ("en", "zh") for p in pool[language]]
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
