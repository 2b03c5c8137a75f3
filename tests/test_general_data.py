"""General chat data: both formats load; every malformed record is named by file, line and field."""
import json

import pytest

from xtuner_assistant.data.general import (GeneralDataError, chatterbot_conversations, load_conversations,
                                           load_source)


def write_jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records))
    return path


GOOD_OPENAI = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
GOOD_ALPACA = {"instruction": "Add", "input": "2 and 3", "output": "5"}


def test_openai_and_alpaca_records_load(tmp_path):
    conversations, report = load_conversations(write_jsonl(tmp_path / "d.jsonl", [GOOD_OPENAI, GOOD_ALPACA]))
    assert report.loaded == 2 and not report.skipped
    assert conversations[1]["messages"] == [{"role": "user", "content": "Add\n2 and 3"},
                                            {"role": "assistant", "content": "5"}]


def test_json_list_files_load(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD_OPENAI, GOOD_ALPACA]))
    assert len(load_conversations(path)[0]) == 2


@pytest.mark.parametrize("bad, where", [
    ({"messages": [{"role": "bot", "content": "x"}]}, "d.jsonl:2: field 'messages[0].role' is 'bot'"),
    ({"messages": [{"role": "user", "content": ""}]}, "d.jsonl:2: field 'messages[0].content'"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "d.jsonl:2: field 'messages' has no assistant"),
    ({"instruction": "x"}, "d.jsonl:2: field 'output'"),
    ({"text": "x"}, "d.jsonl:2: no 'messages' field"),
    ("{not json", "d.jsonl:2: not valid JSON"),
])
def test_malformed_record_names_file_line_and_field(tmp_path, bad, where):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD_OPENAI, bad, GOOD_ALPACA])
    with pytest.raises(GeneralDataError) as error:
        load_conversations(path)
    assert where in str(error.value).replace(str(tmp_path) + "/", "")


def test_skipped_records_are_counted_and_reported(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD_OPENAI, {"text": "x"}, "{oops", GOOD_ALPACA])
    conversations, report = load_conversations(path, skip_invalid=True)
    assert len(conversations) == 2 and len(report.skipped) == 2
    assert "2 skipped" in report.summary() and "d.jsonl:2" in report.summary()


def test_missing_file_and_unknown_packaged_source_are_clear(tmp_path):
    with pytest.raises(GeneralDataError, match="no such file"):
        load_source(str(tmp_path / "nope.jsonl"))
    with pytest.raises(GeneralDataError, match="unknown packaged data 'nope'; known: chatterbot, chitchat"):
        load_source("packaged:nope")


def test_packaged_chatterbot_is_real_bilingual_and_claims_no_identity():
    conversations = chatterbot_conversations()
    assert len(conversations) > 1000
    texts = [c["messages"][0]["content"] for c in conversations]
    assert any("\u4e00" <= ch <= "\u9fff" for t in texts for ch in t), "has Chinese"
    assert any(t.isascii() for t in texts), "has English"
    answers = " ".join(c["messages"][1]["content"].lower() for c in conversations)
    assert "my name is" not in answers  # the botprofile/ai categories (a different identity) are left out


def test_packaged_chinese_answers_are_chinese_held_out_free_and_claim_no_identity():
    """The shipped Chinese general answers (bench/make_chinese_answers.py): real question/answer pairs
    in Chinese, none of them a prompt the evaluation holds out, none naming a model or its maker."""
    from pathlib import Path

    from xtuner_assistant.data.replay import language
    from xtuner_assistant.evaluation.identity_evaluation import general_eval_prompts

    conversations, report = load_source("packaged:chinese-answers")
    assert report.loaded == len(conversations) > 500
    for conversation in conversations:
        question, answer = (m["content"] for m in conversation["messages"])
        assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
        assert language(question) == language(answer) == "zh", conversation
    questions = {c["messages"][0]["content"] for c in conversations}
    extra = json.loads((Path(__file__).parent.parent / "bench" / "prompts" / "held_out_general_extra.json").read_text("utf-8"))
    held_out = {p["prompt"] for p in general_eval_prompts()} | {i["prompt"] for lang in ("zh", "en") for i in extra[lang]}
    assert not questions & held_out
    answers = " ".join(c["messages"][1]["content"].lower() for c in conversations)
    for maker in ("qwen", "通义", "阿里", "openai", "smollm", "我是"):
        assert maker not in answers, maker
