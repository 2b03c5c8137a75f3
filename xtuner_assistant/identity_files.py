"""Identity data on disk: training conversations (JSONL, OpenAI messages) and the held-out questions
(JSON), written atomically side by side with what made them."""
from __future__ import annotations

from pathlib import Path

from xtuner_assistant.identity import Identity, IdentityPhrasebook
from xtuner_assistant.paths import write_json_atomic, write_jsonl_atomic

TRAIN_FILE = "identity.jsonl"
HELD_OUT_FILE = "identity_held_out.json"
# With 1:1 general data this is one epoch of 60 batches of 8: enough for held-out identity accuracy
# 1.0 on SmolLM2-135M after 25 batches (docs/BENCHMARKS.md), and a demo under 20 minutes on 2 cores.
DEFAULT_SAMPLES = 240


def write_identity_files(out: Path, name: str, author: str = "", base_model: str = "", samples: int = DEFAULT_SAMPLES,
                         seed: int = 0, languages=("zh", "en")) -> dict[str, Path]:
    if samples < 1:
        raise ValueError(f"--samples must be at least 1, got {samples}")
    identity = Identity(name, author, base_model)
    book = IdentityPhrasebook(identity, seed=seed, languages=languages)
    conversations = book.conversations(samples)
    paths = {"train": out / TRAIN_FILE, "held_out": out / HELD_OUT_FILE}
    write_jsonl_atomic(paths["train"], conversations)
    write_json_atomic(paths["held_out"], {
        "identity": {"name": identity.name, "author": identity.author, "base_model": identity.base_model},
        "seed": seed,
        "questions": book.held_out(),
    })
    return paths
