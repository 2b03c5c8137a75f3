"""Identity data: varied, bilingual, deterministic, held-out questions never trained on, odd names safe."""
import json

import pytest

from xtuner_assistant.data.identity import Identity, IdentityError, IdentityPhrasebook
from xtuner_assistant.data.identity_files import write_identity_files


def user_questions(conversations):
    return [m["content"] for c in conversations for m in c["messages"] if m["role"] == "user"]


def test_many_paraphrases_and_answers_not_one_pair_repeated():
    book = IdentityPhrasebook(Identity("Alice", "Bob", "SmolLM2-135M-Instruct"))
    conversations = book.conversations(300)
    assert len({c["messages"][0]["content"] for c in conversations}) > 100
    assert len({c["messages"][1]["content"] for c in conversations}) >= 15
    assert {c["language"] for c in conversations} == {"zh", "en"}
    assert all("Alice" in c["messages"][1]["content"] for c in conversations)
    assert any("Bob" in c["messages"][1]["content"] for c in conversations)
    assert any("SmolLM2-135M-Instruct" in c["messages"][1]["content"] for c in conversations)


def test_same_seed_same_data_other_seed_other_split():
    make = lambda seed: IdentityPhrasebook(Identity("Alice"), seed=seed)
    assert make(3).conversations(50) == make(3).conversations(50)
    assert make(3).held_out() == make(3).held_out()
    assert make(3).held_out() != make(4).held_out()


def test_some_conversations_ask_again_in_the_other_language_and_get_that_language():
    conversations = IdentityPhrasebook(Identity("Alice")).conversations(400)
    two_turn = [c for c in conversations if len(c["messages"]) == 4]
    assert 20 <= len(two_turn) <= 80
    cjk = lambda text: any("\u4e00" <= ch <= "\u9fff" for ch in text)
    for c in two_turn:
        first, second = c["messages"][0]["content"], c["messages"][2]["content"]
        assert cjk(first) != cjk(second)
        assert cjk(c["messages"][3]["content"]) == cjk(second) and "Alice" in c["messages"][3]["content"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_out_questions_never_appear_in_training(seed):
    book = IdentityPhrasebook(Identity("Alice"), seed=seed)
    held_out = [q["question"] for q in book.held_out()]
    assert {q["language"] for q in book.held_out()} == {"zh", "en"}
    trained = user_questions(book.conversations(5000))
    for question in held_out:
        core = question.lower().rstrip("?？.!。！")
        assert not any(t.lower().rstrip("?？.!。！").endswith(core) for t in trained), question


def test_phrasebook_questions_end_as_typed_questions_do():
    """With its punctuation, like the general chat it is mixed with (MixedChatDataset then takes it off
    some of every source's questions alike): a phrasebook without it once let the model tell identity
    questions by how they ended."""
    from xtuner_assistant.data.identity import _phrases

    for language, entries in _phrases()["questions"].items():
        for question in (q for entry in entries for q in (entry if isinstance(entry, list) else [entry])):
            assert question[-1] in "?？.。!！", (language, question)


def test_the_extra_identity_probes_are_no_near_copies_of_any_question_in_the_pool():
    """bench/leak_probe.py scores every run on these; a probe that is a pool question with words added in
    front (as training adds prefixes), or one a pool question ends with, would be trained on."""
    import re
    from pathlib import Path

    from xtuner_assistant.data.identity import _phrases

    probes = json.loads((Path(__file__).parent.parent / "bench/prompts/held_out_identity_extra.json").read_text("utf-8"))
    core = lambda text: re.sub(r"[\s?？.!。！,，呀吗呢吧啊]+$", "", text.lower().strip())
    for language, entries in _phrases()["questions"].items():
        pool = [core(q) for entry in entries for q in (entry if isinstance(entry, list) else [entry])]
        assert len(probes[language]) >= 30
        for probe in map(core, probes[language]):
            assert not any(probe.endswith(q) or q.endswith(probe) for q in pool), probe


@pytest.mark.parametrize("name", ['O\'Brien "the bot"', "Robo {name} {0}", "小菜鸡🐣", "A" * 64])
def test_odd_names_appear_literally(name):
    conversations = IdentityPhrasebook(Identity(name)).conversations(40)
    assert all(name in c["messages"][1]["content"] for c in conversations)


@pytest.mark.parametrize("name, message", [
    ("", "--name is empty"),
    ("   ", "--name is empty"),
    ("bad\x00name", "control characters"),
    ("line\nbreak", "control characters"),
    ("A" * 65, "at most 64"),
    ("Zed<|im_end|>", "'<\\|im_end\\|>', which chat templates use to mark turns"),
    ("<|eot_id|>Zed", "<\\|eot_id\\|>"),
    ("Zed</s>", "'</s>'"),
    ("[INST] Zed", "INST"),
    ("Zed<end_of_turn>", "end_of_turn"),
])
def test_bad_names_are_rejected_clearly(name, message):
    with pytest.raises(IdentityError, match=message):
        Identity(name)


def test_files_are_written_with_held_out_beside_training(tmp_path):
    paths = write_identity_files(tmp_path / "out", "Alice", "Bob", "SmolLM2", samples=20, seed=1)
    lines = paths["train"].read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20 and all(json.loads(line)["messages"][1]["role"] == "assistant" for line in lines)
    held_out = json.loads(paths["held_out"].read_text(encoding="utf-8"))
    assert held_out["identity"] == {"name": "Alice", "author": "Bob", "base_model": "SmolLM2"}
    assert len(held_out["questions"]) >= 10
    assert not list((tmp_path / "out").glob(".*tmp")), "no temporary files left behind"


def test_without_language_weights_each_languages_share_is_its_share_of_the_combinations():
    """The shipped data: not setting identity_language_weights leaves it as it was, draw for draw."""
    book = IdentityPhrasebook(Identity("Alice"), seed=1)
    assert book.conversations(512) == book.conversations(512, language_weights="") \
        == book.conversations(512, language_weights=None)
    languages = [c["language"] for c in book.conversations(512)]
    assert 200 <= languages.count("zh") <= 312  # about half: the two pools are of similar size


@pytest.mark.parametrize("weights, zh", [("zh:2,en:1", 341), ("zh:2", 341), ({"zh": 2, "en": 1}, 341),
                                         ("en:3, zh:1", 128), ("zh:1,en:1", 256), ("zh:0.5,en:1.5", 128)])
def test_language_weights_set_each_languages_share(weights, zh):
    book = IdentityPhrasebook(Identity("Alice"), seed=1)
    conversations = book.conversations(512, language_weights=weights)
    assert len(conversations) == 512 and [c["language"] for c in conversations].count("zh") == zh
    cjk = lambda text: any("\u4e00" <= ch <= "\u9fff" for ch in text)
    assert all(cjk(c["messages"][0]["content"]) == (c["language"] == "zh") for c in conversations)
    assert len({c["messages"][0]["content"] for c in conversations}) > 250  # still varied, not one pair repeated
    assert conversations == book.conversations(512, language_weights=weights)  # deterministic
    held_out = {q["question"] for q in book.held_out()}
    assert not held_out & {m["content"] for c in conversations for m in c["messages"]}


def test_language_weights_reach_the_generator_from_the_config_setting():
    from xtuner_assistant.data.identity import IdentityConversations
    from xtuner_assistant.training.recipe import identity_source

    assert "language_weights" not in identity_source("", "Alice", "", "M", 30, 0)  # resolved config as before
    source = identity_source("", "Alice", "", "M", 30, 0, "zh:2,en:1")
    data = IdentityConversations(**{k: v for k, v in source.items() if k != "type"})
    assert [c["language"] for c in data.items].count("zh") == 20


@pytest.mark.parametrize("weights, message", [
    ("fr:2", r"unknown language 'fr' \(known: zh, en\)"),
    ("zh:0", "the weight of zh is '0', not a number above 0"),
    ("zh:-1,en:1", "the weight of zh is '-1', not a number above 0"),
    ("zh:two", "the weight of zh is 'two', not a number above 0"),
    ("zh:inf", "not a number above 0"),
    ("zh=2", "zh=2 has no weight"),
    ("zh:2,", "an empty entry has no weight"),
    ("zh:2,zh:1", "zh is given twice"),
])
def test_bad_language_weights_are_refused_naming_the_setting_and_the_form(weights, message):
    from xtuner_assistant.data.identity import parse_language_weights

    for refuse in (lambda: parse_language_weights(weights),
                   lambda: IdentityPhrasebook(Identity("Alice")).conversations(10, language_weights=weights)):
        with pytest.raises(IdentityError, match=message) as error:
            refuse()
        assert str(error.value).startswith(f"identity_language_weights={weights!r}: ")
        assert str(error.value).endswith("write LANGUAGE:WEIGHT pairs separated by commas, weights above 0, "
                                         "e.g. zh:2,en:1") and "\n" not in str(error.value)


def test_the_cpu_config_declares_the_setting_and_train_refuses_a_bad_value_before_starting():
    from pathlib import Path

    from xtuner_assistant.training.settings import check_training_inputs, declared_settings

    config = Path(__file__).parent.parent / "configs/smollm2_135m_lora_cpu_assistant.py"
    assert declared_settings(config)["identity_language_weights"] == ""  # default: the shipped data
    assert check_training_inputs(config, {"identity_language_weights": "zh:2,en:1"})
    with pytest.raises(IdentityError, match=r"^identity_language_weights='zh:0': the weight of zh"):
        check_training_inputs(config, {"identity_language_weights": "zh:0"})
