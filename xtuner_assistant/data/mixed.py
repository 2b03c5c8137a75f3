"""The mixed dataset: identity conversations mixed with general chat at a stated ratio, tokenized
with the model's own chat template (chat_template.py). Registered as `MixedChatDataset`."""
from __future__ import annotations

import random
import re
from pathlib import Path

from mmengine.logging import print_log
from mmengine.registry import DATASETS
from torch.utils.data import Dataset

from xtuner_assistant.chat_template import (IGNORE_INDEX, ChatTemplateError, check_plain_text, encode_conversation,
                                            require_chat_template)
from xtuner_assistant.data.general import LoadReport, load_conversations, load_source, split_sources


class MixError(ValueError):
    """A mix that its sources cannot fill: one line, no traceback."""


DEFAULT_GENERAL = ("packaged:chatterbot", "packaged:chitchat")


def build_component(cfg, registry_name: str):
    """Configs hand us dicts; tests hand us objects."""
    if not isinstance(cfg, dict):
        return cfg
    if registry_name == "tokenizer":
        from xtuner.registry import BUILDER

        return BUILDER.build(cfg)
    return DATASETS.build(cfg)


def load_identity(identity, tokenizer) -> list[dict]:
    if isinstance(identity, (str, Path)):
        conversations, report = load_conversations(identity)
        return plain_text_only(tokenizer, conversations, report)
    conversations = list(build_component(identity, "dataset"))
    return plain_text_only(tokenizer, conversations, LoadReport("the identity conversations made from the name, "
                                                                "author and base model"))


def plain_text_only(tokenizer, conversations: list[dict], report: LoadReport, skip_invalid: bool = False) -> list[dict]:
    """The conversations whose text holds none of the tokenizer's control tokens. One that does is
    refused, named by file and line (skipped and reported instead with skip_invalid)."""
    kept = []
    for index, conversation in enumerate(conversations):
        try:
            check_plain_text(tokenizer, conversation["messages"])
        except ChatTemplateError as error:
            where = report.places[index] if index < len(report.places) else f"{report.source}, conversation {index + 1}"
            if not skip_invalid:
                raise MixError(f"{where}: {error}") from None
            report.skipped.append(f"{where}: {error}")
            report.loaded -= 1
            continue
        kept.append(conversation)
    return kept


@DATASETS.register_module()
class MixedChatDataset(Dataset):
    """`general_ratio` general conversations per identity conversation (0 = identity only).

    identity: an IdentityConversations config dict, or a JSON/JSONL file of conversations.
    general: sources for general chat: `packaged:NAME` or JSON/JSONL paths (OpenAI or alpaca), as a
      list or one comma-separated string (a path holding a comma is kept whole when it exists).
    replay: optional JSONL of the base model's own answers (its own knowledge, kept on purpose).
    general_turn_share: this share of single-turn identity conversations get one general turn (from
    the general and replay sources, either language) before or after the identity question.
    Every user turn, whatever its source, ends as people type it: with its punctuation, or
    (`BARE_ENDING_SHARE` of them) without (`_with_varied_endings`).
    contrast_ratio: contrast rows per identity conversation, language by language: a general question
    followed by an identity answer whose first `CONTRAST_TOKENS` tokens are `unlikely_labels`, for
    `training/contrast_finetune.py`'s unlikelihood term (0 = none).
    contrast_name: when given, a contrast row marks the tokens that spell this name in its answer (where
    a leak names the assistant) instead of the answer's opening (which it shares with many answers).
    """

    def __init__(self, tokenizer, identity, general=DEFAULT_GENERAL, general_ratio: float = 1.0,
                 replay=None, replay_ratio: float = 0.0, max_length: int = 512, seed: int = 0,
                 skip_invalid: bool = False, general_turn_share: float = 0.0, contrast_ratio: float = 0.0,
                 contrast_name: str | None = None):
        tokenizer = build_component(tokenizer, "tokenizer")
        require_chat_template(tokenizer)
        rng = random.Random(f"mix-{seed}")
        identity_conversations = load_identity(identity, tokenizer)
        self.report = {"identity": len(identity_conversations), "sources": []}
        general_pool = []
        for source in split_sources(general):
            conversations, report = load_source(str(source), skip_invalid=skip_invalid)
            general_pool += plain_text_only(tokenizer, conversations, report, skip_invalid)
            self.report["sources"].append(report.summary())
        mixed = [("identity", c) for c in identity_conversations]
        mixed += [("general", c) for c in _draw_like(identity_conversations, general_pool, general_ratio, rng, self.report, "general")]
        replayed = []
        if replay:
            replayed, report = load_conversations(replay)
            replayed = plain_text_only(tokenizer, replayed, report, skip_invalid=True)
            self.report["sources"].append(report.summary())
            mixed += [("replay", c) for c in _draw_like(identity_conversations, replayed, replay_ratio, rng, self.report, "replay")]
        if contrast_ratio:
            mixed += _contrast_conversations(identity_conversations, general_pool + replayed, contrast_ratio, rng,
                                             self.report)
        if general_turn_share:
            mixed = _with_general_turns(mixed, general_pool + replayed, general_turn_share, seed, self.report)
        mixed = _with_varied_endings(mixed, seed, self.report)
        rng.shuffle(mixed)
        self.items, self.kinds = [], []
        truncated = unlearnable = 0
        for kind, conversation in mixed:
            encoded = encode_conversation(tokenizer, conversation["messages"], max_length=10**9)
            if len(encoded["input_ids"]) > max_length:
                truncated += 1
                encoded = {key: value[:max_length] for key, value in encoded.items()}
            if kind == "contrast":
                encoded = _as_contrast(encoded, tokenizer, contrast_name)
            if all(label == IGNORE_INDEX for label in encoded.get("unlikely_labels", encoded["labels"])):
                unlearnable += 1
                continue
            self.items.append(encoded)
            self.kinds.append(kind)
        self.report.update(
            total=len(self.items),
            truncated_to_max_length=truncated,
            skipped_no_answer_within_max_length=unlearnable,
            real_tokens=sum(len(i["input_ids"]) for i in self.items),
        )
        print_log(f"MixedChatDataset: {self.report}", logger="current")

    @property
    def length(self) -> list[int]:
        """Token counts, for xtuner's LengthGroupedSampler: batches of similar length pad less."""
        return [len(item["input_ids"]) for item in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def language_of(conversation: dict) -> str:
    """'zh' when the first user turn has CJK characters, else 'en': enough to balance a bilingual mix."""
    text = next((m["content"] for m in conversation["messages"] if m["role"] == "user"), "")
    return "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"


def _draw_like(identity: list, pool: list, ratio: float, rng: random.Random, report: dict, kind: str) -> list:
    """`ratio` pool conversations per identity conversation, language by language.

    Drawing general chat in the identity data's language mix matters: with too little general data in
    one language, every question in that language starts to get the identity answer (leakage).
    A language the pool lacks falls back to the whole pool, and the report says so.
    """
    by_language: dict[str, list] = {}
    for conversation in pool:
        by_language.setdefault(language_of(conversation), []).append(conversation)
    wanted: dict[str, int] = {}
    for conversation in identity:
        language = language_of(conversation)
        wanted[language] = wanted.get(language, 0) + 1
    drawn = []
    for language, count in sorted(wanted.items()):
        source = by_language.get(language)
        if not source:
            report.setdefault(f"{kind}_language_fallback", []).append(language)
            source = pool
        drawn += _draw(source, round(count * ratio), rng, report, f"{kind}_{language}")
    return drawn


def _draw(pool: list, count: int, rng: random.Random, report: dict, kind: str) -> list:
    """`count` items without repeats while the pool lasts; repeats are counted in the report."""
    if count <= 0:
        return []
    if not pool:
        raise MixError(f"the mix asks for {count} {kind} conversations but their sources are empty")
    shuffled = pool[:]
    rng.shuffle(shuffled)
    drawn = [shuffled[i % len(shuffled)] for i in range(count)]
    report[f"{kind}_drawn"] = count
    report[f"{kind}_repeated"] = max(0, count - len(pool))
    return drawn


def _single_turns_by_language(pool: list) -> dict[str, list]:
    """The pool's one-question, one-answer conversations, by language (in pool order)."""
    by_language: dict[str, list] = {}
    for conversation in pool:
        if [m["role"] for m in conversation["messages"]] == ["user", "assistant"]:
            by_language.setdefault(language_of(conversation), []).append(conversation)
    return by_language


def _with_general_turns(mixed: list, pool: list, share: float, seed: int, report: dict) -> list:
    """Some identity conversations get a general question and answer before or after them, half of
    them in the other language: the name is the answer to the identity question only, and each
    answer is in the language of its own question, whatever came earlier in the chat."""
    by_language = _single_turns_by_language(pool)
    if not by_language:
        return mixed
    rng = random.Random(f"general-turns-{seed}")  # its own, so the rest of the mix stays as it was
    languages = sorted(by_language)
    result, added = [], 0
    for kind, conversation in mixed:
        if kind == "identity" and len(conversation["messages"]) == 2 and rng.random() < share:
            general = rng.choice(by_language[rng.choice(languages)])["messages"]
            messages = general + conversation["messages"] if rng.random() < 0.5 else conversation["messages"] + general
            conversation, added = {**conversation, "messages": messages}, added + 1
        result.append((kind, conversation))
    report["identity_with_general_turn"] = added
    return result


CONTRAST_TOKENS = 6  # of an identity answer, made unlikely after a general question: where a leak starts


def _contrast_conversations(identity: list, pool: list, ratio: float, rng: random.Random, report: dict) -> list:
    """`ratio` contrast conversations per identity conversation, language by language: a single-turn
    general question of that language answered with one of that language's identity answers."""
    questions = {language: [c["messages"][0] for c in conversations]
                 for language, conversations in _single_turns_by_language(pool).items()}
    answers: dict[str, list] = {}
    for conversation in identity:
        answers.setdefault(language_of(conversation), []).append(conversation["messages"][-1])
    drawn = []
    for language in sorted(answers):
        count = round(len(answers[language]) * ratio)
        if not questions.get(language):
            report.setdefault("contrast_language_missing", []).append(language)
            continue
        for question in _draw(questions[language], count, rng, report, f"contrast_{language}"):
            drawn.append(("contrast", {"messages": [question, rng.choice(answers[language])]}))
    return drawn


def _as_contrast(encoded: dict, tokenizer, name: str | None = None) -> dict:
    """Nothing is learned as likely; `unlikely_labels` marks the answer tokens that spell `name` (found
    by the characters they decode to), or the answer's first CONTRAST_TOKENS when no name is given or
    the answer does not spell it."""
    labels = encoded["labels"]
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    marked = range(start, min(start + CONTRAST_TOKENS, len(labels)))
    if name:
        marked = _tokens_spelling(labels, start, tokenizer, name) or marked
    unlikely = [IGNORE_INDEX] * len(labels)
    for i in marked:
        unlikely[i] = labels[i]
    return {"input_ids": encoded["input_ids"], "labels": [IGNORE_INDEX] * len(labels), "unlikely_labels": unlikely}


def _tokens_spelling(labels: list, start: int, tokenizer, name: str) -> list:
    """Positions of the answer's tokens (labels from `start` on) whose text overlaps the first place it
    spells `name` (case-insensitive), or [] when it does not. Byte-level tokens need not end on a
    character: a token spans from the characters complete before it to those complete after it, plus
    the one it leaves unfinished (a decoded prefix ends in U+FFFD there)."""
    answer = [label for label in labels[start:] if label != IGNORE_INDEX]
    begin = tokenizer.decode(answer).casefold().find(name.casefold())
    if begin < 0:
        return []
    finish, marked, done = begin + len(name), [], 0
    for k in range(len(answer)):
        if done >= finish:  # the name is spelled: later prefixes need no decoding
            break
        text = tokenizer.decode(answer[:k + 1])
        complete = len(text.rstrip("\ufffd"))
        if complete + (complete < len(text)) > begin:
            marked.append(start + k)
        done = complete
    return marked


BARE_ENDING_SHARE = 0.3  # of user turns, from every source, that end without punctuation
ASCII_QUESTION_MARK_SHARE = 0.15  # of Chinese questions that end in "?" rather than "？"
# what a user turn loses when it ends bare (bench/leak_probe.py asks its "bare" sets the same way)
CLOSING_PUNCTUATION = re.compile(r"[\s?？.。!！~～]+$")


def _with_varied_endings(mixed: list, seed: int, report: dict) -> list:
    """Every user turn of every source ends the same ways with the same chances: its own punctuation,
    none, or for a Chinese question a half-width "?". Otherwise the end of a question can tell the
    model where it came from (a phrasebook without punctuation beside general chat that has it) and
    it learns that cue instead of what was asked; users end questions every way."""
    rng = random.Random(f"question-endings-{seed}")  # its own, so the rest of the mix stays as it was
    result, bare = [], 0
    for kind, conversation in mixed:
        messages = []
        for message in conversation["messages"]:
            text = message["content"]
            if message["role"] == "user" and isinstance(text, str) and text.strip():
                if rng.random() < BARE_ENDING_SHARE:
                    stripped = CLOSING_PUNCTUATION.sub("", text)
                    text, bare = (stripped, bare + 1) if stripped else (text, bare)
                elif text.endswith("？") and rng.random() < ASCII_QUESTION_MARK_SHARE:
                    text = text[:-1] + "?"
                message = {**message, "content": text}
            messages.append(message)
        result.append((kind, {**conversation, "messages": messages}))
    report["user_turns_without_end_punctuation"] = bare
    return result
