"""Base-model replay: the base model's own answers to a bilingual prompt pool (plus the user's), made
once and cached, cut to whole sentences without loops, and mixed in by MixedChatDataset at a ratio."""
import json
import shutil
from pathlib import Path

import pytest
from mmengine.config import Config

from xtuner_assistant.data import replay
from xtuner_assistant.data.identity_files import DEFAULT_SAMPLES
from xtuner_assistant.data.mixed import MixedChatDataset, language_of
from xtuner_assistant.data.replay import ReplayError
from xtuner_assistant.evaluation.identity_evaluation import general_eval_prompts
from xtuner_assistant.models import answers as answer_cache
from xtuner_assistant.models.zoo import MANIFEST

CPU_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "smollm2_135m_lora_cpu_assistant.py"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("XTUNER_ASSISTANT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def canned_answers(prompts, max_new_tokens):
    """What a base model might say: whole sentences, a cut-off one, a loop, nothing."""
    answers = []
    for i, prompt in enumerate(prompts):
        kind = i % 4
        if kind == 0:
            answers.append(f"Here is an answer to {prompt!r}. It ends well.")
        elif kind == 1:
            answers.append("这是一个回答。它还没有说完因为")
        elif kind == 2:
            answers.append("the same words " * 30)
        else:
            answers.append("")
    return answers


def test_the_pool_is_bilingual_and_user_prompts_join_it_once(tmp_path):
    pool = replay.replay_prompts()
    assert any(language_of({"messages": [{"role": "user", "content": p}]}) == "zh" for p in pool)
    assert any(language_of({"messages": [{"role": "user", "content": p}]}) == "en" for p in pool)
    extra_txt = tmp_path / "mine.txt"
    extra_txt.write_text(f"How do tides work?\n\n{pool[0]}\n", encoding="utf-8")
    extra_json = tmp_path / "mine.json"
    extra_json.write_text(json.dumps(["潮汐是怎么形成的？"], ensure_ascii=False), encoding="utf-8")
    assert replay.replay_prompts(extra_txt) == pool + ["How do tides work?"]  # a prompt already pooled is not doubled
    assert replay.replay_prompts(extra_json)[-1] == "潮汐是怎么形成的？"


def test_bad_prompt_files_say_what_is_wrong_and_where(tmp_path):
    with pytest.raises(ReplayError, match="no such prompts file"):
        replay.replay_prompts(tmp_path / "missing.txt")
    broken = tmp_path / "broken.json"
    broken.write_text('["fine",\n oops]', encoding="utf-8")
    with pytest.raises(ReplayError, match=r"broken.json:2: not valid JSON"):
        replay.replay_prompts(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('["fine", 3]', encoding="utf-8")
    with pytest.raises(ReplayError, match="item 1 is not a non-empty string"):
        replay.replay_prompts(wrong)


def test_answers_are_generated_once_per_model_prompts_and_length(home, tiny_model_dir):
    calls = []

    def generate(prompts, max_new_tokens):
        calls.append((tuple(prompts), max_new_tokens))
        return [f"answer {i}." for i in range(len(prompts))]

    first = answer_cache.cached_answers(tiny_model_dir, ["a", "b"], 32, generate)
    again = answer_cache.cached_answers(tiny_model_dir, ["a", "b"], 32, generate)
    assert first == again == ["answer 0.", "answer 1."] and len(calls) == 1
    answer_cache.cached_answers(tiny_model_dir, ["a", "b", "c"], 32, generate)  # other prompts
    answer_cache.cached_answers(tiny_model_dir, ["a", "b"], 64, generate)  # another length limit
    assert len(calls) == 3
    assert len(list((home / "answers").glob("*.json"))) == 3


def fetched_copy(source: Path, target: Path) -> Path:
    """`source` as `model fetch` leaves a model: with its record of files, sizes and weights digests."""
    shutil.copytree(source, target)
    files = {p.name: p.stat().st_size for p in target.iterdir() if p.is_file()}
    (target / MANIFEST).write_text(json.dumps({"files": files, "weights_sha256": {"model.safetensors": "ab" * 32}}))
    return target


def test_a_fetched_model_is_known_by_its_weights_and_any_other_by_its_place(tmp_path, tiny_model_dir):
    here, there = fetched_copy(tiny_model_dir, tmp_path / "a"), fetched_copy(tiny_model_dir, tmp_path / "b")
    assert answer_cache.model_fingerprint(here) == answer_cache.model_fingerprint(there)
    plain = shutil.copytree(tiny_model_dir, tmp_path / "plain")
    assert answer_cache.model_fingerprint(plain) != answer_cache.model_fingerprint(tiny_model_dir)
    with open(there / "config.json", "a") as config:  # a changed file: its record no longer holds
        config.write(" ")
    assert answer_cache.fetched_weights(there) is None
    assert answer_cache.model_fingerprint(there) != answer_cache.model_fingerprint(here)


def test_shipped_answers_serve_their_model_prompts_and_length_only(home, tmp_path, tiny_model_dir, monkeypatch):
    model = fetched_copy(tiny_model_dir, tmp_path / "fetched")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(answer_cache, "shipped_file", lambda name: shipped / name)
    name = answer_cache.cache_path(model, ["a", "b"], 32).name
    (shipped / name).write_text(json.dumps({"prompts": ["a", "b"], "max_new_tokens": 32, "answers": ["x.", "y."]}))
    calls = []

    def generate(prompts, max_new_tokens):
        calls.append(prompts)
        return ["made."] * len(prompts)

    assert answer_cache.cached_answers(model, ["a", "b"], 32, generate) == ["x.", "y."] and not calls
    assert answer_cache.cached_answers(model, ["a", "c"], 32, generate) == ["made.", "made."]
    assert answer_cache.cached_answers(model, ["a", "b"], 64, generate) == ["made.", "made."] and len(calls) == 2


def test_the_packaged_default_ships_the_replay_answers_of_its_config():
    """The CPU config's replay prompts for the fetched SmolLM2: shipped, or a changed prompt pool
    needs `python -m xtuner_assistant.data.replay ship smollm2-135m`."""
    from xtuner_assistant.models.fetch import fetch

    name = answer_cache.cache_path(fetch("smollm2-135m"), replay.replay_prompts(), replay.DEFAULT_MAX_NEW_TOKENS).name
    assert answer_cache.shipped_file(name).is_file(), f"no shipped {name}: run the command in this test's docstring"


def test_replay_keeps_whole_sentences_and_drops_loops_and_empty_answers(home, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(replay, "base_model_answers",
                        lambda model_path, prompts, max_new_tokens: canned_answers(prompts, max_new_tokens))
    path = replay.replay_file(tiny_model_dir)
    conversations = [json.loads(line) for line in open(path, encoding="utf-8")]
    prompts = replay.replay_prompts()
    answers = [c["messages"][1]["content"] for c in conversations]
    # Loops and empty answers left out, and answers in the other language than their question.
    canned = [replay.whole_sentences(a) for a in canned_answers(prompts, 64)]
    kept = [p for i, (p, a) in enumerate(zip(prompts, canned)) if i % 4 < 2 and replay.language(a) == replay.language(p)]
    assert len(kept) < len(prompts[0::4]) + len(prompts[1::4])
    assert [c["messages"][0]["content"] for c in conversations] == kept
    assert all(a.endswith((".", "。")) for a in answers)  # "…还没有说完因为" is cut at its last full stop
    assert "这是一个回答。" in answers and not any("the same words" in a for a in answers)


def test_a_changed_filter_never_reuses_the_replay_file_of_the_old_one(home, tiny_model_dir, monkeypatch):
    """The cached file is named by what it holds: same model, prompts and answers, another `usable`."""
    monkeypatch.setattr(replay, "base_model_answers",
                        lambda model_path, prompts, max_new_tokens: canned_answers(prompts, max_new_tokens))
    before = replay.replay_file(tiny_model_dir)
    assert replay.replay_file(tiny_model_dir) == before  # reused while nothing changed
    stricter = replay.usable
    monkeypatch.setattr(replay, "usable", lambda prompt, answer: stricter(prompt, answer) and replay.language(prompt) == "en")
    after = replay.replay_file(tiny_model_dir)
    kept = [json.loads(line)["messages"][0]["content"] for line in open(after, encoding="utf-8")]
    assert after != before and kept and all(replay.language(prompt) == "en" for prompt in kept)


def test_replay_leaves_out_echoes_and_answers_in_another_language():
    assert replay.usable("什么是质数？", "质数是只能被一和它本身整除的数。")
    assert not replay.usable("什么是质数？", "什么是质数？")  # the question echoed back
    assert not replay.usable("天空为什么是蓝色的？", "The color of the sky is a reflection of light.")
    assert replay.usable("Why is the sky blue?", "Because air scatters blue light the most.")


def test_templated_prompts_are_fixed_and_mostly_chinese_near_misses():
    prompts = replay.templated_prompts()
    assert prompts == replay.templated_prompts() and len(set(prompts)) == len(prompts)
    chinese = [p for p in prompts if replay.language(p) == "zh"]
    assert len(chinese) > 2 * (len(prompts) - len(chinese))
    assert any(p.startswith("介绍一下") for p in chinese) and any(p.endswith("是谁？") for p in chinese)
    held_out = {item["prompt"] for item in general_eval_prompts()}
    assert not held_out & set(replay.replay_prompts())


def test_a_model_with_no_usable_answer_is_refused_with_what_to_do(home, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(replay, "base_model_answers", lambda model_path, prompts, max_new_tokens: [""] * len(prompts))
    with pytest.raises(ReplayError, match="set replay_ratio=0"):
        replay.replay_file(tiny_model_dir)


def test_the_mixed_dataset_draws_replay_at_its_ratio(home, tiny_model_dir, tokenizer, monkeypatch):
    monkeypatch.setattr(replay, "base_model_answers",
                        lambda model_path, prompts, max_new_tokens: canned_answers(prompts, max_new_tokens))
    identity = dict(type="IdentityConversations", name="Zed", n=40, seed=0)
    data = MixedChatDataset(tokenizer, identity, general=[], general_ratio=0.0,
                            replay=replay.replay_file(tiny_model_dir), replay_ratio=0.5, max_length=512)
    assert data.kinds.count("identity") == 40
    assert data.kinds.count("replay") == data.report["replay_zh_drawn"] + data.report["replay_en_drawn"]
    assert 18 <= data.kinds.count("replay") <= 22  # half as many as identity conversations, language by language


def test_the_cpu_config_replays_the_base_models_answers_by_default(home, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("XA_REPLAY_RATIO")  # conftest turns replay off for every other test
    monkeypatch.setenv("XA_MODEL", str(tiny_model_dir))
    monkeypatch.setattr(replay, "base_model_answers",
                        lambda model_path, prompts, max_new_tokens: canned_answers(prompts, max_new_tokens))
    dataset = Config.fromfile(str(CPU_CONFIG)).train_dataloader.dataset
    assert (dataset.replay_ratio, dataset.identity.n) == (0.5, 512)  # the measured recipe (docs/BENCHMARKS.md)
    assert DEFAULT_SAMPLES == 512  # what `make demo` and `data identity` write
    assert Path(dataset.replay).parent == home / "answers"
