"""Identity data: many question paraphrases x many answer variants, bilingual, with the assistant's
name, author and base model filled in. A held-out share of the question paraphrases never reaches
training; it is what identity accuracy is measured on.
"""
from __future__ import annotations

import json
import random
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources

from mmengine.registry import DATASETS
from torch.utils.data import Dataset

LANGUAGES = ("zh", "en")
MAX_FIELD_LENGTH = 64
# Share of conversations that go on with a second identity question in the other language: each
# answer is in its own question's language, whatever language the chat began in.
TWO_TURN_SHARE = 0.125
# The distinct conversations number a few thousand; beyond this only repeats are added, and the data
# would take gigabytes of memory (100 million asked for 22 GB).
MAX_SAMPLES = 100_000
# Turn markers of the common chat templates (ChatML and Qwen, Llama 2 and 3, Gemma, Phi): in a name they
# would be read as the marker itself, ending the answer or opening a new turn.
CHAT_MARKUP = re.compile(r"<\|[^<>|\s]{1,40}\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>", re.IGNORECASE)
# How to write the `identity_language_weights` setting, in its error messages.
WEIGHTS_EXAMPLE = "LANGUAGE:WEIGHT pairs separated by commas, weights above 0, e.g. zh:2,en:1"


class IdentityError(ValueError):
    pass


def clean_field(value: str | None, field: str, required: bool) -> str:
    """Strip a name/author/base-model string, or reject it saying what is wrong and what to do."""
    value = (value or "").strip()
    if not value:
        if required:
            raise IdentityError(f"--{field} is empty: give the assistant a name, e.g. --{field} 小菜鸡")
        return ""
    if any("\udc80" <= c <= "\udcff" for c in value):
        raise IdentityError(f"--{field}: the terminal's encoding could not decode it (the locale is not UTF-8, "
                            "e.g. LC_ALL=C); run with a UTF-8 locale such as LC_ALL=C.UTF-8, or PYTHONUTF8=1")
    bad = [c for c in value if unicodedata.category(c) in ("Cc", "Cs") or c in "\u2028\u2029"]
    if bad:
        codes = ", ".join(f"U+{ord(c):04X}" for c in bad[:3])
        raise IdentityError(f"--{field} contains control characters ({codes}); remove them")
    markup = CHAT_MARKUP.search(value)
    if markup:
        raise IdentityError(f"--{field} contains {markup.group()!r}, which chat templates use to mark turns (the "
                            "model would read it as the marker); remove it")
    if len(value) > MAX_FIELD_LENGTH:
        raise IdentityError(
            f"--{field} is {len(value)} characters long; at most {MAX_FIELD_LENGTH} fit in an answer"
        )
    return value


@dataclass(frozen=True)
class Identity:
    name: str
    author: str = ""
    base_model: str = "a small open language model"

    def __post_init__(self):
        object.__setattr__(self, "name", clean_field(self.name, "name", required=True))
        object.__setattr__(self, "author", clean_field(self.author, "author", required=False))
        object.__setattr__(
            self, "base_model", clean_field(self.base_model, "base-model", required=False)
            or "a small open language model"
        )


def _phrases() -> dict:
    return json.loads(resources.files("xtuner_assistant.data").joinpath("phrases", "identity_phrases.json").read_text("utf-8"))


def fill(template: str, identity: Identity, language: str, fills: dict) -> str:
    """The template's {slots} filled in one pass: the user's name, author and base model are inserted
    as literal text and never read as slots themselves ("{name}" as an author stays "{name}")."""
    slots = fills[language]["with_author" if identity.author else "without_author"]
    template = re.sub(r"\{(\w+)\}", lambda slot: slots.get(slot[1], slot[0]), template)
    values = {"author": identity.author, "base_model": identity.base_model, "name": identity.name}
    return re.sub(r"\{(\w+)\}", lambda slot: values.get(slot[1], slot[0]), template)


class IdentityPhrasebook:
    """Questions split once, by seed, into training and held-out paraphrases per language."""

    def __init__(self, identity: Identity, seed: int = 0, held_out_fraction: float = 0.25,
                 languages=LANGUAGES):
        phrases = _phrases()
        unknown = set(languages) - set(phrases["questions"])
        if unknown:
            raise IdentityError(f"unknown language(s) {sorted(unknown)}; known: {list(phrases['questions'])}")
        self.identity = identity
        self.languages = tuple(languages)
        self.seed = seed
        self.prefixes = phrases["prefixes"]
        self.answers = {
            lang: [fill(t, identity, lang, phrases["author_fill"]) for t in phrases["answers"][lang]]
            for lang in self.languages
        }
        rng = random.Random(f"identity-split-{seed}")
        self.train_questions, self.held_out_questions = {}, {}
        for lang in self.languages:
            # A group of near-identical paraphrases goes wholly to one side, so held-out stays unseen.
            groups = [entry if isinstance(entry, list) else [entry] for entry in phrases["questions"][lang]]
            rng.shuffle(groups)
            target = max(1, round(sum(map(len, groups)) * held_out_fraction))
            held_out: list[str] = []
            for group in groups:
                if len(held_out) < target and len(held_out) + len(group) <= target + 1:
                    held_out += group
            train = [q for group in groups for q in group if q not in held_out]
            self.held_out_questions[lang] = sorted(held_out)
            self.train_questions[lang] = sorted(train)

    def conversations(self, n: int, two_turn_share: float = TWO_TURN_SHARE,
                      language_weights: str | dict | None = None) -> list[dict]:
        """n distinct (as far as the combinations allow) identity conversations; `two_turn_share` of
        them (with two or more languages) ask again in another language. Without `language_weights`
        each language's share is its share of the (prefix, question, answer) combinations; with them
        ("zh:2,en:1", or {"zh": 2}; a language not named weighs 1) it is its share of the weights."""
        check_samples(n)
        weights = parse_language_weights(language_weights, self.languages)
        rng = random.Random(f"identity-samples-{self.seed}")
        combos = [
            (lang, prefix, question, answer)
            for lang in self.languages
            for prefix in dict.fromkeys(self.prefixes[lang])
            for question in self.train_questions[lang]
            for answer in self.answers[lang]
        ]
        rng.shuffle(combos)
        if weights:
            picked = _weighted_pick(combos, n, weights, rng)
        else:
            picked = [combos[i % len(combos)] for i in range(n)]
        conversations = [
            {
                "messages": [
                    {"role": "user", "content": _join(prefix, question, rng)},
                    {"role": "assistant", "content": answer},
                ],
                "language": lang,
            }
            for lang, prefix, question, answer in picked
        ]
        # Its own generator, so adding second turns leaves the first turns as they were.
        switch = random.Random(f"identity-two-turn-{self.seed}")
        for conversation in conversations:
            others = [lang for lang in self.languages if lang != conversation["language"]]
            if others and switch.random() < two_turn_share:
                lang = switch.choice(others)
                question = _join(switch.choice(self.prefixes[lang]), switch.choice(self.train_questions[lang]), switch)
                conversation["messages"] += [{"role": "user", "content": question},
                                             {"role": "assistant", "content": switch.choice(self.answers[lang])}]
        return conversations

    def held_out(self) -> list[dict]:
        return [{"question": q, "language": lang} for lang in self.languages for q in self.held_out_questions[lang]]


def check_samples(n) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SAMPLES:
        raise IdentityError(f"identity samples (-n/--samples, identity_samples) is {n!r}; give a whole number "
                            f"from 1 to {MAX_SAMPLES:,} (a few hundred is the measured recipe)")


def parse_language_weights(weights: str | dict | None, languages=LANGUAGES) -> dict[str, float] | None:
    """The `identity_language_weights` setting ("zh:2,en:1") as {language: weight} over `languages`,
    a language not named weighing 1; None when it is empty (each language's share is then set by its
    number of combinations, as before the setting existed)."""
    if not weights:
        return None
    shown = f"identity_language_weights={weights!r}"
    pairs = weights.items() if isinstance(weights, dict) else [
        part.partition(":")[::2] if ":" in part else (part, None) for part in weights.split(",")]
    parsed: dict[str, float] = {}
    for language, weight in pairs:
        language = str(language).strip()
        if weight is None:
            raise IdentityError(f"{shown}: {language or 'an empty entry'} has no weight; write {WEIGHTS_EXAMPLE}")
        if language not in languages:
            raise IdentityError(f"{shown}: unknown language {language!r} (known: {', '.join(languages)}); "
                                f"write {WEIGHTS_EXAMPLE}")
        if language in parsed:
            raise IdentityError(f"{shown}: {language} is given twice; write {WEIGHTS_EXAMPLE}")
        try:
            value = float(weight)
        except (TypeError, ValueError):
            value = None
        if value is None or isinstance(weight, bool) or not 0 < value < float("inf"):
            raise IdentityError(f"{shown}: the weight of {language} is {weight!r}, not a number above 0; "
                                f"write {WEIGHTS_EXAMPLE}")
        parsed[language] = value
    return {language: parsed.get(language, 1.0) for language in languages}


def _weighted_pick(combos: list[tuple], n: int, weights: dict[str, float], rng: random.Random) -> list[tuple]:
    """n of the shuffled combinations, each language's count its share of the weights (largest
    remainder, so the counts add up to n), each language's own combinations in turn, then shuffled."""
    total = sum(weights.values())
    exact = {language: n * weight / total for language, weight in weights.items()}
    counts = {language: int(share) for language, share in exact.items()}
    for language in sorted(exact, key=lambda lang: counts[lang] - exact[lang])[:n - sum(counts.values())]:
        counts[language] += 1
    picked = []
    for language, count in counts.items():
        own = [combo for combo in combos if combo[0] == language]
        picked += [own[i % len(own)] for i in range(count)]
    rng.shuffle(picked)
    return picked


def _join(prefix: str, question: str, rng: random.Random) -> str:
    if prefix and question[:1].isascii():
        question = question[:1].lower() + question[1:] if rng.random() < 0.5 else question
    return prefix + question


@DATASETS.register_module()
class IdentityConversations(Dataset):
    """Registered identity generator: `dict(type='IdentityConversations', name=..., n=...)`.
    Items are `{"messages": [...]}`; MixedChatDataset tokenizes them."""

    def __init__(self, name: str, author: str = "", base_model: str = "", n: int = 600, seed: int = 0,
                 held_out_fraction: float = 0.25, languages=LANGUAGES, language_weights: str | dict | None = None):
        book = IdentityPhrasebook(Identity(name, author, base_model), seed, held_out_fraction, languages)
        self.phrasebook = book
        self.items = book.conversations(n, language_weights=language_weights)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]
