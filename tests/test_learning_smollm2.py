"""The claim that matters, on the real SmolLM2-135M-Instruct: after `xtuner train` with identity data
and the merge, the model answers held-out identity questions (never seen in training) with its new
name, in both languages, while the base model never says that name."""
import json
from pathlib import Path

import pytest

from xtuner_assistant.data.identity_files import write_identity_files
from xtuner_assistant.models.fetch import fetch
from xtuner_assistant.models.generation import load_chat_model, replies
from xtuner_assistant.training.export import checkpoint_to_adapter, merge_adapter
from xtuner_assistant.training.xtuner_tools import run_tool

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2_135m_lora_cpu_assistant.py"
NAME = "Zorblat"  # a name the base model has no reason to say


@pytest.mark.slow
def test_real_model_names_itself_on_held_out_questions(tmp_path):
    base = fetch("smollm2-135m")
    paths = write_identity_files(tmp_path / "data", NAME, "Mira", "SmolLM2-135M-Instruct", samples=200, seed=7)
    # Replay off: this claim is about learning the name, which 200 conversations show without it; the
    # shipped replay adds ~3 min of base-model answers on a fresh CI machine and a quarter more steps.
    status = run_tool("train", [str(CONFIG), "--work-dir", str(tmp_path / "train")], {
        "model": str(base), "identity_file": str(paths["train"]), "name": NAME, "max_epochs": "1",
        "replay_ratio": "0"})
    assert status == 0
    merged = tmp_path / "merged"
    merge_adapter(checkpoint_to_adapter(tmp_path / "train", tmp_path / "adapter"), merged, base)

    held_out = json.loads(paths["held_out"].read_text(encoding="utf-8"))["questions"]
    questions = {lang: [q["question"] for q in held_out if q["language"] == lang][:4] for lang in ("zh", "en")}
    trained_questions = {json.loads(line)["messages"][0]["content"] for line in paths["train"].read_text().splitlines()}
    assert not trained_questions & set(questions["zh"] + questions["en"])

    model, tokenizer = load_chat_model(merged, device="cpu")
    base_model, base_tokenizer = load_chat_model(base, device="cpu")
    for lang, asked in questions.items():
        answers = replies(model, tokenizer, asked, max_new_tokens=48)
        named = [a for a in answers if NAME in a]
        assert len(named) >= len(asked) // 2 + 1, f"{lang}: {list(zip(asked, answers))}"
        assert not any(NAME in a for a in replies(base_model, base_tokenizer, asked, max_new_tokens=48))
