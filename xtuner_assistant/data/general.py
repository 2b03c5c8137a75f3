"""General chat data: the user's JSON/JSONL files (OpenAI messages or alpaca fields) and real data
packaged on PyPI. Every malformed record is named by file, line and field; with skip_invalid the bad
ones are skipped, counted and reported, never dropped silently."""
from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from xtuner_assistant.paths import read_json_list

ROLES = ("system", "user", "assistant")
# Categories of chatterbot-corpus whose answers claim a different identity ("I am a bot called ...").
IDENTITY_CATEGORIES = {"botprofile", "ai"}


class GeneralDataError(ValueError):
    pass


@dataclass
class LoadReport:
    source: str
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.source}: {self.loaded} conversations"
        if self.skipped:
            text += f", {len(self.skipped)} skipped (first: {self.skipped[0]})"
        return text


def record_to_messages(record, where: str) -> list[dict]:
    if not isinstance(record, dict):
        raise GeneralDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise GeneralDataError(f"{where}: field 'messages' must be a non-empty list")
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                raise GeneralDataError(f"{where}: field 'messages[{i}]' must be an object with role and content")
            if message.get("role") not in ROLES:
                raise GeneralDataError(
                    f"{where}: field 'messages[{i}].role' is {message.get('role')!r}; expected one of {', '.join(ROLES)}"
                )
            if not isinstance(message.get("content"), str) or not message["content"].strip():
                raise GeneralDataError(f"{where}: field 'messages[{i}].content' must be a non-empty string")
        if not any(m["role"] == "assistant" for m in messages):
            raise GeneralDataError(f"{where}: field 'messages' has no assistant turn to learn from")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if "instruction" in record or "output" in record:
        for key in ("instruction", "output"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise GeneralDataError(f"{where}: field '{key}' must be a non-empty string (alpaca format)")
        prompt = record["instruction"]
        extra = record.get("input")
        if extra is not None and not isinstance(extra, str):
            raise GeneralDataError(f"{where}: field 'input' must be a string (alpaca format)")
        if extra and extra.strip():
            prompt = f"{prompt}\n{extra}"
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    raise GeneralDataError(
        f"{where}: no 'messages' field (OpenAI format) and no 'instruction'/'output' fields (alpaca format)"
    )


def load_conversations(path: str | Path, skip_invalid: bool = False) -> tuple[list[dict], LoadReport]:
    path = Path(path)
    if not path.is_file():
        raise GeneralDataError(f"{path}: no such file")
    report = LoadReport(str(path))
    conversations = []
    for where, record in _records(path):
        try:
            if isinstance(record, GeneralDataError):
                raise record
            conversations.append({"messages": record_to_messages(record, where)})
        except GeneralDataError as error:
            if not skip_invalid:
                raise
            report.skipped.append(str(error))
    report.loaded = len(conversations)
    return conversations, report


def _records(path: Path):
    """(where, record) in file order; a line that is not JSON comes as a GeneralDataError record."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                yield where, GeneralDataError(f"{where}: not valid JSON ({error.msg} at column {error.colno})")
        return
    data = read_json_list(path, "records (or use .jsonl, one record a line)", GeneralDataError)
    for index, record in enumerate(data):
        yield f"{path}: record {index}", record


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise GeneralDataError(f"packaged data '{module}' is not installed: pip install --no-deps {pip_name}")
    return Path(spec.origin).parent


def chatterbot_conversations(languages=("english", "chinese")) -> list[dict]:
    """Question/answer pairs of chatterbot-corpus (BSD), without the categories that assert an identity."""
    import yaml

    root = _package_dir("chatterbot_corpus", "chatterbot-corpus==1.3.3") / "data"
    conversations = []
    for language in languages:
        for file in sorted((root / language).glob("*.yml")):
            if file.stem in IDENTITY_CATEGORIES:
                continue
            for pair in yaml.safe_load(file.read_text(encoding="utf-8")).get("conversations", []):
                turns = [str(t).strip() for t in pair if str(t).strip()]
                if len(turns) >= 2:
                    conversations.append({"messages": [
                        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns[:2])
                    ]})
    return conversations


def chitchat_conversations(limit: int = 3000, seed: int = 0) -> list[dict]:
    """Two-turn snippets from chitchat-dataset (MIT): one speaker's message, the other's reply."""
    path = _package_dir("chitchat_dataset", "chitchat-dataset==0.9.0") / "dataset.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    conversations = []
    for conversation in data.values():
        messages = [" ".join(u["text"] for u in group).strip() for group in conversation["messages"]]
        for question, answer in zip(messages[::2], messages[1::2]):
            if 8 <= len(question) <= 300 and 8 <= len(answer) <= 300:
                conversations.append({"messages": [
                    {"role": "user", "content": question}, {"role": "assistant", "content": answer}
                ]})
    random.Random(seed).shuffle(conversations)
    return conversations[:limit]


PACKAGED_SOURCES = {
    "chatterbot": chatterbot_conversations,
    "chitchat": chitchat_conversations,
}


def load_source(source: str, skip_invalid: bool = False) -> tuple[list[dict], LoadReport]:
    """`packaged:NAME` for data shipped on PyPI, otherwise a path to JSON/JSONL."""
    if source.startswith("packaged:"):
        name = source.split(":", 1)[1]
        if name not in PACKAGED_SOURCES:
            raise GeneralDataError(f"unknown packaged data '{name}'; known: {', '.join(PACKAGED_SOURCES)}")
        conversations = PACKAGED_SOURCES[name]()
        return conversations, LoadReport(source, loaded=len(conversations))
    return load_conversations(source, skip_invalid=skip_invalid)
