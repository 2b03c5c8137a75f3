"""What "identity without collapse" means, as numbers: pure functions on answer strings.

- identity accuracy: held-out identity questions whose answer carries the new name;
- leakage: general answers that carry the name or an identity sentence;
- repetition: answers that loop (the same n-gram over and over) or run away to the length limit;
- collapse: different general prompts getting the same answer;
- retention: how close general answers stay to the base model's own answers, and whether the
  simple facts the base model got right are still right.

Text is compared in "units" (a CJK character, or a run of letters/digits) so one rule serves
Chinese and English alike.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNIT = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")

# An answer loops when, in its n-grams of this size, at least this share are repeats of earlier ones.
LOOP_NGRAM = 4
LOOP_REPEATED_SHARE = 0.5
LOOP_MIN_UNITS = 12
# An identity sentence counts as leaked into a general answer when this share of its unit bigrams
# appears in the answer.
LEAK_CONTAINMENT = 0.6
# How many leading units decide that two answers are "the same answer" (greedy answers that begin
# identically continue identically, so the head is enough and tolerates a cut-off tail).
SAME_ANSWER_UNITS = 24


def units(text: str) -> list[str]:
    return [u.lower() for u in _UNIT.findall(text or "")]


def _ngrams(items: list[str], n: int) -> list[tuple]:
    return [tuple(items[i:i + n]) for i in range(len(items) - n + 1)]


def _bigrams(text: str) -> Counter:
    joined = "".join(units(text))
    return Counter(joined[i:i + 2] for i in range(len(joined) - 1))


def repeated_ngram_share(answer: str, n: int = LOOP_NGRAM) -> float:
    """Share of the answer's n-grams that already occurred earlier in it (0 = no repeats)."""
    grams = _ngrams(units(answer), n)
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def repeated_character_share(answer: str, n: int = 2 * LOOP_NGRAM) -> float:
    """The same on characters (spaces aside), for loops inside one "word" ("tttttttt", "哈哈哈哈")
    and of symbols that are no words at all ("👏👏👏👏", "・・・・")."""
    text = re.sub(r"\s+", "", answer or "")
    grams = [text[i:i + n] for i in range(len(text) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def loops(answer: str, n: int = LOOP_NGRAM, threshold: float = LOOP_REPEATED_SHARE,
          min_units: int = LOOP_MIN_UNITS) -> bool:
    """True when the answer repeats itself: half or more of its n-grams (of units, or of
    characters) are repeats of earlier ones."""
    if len(units(answer)) >= min_units and repeated_ngram_share(answer, n) >= threshold:
        return True
    return len(re.sub(r"\s+", "", answer or "")) >= 3 * min_units and repeated_character_share(answer) >= threshold


def repetition_rate(answers: list[str], hit_length_limit: list[bool] | None = None) -> float:
    """Share of answers that loop, or that ran to the generation length limit without ending
    (a runaway answer), when `hit_length_limit` says which did."""
    if not answers:
        return 0.0
    limits = hit_length_limit or [False] * len(answers)
    return sum(loops(a) or bool(h) for a, h in zip(answers, limits)) / len(answers)


def same_answer_key(answer: str, head_units: int = SAME_ANSWER_UNITS) -> str:
    return " ".join(units(answer)[:head_units])


def collapse_rate(answers: list[str]) -> float:
    """0 when every prompt got its own answer, 1 when all prompts got the same one:
    (answers - distinct answers) / (answers - 1)."""
    if len(answers) < 2:
        return 0.0
    distinct = len({same_answer_key(a) for a in answers})
    return (len(answers) - distinct) / (len(answers) - 1)


def carries_name(answer: str, name: str) -> bool:
    return bool(name) and name.casefold() in (answer or "").casefold()


def identity_accuracy(answers: list[str], name: str) -> float:
    if not answers:
        return 0.0
    return sum(carries_name(a, name) for a in answers) / len(answers)


def _unit_bigrams(text: str) -> Counter:
    items = units(text)
    return Counter(zip(items, items[1:]))


def containment(part: str, whole: str) -> float:
    """Share of `part`'s unit bigrams (pairs of words, or of CJK characters) found in `whole`
    (1 = all of it is in there). Word pairs, not letter pairs: a long English answer contains
    most letter pairs of any sentence."""
    needle, haystack = _unit_bigrams(part), _unit_bigrams(whole)
    total = sum(needle.values())
    if not total:
        return 0.0
    return sum(min(count, haystack[gram]) for gram, count in needle.items()) / total


def leaks(answer: str, name: str, identity_sentences: list[str] = (),
          threshold: float = LEAK_CONTAINMENT) -> bool:
    """True when a general answer says the assistant's name or recites an identity sentence."""
    if carries_name(answer, name):
        return True
    return any(containment(sentence, answer) >= threshold for sentence in identity_sentences)


def leakage(answers: list[str], name: str, identity_sentences: list[str] = ()) -> float:
    if not answers:
        return 0.0
    return sum(leaks(a, name, identity_sentences) for a in answers) / len(answers)


def similarity(a: str, b: str) -> float:
    """Character-bigram F1 of two answers (1 = same text, 0 = nothing in common)."""
    x, y = _bigrams(a), _bigrams(b)
    if not x and not y:
        return 1.0
    common = sum((x & y).values())
    if not common:
        return 0.0
    precision, recall = common / sum(x.values()), common / sum(y.values())
    return 2 * precision * recall / (precision + recall)


def retention(answers: list[str], base_answers: list[str]) -> float:
    """Mean similarity of each general answer to the base model's answer to the same prompt."""
    if len(answers) != len(base_answers):
        raise ValueError(f"retention needs one base answer per answer: {len(answers)} answers, "
                         f"{len(base_answers)} base answers")
    if not answers:
        return 1.0
    return sum(similarity(a, b) for a, b in zip(answers, base_answers)) / len(answers)


def answers_fact(answer: str, accepted: list[str]) -> bool:
    folded = (answer or "").casefold()
    return any(str(option).casefold() in folded for option in accepted)


def fact_retention(answers: list[str], base_answers: list[str], accepted: list[list[str]]) -> float | None:
    """Of the facts the base model answered right, the share still answered right.
    None when the base model got none right (nothing to keep)."""
    kept = known = 0
    for answer, base, options in zip(answers, base_answers, accepted):
        if answers_fact(base, options):
            known += 1
            kept += answers_fact(answer, options)
    return kept / known if known else None


@dataclass(frozen=True)
class Thresholds:
    """When an evaluation counts as collapsed/looping (for early stopping): collapse at or above
    `collapse`, or repetition at or above `repetition` AND more than `repetition_margin` above the
    base model's own (a small base model loops on some prompts before any training)."""
    collapse: float = 0.5
    repetition: float = 0.3
    repetition_margin: float = 0.1


def unhealthy(scores: dict, thresholds: Thresholds = Thresholds(), base_scores: dict | None = None) -> list[str]:
    """Why an evaluation counts as collapsed or looping (empty when it does not)."""
    reasons = []
    if scores["collapse"] >= thresholds.collapse:
        reasons.append(f"general answers collapsed (collapse {scores['collapse']:.2f} >= {thresholds.collapse})")
    base_repetition = base_scores["repetition"] if base_scores else 0.0
    if (scores["repetition"] >= thresholds.repetition
            and scores["repetition"] > base_repetition + thresholds.repetition_margin):
        reasons.append(f"answers loop (repetition {scores['repetition']:.2f} >= {thresholds.repetition}, "
                       f"base model {base_repetition:.2f})")
    return reasons


def combined_score(scores: dict) -> float:
    """The rule the best checkpoint is chosen by (higher is better):

        identity_accuracy + retention - leakage - repetition - collapse

    Identity accuracy is the goal; the other four are the damage done getting there, each on the
    same 0..1 scale, so a checkpoint that says its name but answers every question with it loses
    to one a little less sure of its name that still answers the questions.
    """
    return (scores["identity_accuracy"] + scores["retention"] - scores["leakage"]
            - scores["repetition"] - scores["collapse"])
