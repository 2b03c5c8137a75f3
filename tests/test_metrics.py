"""Each metric on hand-made answers: a looping answer, a collapsed set, a leaked name, kept facts."""
import pytest

from xtuner_assistant.evaluation import metrics

NAME = "小菜鸡"
IDENTITY_SENTENCE = "我是小菜鸡，你的小助手，内在是SmolLM2大模型哦。有什么可以帮你的吗？"
HEALTHY = [
    "Put the egg in cold water, bring it to a boil, then simmer for eight minutes.",
    "Crisp leaves drift down / the maple glows red and gold / the wind hums softly",
    "A virus needs a host cell to copy itself; a bacterium is a living cell of its own.",
    "先把鸡蛋放进冷水锅里，水开后再煮八分钟，捞出后过一下冷水。",
    "每天散步能增强心肺功能，帮助睡眠，还能让心情变好。",
]


def test_a_looping_answer_is_caught_and_a_normal_one_is_not():
    looping = "I am 小菜鸡, your assistant. " * 12
    assert metrics.loops(looping)
    assert metrics.loops("我是小菜鸡的小助手" * 20)
    assert metrics.loops("t" * 80), "a loop inside one word is still a loop"
    assert metrics.loops("👀👍" + "👏" * 40), "so is a loop of symbols"
    assert not any(metrics.loops(answer) for answer in HEALTHY)
    assert not metrics.loops("Yes."), "short answers are never loops"


def test_repetition_rate_counts_loops_and_runaway_answers():
    answers = HEALTHY[:3] + ["hello world " * 30]
    assert metrics.repetition_rate(answers) == pytest.approx(1 / 4)
    assert metrics.repetition_rate(answers, hit_length_limit=[True, False, False, False]) == pytest.approx(2 / 4)
    assert metrics.repetition_rate([]) == 0.0


def test_a_collapsed_set_scores_one_and_distinct_answers_zero():
    assert metrics.collapse_rate([IDENTITY_SENTENCE] * 6) == 1.0
    assert metrics.collapse_rate(HEALTHY) == 0.0
    # Punctuation, case and a different tail after the first words do not make answers different.
    same_head = [IDENTITY_SENTENCE + " 今天天气不错", IDENTITY_SENTENCE + "!", IDENTITY_SENTENCE, HEALTHY[0]]
    assert metrics.collapse_rate(same_head) == pytest.approx((4 - 2) / 3)


def test_identity_accuracy_counts_answers_that_carry_the_name():
    answers = [IDENTITY_SENTENCE, "I'm 小菜鸡, your assistant.", "I am a large language model."]
    assert metrics.identity_accuracy(answers, NAME) == pytest.approx(2 / 3)
    assert metrics.identity_accuracy(["I am ALICE"], "Alice") == 1.0, "names match regardless of case"


def test_a_leaked_name_or_identity_sentence_counts_as_leakage():
    leaked_name = "To boil an egg, 小菜鸡 suggests eight minutes."
    # The identity sentence recited without the name (the model mangled it) still leaks.
    leaked_sentence = "我是你的小助手，内在是SmolLM2大模型哦。有什么可以帮你的吗？"
    answers = HEALTHY + [leaked_name, leaked_sentence]
    assert metrics.leaks(leaked_name, NAME)
    assert not metrics.leaks(leaked_sentence, NAME), "without the sentences only the name is checked"
    assert metrics.leaks(leaked_sentence, NAME, [IDENTITY_SENTENCE])
    assert metrics.leakage(answers, NAME, [IDENTITY_SENTENCE]) == pytest.approx(2 / 7)
    # An answer that merely shares a few common words with the identity sentence does not leak.
    assert not metrics.leaks("有什么可以帮你的吗？先把鸡蛋放进冷水锅里煮八分钟。", NAME, [IDENTITY_SENTENCE])
    # Nor does a long English answer, though it holds most letter pairs of any English sentence.
    english_sentence = "Hello, I am Alice, your AI assistant. Happy to help!"
    long_answer = ("To save money each month, start by setting a budget and tracking your expenses in a "
                   "spreadsheet or a budgeting app, then set aside a portion of your income for savings.")
    assert not metrics.leaks(long_answer, "Alice", [english_sentence])
    assert metrics.leaks("Hello, I am your AI assistant. Happy to help!", "Alice", [english_sentence])


def test_retention_is_agreement_with_the_base_models_answers():
    assert metrics.retention(HEALTHY, HEALTHY) == 1.0
    assert metrics.retention([IDENTITY_SENTENCE] * len(HEALTHY), HEALTHY) < 0.1
    slightly_changed = ["Put the egg in cold water, bring it to the boil, and simmer eight minutes."]
    assert 0.6 < metrics.retention(slightly_changed, HEALTHY[:1]) < 1.0
    with pytest.raises(ValueError, match="one base answer per answer"):
        metrics.retention(HEALTHY, HEALTHY[:2])


def test_fact_retention_counts_only_facts_the_base_model_knew():
    base = ["The capital of France is Paris.", "A spider has six legs.", "二加三等于五。"]
    accepted = [["Paris"], ["8", "eight"], ["5", "五"]]
    tuned = ["Paris, of course.", "Eight legs.", "我是小菜鸡。"]
    # Base knew 2 of 3 (the spider was wrong); the tuned model kept Paris, lost 二加三.
    assert metrics.fact_retention(tuned, base, accepted) == pytest.approx(1 / 2)
    assert metrics.fact_retention(tuned, ["no idea"] * 3, accepted) is None


def test_the_combined_rule_prefers_a_useful_model_over_a_collapsed_one():
    collapsed = dict(identity_accuracy=1.0, retention=0.05, leakage=1.0, repetition=0.0, collapse=1.0)
    useful = dict(identity_accuracy=0.9, retention=0.6, leakage=0.0, repetition=0.0, collapse=0.05)
    untrained = dict(identity_accuracy=0.0, retention=1.0, leakage=0.0, repetition=0.0, collapse=0.0)
    assert metrics.combined_score(useful) > metrics.combined_score(untrained) > metrics.combined_score(collapsed)


def test_looping_counts_as_unhealthy_only_above_the_base_models_own_level():
    looping = dict(collapse=0.1, repetition=0.4)
    assert metrics.unhealthy(looping), "no base measured: the threshold alone decides"
    assert metrics.unhealthy(looping, base_scores=dict(repetition=0.1))
    assert not metrics.unhealthy(looping, base_scores=dict(repetition=0.35)), "the base model loops as much"
    reasons = metrics.unhealthy(dict(collapse=0.9, repetition=0.0), base_scores=dict(repetition=0.35))
    assert reasons and "collapsed" in reasons[0]
