"""Identity data on disk: training conversations (JSONL, OpenAI messages) and the held-out questions
(JSON), written atomically side by side with what made them."""
from __future__ import annotations

from pathlib import Path

from xtuner_assistant.data.identity import Identity, IdentityPhrasebook, check_samples
from xtuner_assistant.paths import check_output_files, record_outputs, write_json_atomic, write_jsonl_atomic

TRAIN_FILE = "identity.jsonl"
HELD_OUT_FILE = "identity_held_out.json"
# The CPU config's identity_samples: with 1:1 general data and half as much replay, the size that kept
# held-out identity and left the least leakage of the sizes measured (docs/BENCHMARKS.md).
DEFAULT_SAMPLES = 512


def write_identity_files(out: Path, name: str, author: str = "", base_model: str = "", samples: int = DEFAULT_SAMPLES,
                         seed: int = 0, languages=("zh", "en"), force: bool = False) -> dict[str, Path]:
    """Both files, replacing earlier ones only if xtuner-assistant wrote them (or `force`)."""
    check_samples(samples)
    identity = Identity(name, author, base_model)
    book = IdentityPhrasebook(identity, seed=seed, languages=languages)
    conversations = book.conversations(samples)
    paths = {"train": out / TRAIN_FILE, "held_out": out / HELD_OUT_FILE}
    check_output_files(paths.values(), force)
    write_jsonl_atomic(paths["train"], conversations)
    write_json_atomic(paths["held_out"], {
        "identity": {"name": identity.name, "author": identity.author, "base_model": identity.base_model},
        "seed": seed,
        "questions": book.held_out(),
    })
    record_outputs(paths.values())
    return paths
