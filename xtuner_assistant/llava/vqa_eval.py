"""Accuracy of a LLaVA model on the held-out easy-VQA test split, by question type.

A reply counts as correct when the first easy-VQA answer word it contains is the expected one
("Yes, there is a circle." -> yes), so a model that answers in a sentence is not scored zero
for its style; a reply with no answer word is wrong. The majority baseline answers every question
of a type with that type's most frequent answer in the training data.
"""
from __future__ import annotations

import random
import re
import time
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image

from xtuner_assistant import progress
from xtuner_assistant.llava.easy_vqa import ANSWERS, QUESTION_TYPES, VQADataError, load_records, question_type

SYNONYMS = {"grey": "gray", "square": "rectangle", "oval": "circle"}


def answer_word(reply: str) -> str | None:
    for word in re.findall(r"[a-z]+", reply.lower()):
        word = SYNONYMS.get(word, word)
        if word in ANSWERS:
            return word
    return None


def sample_per_type(records: list[dict], per_type: int, seed: int) -> list[dict]:
    if not per_type:
        return records
    by_type = defaultdict(list)
    for record in records:
        by_type[record["question_type"]].append(record)
    rng = random.Random(seed)
    return [r for t in QUESTION_TYPES for r in rng.sample(by_type[t], min(per_type, len(by_type[t])))]


def majority_answers(train_file: Path) -> dict[str, str]:
    """{question type: most frequent training answer} from the stage-2 train.json."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for record in load_records(train_file):
        for turn in record["conversations"]:
            if turn["from"] == "gpt":
                counts[question_type(turn["value"])][turn["value"]] += 1
    return {t: c.most_common(1)[0][0] for t, c in counts.items()}


def accuracy_by_type(rows: list[dict], key: str) -> dict:
    by_type = defaultdict(list)
    for row in rows:
        by_type[row["question_type"]].append(row[key])
    table = {t: {"accuracy": sum(v) / len(v), "questions": len(v)} for t, v in by_type.items()}
    overall = sum(row[key] for row in rows) / len(rows)
    return {"overall": overall, "by_type": table}


def test_mix(by_type: dict, shares: dict) -> float:
    """Per-type accuracies weighted as the whole test split mixes the types (74 % yes/no), which is
    what `overall` means when every question is scored; with --per-type it differs."""
    return sum(by_type[t]["accuracy"] * shares[t] for t in by_type) / sum(shares[t] for t in by_type)


def evaluate(model, test_file: Path, image_folder: Path, per_type: int = 0, batch_size: int = 16,
             seed: int = 0) -> dict:
    from xtuner_assistant.llava.model import answer

    records = load_records(test_file)
    for index, record in enumerate(records):
        if not {"image", "question", "answer", "question_type"} <= record.keys():
            raise VQADataError(f"{test_file} record {index}: needs image, question, answer and question_type "
                               "(the test.json that `xtuner-assistant vqa data` writes)")
    split_shares = {t: n / len(records) for t, n in Counter(r["question_type"] for r in records).items()}
    records = sample_per_type(records, per_type, seed)
    train_file = Path(test_file).with_name("train.json")
    majority = majority_answers(train_file) if train_file.is_file() else {}
    rows = []
    start = time.monotonic()
    bar = progress.bar(total=len(records), desc="vqa eval", unit="q")
    for first in range(0, len(records), batch_size):
        batch = records[first:first + batch_size]
        images = []
        for record in batch:
            path = Path(image_folder) / record["image"]
            if not path.is_file():
                raise VQADataError(f"{test_file}: image {path} is missing; pass --image-folder")
            images.append(Image.open(path).convert("RGB"))
        prompts = [record["conversations"][0]["value"] for record in batch]
        for record, reply in zip(batch, answer(model, images, prompts, max_new_tokens=12)):
            rows.append({"image": record["image"], "question": record["question"], "answer": record["answer"],
                         "question_type": record["question_type"], "reply": reply,
                         "correct": answer_word(reply) == record["answer"],
                         "majority_correct": majority.get(record["question_type"]) == record["answer"]})
        bar.update(len(batch))
    bar.close()
    report = {"model": str(model.path), "test_file": str(test_file), "questions": len(rows),
              "per_type_sample": per_type, "seed": seed, "seconds": round(time.monotonic() - start, 1),
              **accuracy_by_type(rows, "correct")}
    report["overall_test_mix"] = test_mix(report["by_type"], split_shares)
    if majority:
        baseline = accuracy_by_type(rows, "majority_correct")
        baseline["overall_test_mix"] = test_mix(baseline["by_type"], split_shares)
        report["majority_baseline"] = {"answers": majority, **baseline}
    report["replies"] = rows
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['model']}: {report['questions']} held-out questions, {report['seconds']} s",
             f"{'type':<8} {'questions':>9} {'accuracy':>9}" + ("  majority" if "majority_baseline" in report else "")]
    for t in QUESTION_TYPES:
        if t not in report["by_type"]:
            continue
        row = report["by_type"][t]
        line = f"{t:<8} {row['questions']:>9} {row['accuracy']:>9.3f}"
        if "majority_baseline" in report:
            line += f"  {report['majority_baseline']['by_type'][t]['accuracy']:>8.3f}"
        lines.append(line)
    overall = f"{'overall':<8} {report['questions']:>9} {report['overall']:>9.3f}"
    if "majority_baseline" in report:
        overall += f"  {report['majority_baseline']['overall']:>8.3f}"
    lines.append(overall)
    mixed = f"{'test mix':<8} {'':>9} {report['overall_test_mix']:>9.3f}"
    if "majority_baseline" in report:
        mixed += f"  {report['majority_baseline']['overall_test_mix']:>8.3f}"
    lines.append(mixed)
    return "\n".join(lines)
