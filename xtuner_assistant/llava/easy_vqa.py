"""easy-VQA (real images of coloured shapes, real questions; the `easy-vqa` package) as XTuner LLaVA data.

`write_easy_vqa` writes, under one folder:
  images/train/N.png, images/test/N.png   the package's images
  captions.json   stage 1 (projector pretraining): one caption per training image, "A red circle.",
                  derived from that image's own question/answer annotations
  train.json      stage 2 (instruction tuning): the training questions, grouped per image into
                  multi-turn conversations (the image is encoded once for all of its questions)
  test.json       the package's held-out test split, one question per record, with its type
                  (shape, color, yes/no) for `vqa eval`
All three JSON files are XTuner's LLaVA format: [{"id", "image", "conversations": [{"from", "value"}]}].

`repeat_records` is the tutorial's repeat.py: the same records, n times over.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

from xtuner_assistant import progress
from xtuner_assistant.paths import check_output_files, read_json_list, record_outputs, write_json_atomic

SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
ANSWERS = SHAPES + COLORS + ("yes", "no")
QUESTION_TYPES = ("shape", "color", "yes/no")
# Asked after every question, in training and in evaluation alike, so the expected reply is a word.
ANSWER_INSTRUCTION = "Answer with one word."
CAPTION_PROMPT = "Describe the image briefly."


class VQADataError(RuntimeError):
    pass


def question_type(answer: str) -> str:
    if answer in SHAPES:
        return "shape"
    if answer in COLORS:
        return "color"
    if answer in ("yes", "no"):
        return "yes/no"
    raise VQADataError(f"answer {answer!r} is not one of easy-VQA's {len(ANSWERS)} answers")


def easy_vqa_split(split: str) -> tuple[list[tuple[str, str, int]], dict[int, str]]:
    """[(question, answer, image id)] and {image id: png path} of the package's train or test split."""
    try:
        import easy_vqa
    except ImportError:
        raise VQADataError("the easy-VQA data set is not installed. Install it with:\n"
                           "    pip install --no-deps easy-vqa==1.0") from None
    if split == "train":
        texts, answers, image_ids = easy_vqa.get_train_questions()
        images = easy_vqa.get_train_image_paths()
    else:
        texts, answers, image_ids = easy_vqa.get_test_questions()
        images = easy_vqa.get_test_image_paths()
    return list(zip(texts, answers, image_ids)), images


def describe_images(questions: list[tuple[str, str, int]]) -> dict[int, dict[str, str]]:
    """{image id: {"color": .., "shape": ..}} read off each image's own annotations.

    "what color is the shape?" -> blue gives the colour directly; "is there not a red shape?" -> no
    says the shape IS red. An attribute is kept only when the annotations agree on a single value.
    """
    seen: dict[int, dict[str, set]] = defaultdict(lambda: {"color": set(), "shape": set()})
    for text, answer, image_id in questions:
        if answer in SHAPES:
            seen[image_id]["shape"].add(answer)
        elif answer in COLORS:
            seen[image_id]["color"].add(answer)
        else:
            negated = bool(re.search(r"\bnot\b|^is no\b", text))
            if (answer == "yes") != negated:  # the question's word is present in the image
                for word in re.findall(r"[a-z]+", text):
                    if word in SHAPES:
                        seen[image_id]["shape"].add(word)
                    elif word in COLORS:
                        seen[image_id]["color"].add(word)
    return {image_id: {k: next(iter(v)) for k, v in found.items() if len(v) == 1} for image_id, found in seen.items()}


def caption(attributes: dict[str, str]) -> str | None:
    color, shape = attributes.get("color"), attributes.get("shape")
    if color and shape:
        return f"A {color} {shape}."
    if color:
        return f"A {color} shape."
    if shape:
        return f"A {shape}."
    return None


def user_turn(question: str, with_image: bool) -> dict:
    text = f"{question} {ANSWER_INSTRUCTION}"
    return {"from": "human", "value": f"<image>\n{text}" if with_image else text}


def caption_records(descriptions: dict[int, dict[str, str]], split: str = "train") -> list[dict]:
    records = []
    for image_id in sorted(descriptions):
        text = caption(descriptions[image_id])
        if text:
            records.append({"id": f"caption-{split}-{image_id}", "image": f"{split}/{image_id}.png",
                            "conversations": [{"from": "human", "value": f"<image>\n{CAPTION_PROMPT}"},
                                              {"from": "gpt", "value": text}]})
    return records


def instruction_records(questions: list[tuple[str, str, int]], turns: int, seed: int) -> list[dict]:
    """Questions grouped per image, shuffled, `turns` per conversation (0: all of an image's)."""
    by_image: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for text, answer, image_id in questions:
        by_image[image_id].append((text, answer))
    rng = random.Random(seed)
    records = []
    for image_id in sorted(by_image):
        pairs = by_image[image_id]
        rng.shuffle(pairs)
        size = turns or len(pairs)
        for start in range(0, len(pairs), size):
            conversation = []
            for k, (text, answer) in enumerate(pairs[start:start + size]):
                conversation += [user_turn(text, with_image=k == 0), {"from": "gpt", "value": answer}]
            records.append({"id": f"train-{image_id}-{start}", "image": f"train/{image_id}.png",
                            "conversations": conversation})
    rng.shuffle(records)
    return records


def test_records(questions: list[tuple[str, str, int]]) -> list[dict]:
    return [{"id": f"test-{i}", "image": f"test/{image_id}.png", "question": text, "answer": answer,
             "question_type": question_type(answer),
             "conversations": [user_turn(text, with_image=True), {"from": "gpt", "value": answer}]}
            for i, (text, answer, image_id) in enumerate(questions)]


def copy_images(images: dict[int, str], ids, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in progress.bar(iterable=sorted(ids), desc=f"images -> {folder}", unit="img"):
        target = folder / f"{image_id}.png"
        if not target.is_file():
            shutil.copyfile(images[image_id], target)


def write_easy_vqa(out: Path, train_images: int = 0, test_images: int = 0, turns: int = 0, seed: int = 0,
                   force: bool = False) -> dict:
    """Write the four parts described in the module docstring; returns their paths and counts.
    `train_images` / `test_images` keep a seeded random subset of images (0: all). JSON files
    already there are replaced only if xtuner-assistant wrote them (or `force`)."""
    out = Path(out)
    written = [out / name for name in ("captions.json", "train.json", "test.json", "easy_vqa_manifest.json")]
    check_output_files(written, force)
    train, train_paths = easy_vqa_split("train")
    test, test_paths = easy_vqa_split("test")
    rng = random.Random(seed)
    if train_images:
        keep = set(rng.sample(sorted(train_paths), min(train_images, len(train_paths))))
        train = [q for q in train if q[2] in keep]
    if test_images:
        keep = set(rng.sample(sorted(test_paths), min(test_images, len(test_paths))))
        test = [q for q in test if q[2] in keep]
    captions = caption_records(describe_images(train))
    instructions = instruction_records(train, turns, seed)
    tests = test_records(test)
    copy_images(train_paths, {q[2] for q in train}, out / "images" / "train")
    copy_images(test_paths, {q[2] for q in test}, out / "images" / "test")
    paths = {"captions": out / "captions.json", "train": out / "train.json", "test": out / "test.json"}
    write_json_atomic(paths["captions"], captions)
    write_json_atomic(paths["train"], instructions)
    write_json_atomic(paths["test"], tests)
    counts = {"train_images": len({q[2] for q in train}), "train_questions": len(train),
              "caption_count": len(captions), "train_conversations": len(instructions),
              "test_images": len({q[2] for q in test}), "test_questions": len(tests),
              "test_by_type": dict(Counter(r["question_type"] for r in tests))}
    write_json_atomic(out / "easy_vqa_manifest.json", {"source": "easy-vqa==1.0", "seed": seed, **counts})
    record_outputs(written)
    return {"image_folder": out / "images", **paths, **counts}


def load_records(path: Path) -> list[dict]:
    records = read_json_list(path, "LLaVA records", VQADataError)
    if not records:
        raise VQADataError(f"{path}: expected a non-empty JSON list of LLaVA records")
    return records


def repeat_warning(records: list[dict], n: int) -> str | None:
    """What repeating does, said before it is done (None when there is nothing to warn about)."""
    distinct = len({json.dumps(r.get("conversations"), sort_keys=True) for r in records})
    if n <= 1:
        return None
    return (f"repeating {distinct} distinct conversation(s) {n} times gives {len(records) * n} samples but no new "
            "information: the model memorises these answers, and with few distinct samples (the tutorial "
            "repeats ONE image's Q&A 200 times) it tends to give them to every question and every image. "
            "Prefer many different images and questions (`xtuner-assistant vqa data`), and judge the result "
            "on held-out data (`xtuner-assistant vqa eval`), not on the repeated sample.")


def repeat_records(records: list[dict], n: int) -> list[dict]:
    """The tutorial's repeat.py: the list `n` times over, ids made unique."""
    if n < 1:
        raise VQADataError(f"-n {n}: the number of repetitions must be at least 1")
    return [{**record, "id": f"{record.get('id', i)}-{k}"} for k in range(n) for i, record in enumerate(records)]
