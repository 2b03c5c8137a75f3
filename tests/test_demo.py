"""The demo's own logic: which held-out questions it shows, and how it prints the comparison."""
from xtuner_assistant.demo import pick_held_out, print_comparison


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
