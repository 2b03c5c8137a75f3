"""One identity evaluation: which prompts are asked, how the answers are scored, and how they are
written for a person to read. Shared by the training hook (evaluation/hook.py) and
`xtuner-assistant eval`, so a score during training and a score of a merged model mean the same.

Prompts: the held-out identity questions of the phrasebook (never trained on, same name/seed/split
as the training data) and the general prompts and facts of evaluation/general_prompts.json.
"""
from __future__ import annotations

import json
from importlib import resources

from xtuner_assistant.data.identity import LANGUAGES, Identity, IdentityPhrasebook
from xtuner_assistant.evaluation import metrics, records

DEFAULT_MAX_NEW_TOKENS = 64


def general_eval_prompts() -> list[dict]:
    """General prompts never trained on: {prompt, language, accepted} (accepted is None unless a fact)."""
    pool = json.loads(resources.files("xtuner_assistant.evaluation").joinpath("general_prompts.json")
                      .read_text("utf-8"))
    items = [{"prompt": p, "language": language, "accepted": None}
             for language in pool["eval"] for p in pool["eval"][language]]
    items += [{"prompt": f["prompt"], "language": f["language"], "accepted": f["accepted"]} for f in pool["facts"]]
    return items


class IdentityEvaluation:
    def __init__(self, name: str, author: str = "", base_model: str = "", seed: int = 0,
                 held_out_fraction: float = 0.25, languages=LANGUAGES, identity_sentences=(),
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 0):
        self.phrasebook = IdentityPhrasebook(Identity(name, author, base_model), seed, held_out_fraction, languages)
        self.name = self.phrasebook.identity.name
        self.identity_items = self.phrasebook.held_out()
        self.identity_sentences = [a for lang in self.phrasebook.languages for a in self.phrasebook.answers[lang]]
        self.identity_sentences += list(identity_sentences)
        self.general_items = general_eval_prompts()
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size  # 0: generation's BATCH_SIZE (the held-out prompts in one batch)

    @property
    def identity_prompts(self) -> list[str]:
        return [item["question"] for item in self.identity_items]

    @property
    def general_prompts(self) -> list[str]:
        return [item["prompt"] for item in self.general_items]

    def generator(self, model, tokenizer):
        """`generate(prompts, max_new_tokens) -> answers`: greedy, in the model's chat template."""
        from xtuner_assistant.models.generation import BATCH_SIZE, replies

        def generate(prompts, max_new_tokens):
            return replies(model, tokenizer, prompts, batch_size=self.batch_size or BATCH_SIZE,
                           max_new_tokens=max_new_tokens)

        return generate

    def score(self, identity_answers: list[str], general_answers: list[str], base_answers: list[str] | None) -> dict:
        """All metrics; retention and fact retention are None without the base model's answers."""
        return score_record(self.answers_record(identity_answers, general_answers, base_answers))

    def answers_record(self, identity_answers, general_answers, base_answers) -> dict:
        base_answers = base_answers or [None] * len(general_answers)
        return {
            "name": self.name,
            "identity_sentences": self.identity_sentences,
            "identity": [dict(item, answer=a) for item, a in zip(self.identity_items, identity_answers)],
            "general": [dict(item, answer=a, base=b)
                        for item, a, b in zip(self.general_items, general_answers, base_answers)],
        }

    def readable(self, title: str, scores: dict, identity_answers, general_answers, base_answers) -> str:
        lines = [f"# {title}", json.dumps(scores, ensure_ascii=False), "",
                 "## held-out identity questions ([NAME] = carries the name)"]
        for item, answer in zip(self.identity_items, identity_answers):
            flags = ("[NAME]" if metrics.carries_name(answer, self.name) else "[----]") + (
                " [LOOP]" if metrics.loops(answer) else "")
            lines += [f"Q ({item['language']}): {item['question']}", f"A {flags}: {answer}", ""]
        lines.append("## general prompts ([LEAK] = says the name or an identity sentence; base = base model's answer)")
        for item, answer, base in zip(self.general_items, general_answers, base_answers or [None] * len(general_answers)):
            flags = [label for label, hit in (("[LEAK]", metrics.leaks(answer, self.name, self.identity_sentences)),
                                              ("[LOOP]", metrics.loops(answer))) if hit]
            if item["accepted"]:
                flags.append("[FACT ok]" if metrics.answers_fact(answer, item["accepted"]) else "[FACT wrong]")
            lines += [f"Q ({item['language']}): {item['prompt']}", f"A {' '.join(flags)}: {answer}"]
            lines += [f"base: {base}", ""] if base is not None else [""]
        return "\n".join(lines)


def score_record(record: dict) -> dict:
    """Scores from saved answers (an `answers_record`, as in identity_eval/iter_NNNNNN.json), so any
    evaluation can be scored again with the current metrics.

    An answer that merely fills the length budget is not counted as repetition: small base models
    are verbose, and a real runaway loops, which `metrics.loops` sees within the budget."""
    name, sentences = record["name"], record.get("identity_sentences", [])
    identity, general = record["identity"], record["general"]
    identity_answers = [i["answer"] for i in identity]
    general_answers = [g["answer"] for g in general]
    scores = {"identity_accuracy": metrics.identity_accuracy(identity_answers, name)}
    for language in dict.fromkeys(i["language"] for i in identity):
        answers = [i["answer"] for i in identity if i["language"] == language]
        scores[f"identity_accuracy_{language}"] = metrics.identity_accuracy(answers, name)
    scores.update(
        leakage=metrics.leakage(general_answers, name, sentences),
        repetition=metrics.repetition_rate(identity_answers + general_answers),
        collapse=metrics.collapse_rate(general_answers),
        retention=None, fact_retention=None, combined=None,
    )
    if general and all(g.get("base") is not None for g in general):
        base_answers = [g["base"] for g in general]
        scores["retention"] = metrics.retention(general_answers, base_answers)
        facts = [(g["answer"], g["base"], g["accepted"]) for g in general if g.get("accepted")]
        scores["fact_retention"] = metrics.fact_retention(*map(list, zip(*facts))) if facts else None
        scores["combined"] = metrics.combined_score(scores)
    return scores


def rescored_history(work_dir) -> list[dict]:
    """Every evaluation of a run (identity_eval/iter_*.json) scored again with the current metrics;
    eval_seconds kept from history.jsonl."""
    seconds = {}
    if records.history_file(work_dir).is_file():
        seconds = {entry["iter"]: entry.get("eval_seconds") for entry in records.read_history(work_dir)}
    history = []
    for path in sorted(records.eval_dir(work_dir).glob("iter_*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        history.append({"iter": record["iter"], **score_record(record), "eval_seconds": seconds.get(record["iter"])})
    return sorted(history, key=lambda h: h["iter"])
