"""The demo's own logic: which held-out questions it shows, how it prints the comparison, and that
`--set identity_samples` sizes the identity data it writes."""
import pytest

from xtuner_assistant.cli import demo
from xtuner_assistant.cli.demo import DemoError, pick_held_out, print_comparison


def test_held_out_questions_alternate_languages():
    held_out = [{"question": f"zh{i}", "language": "zh"} for i in range(3)] + \
               [{"question": f"en{i}", "language": "en"} for i in range(3)]
    assert pick_held_out(held_out, 3) == ["zh0", "en0", "zh1"]
    assert pick_held_out(held_out[:1], 3) == ["zh0"]


def test_comparison_labels_identity_and_general_questions(capsys):
    rows = [{"question": "你是谁", "base": "I am SmolLM", "fine-tuned": "我是小菜鸡"},
            {"question": "Capital of France?", "base": "Paris.", "fine-tuned": "Paris."}]
    print_comparison(rows, held_out_count=1)
    out = capsys.readouterr().out
    assert "[held-out identity question] 你是谁" in out and "fine-tuned : 我是小菜鸡" in out
    assert "[general question] Capital of France?" in out


def test_identity_samples_sizes_the_demos_identity_file(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(demo, "fetch", lambda model_name: tiny_model_dir)
    monkeypatch.setattr(demo, "run_tool", lambda name, args, settings: 1)  # stop after the data is written
    with pytest.raises(DemoError, match="training failed"):
        demo.run_demo("Zorblat", work_dir=tmp_path, settings={"identity_samples": "24"})
    assert len((tmp_path / "data" / "identity.jsonl").read_text(encoding="utf-8").splitlines()) == 24
    with pytest.raises(DemoError, match="identity_samples=many: expected a whole number"):
        demo.run_demo("Zorblat", work_dir=tmp_path, settings={"identity_samples": "many"})
