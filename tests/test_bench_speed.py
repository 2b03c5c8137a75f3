"""The speed benchmark's own logic (bench/speed.py): which runs of ours it makes, and the stand-in
of stock XTuner's chat template it scores stock's held-out loss in."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import speed  # noqa: E402


def arms(ours=(), packs=(8192,), chunks=(0,)):
    return speed.our_arms(SimpleNamespace(ours=list(ours), pack_tokens=list(packs), loss_chunk_tokens=list(chunks)))


def test_runs_of_ours_are_named_one_by_one_or_made_from_every_pack_and_chunk():
    assert arms(["4096:256", "4096:256:float16", "2048", "3072:256:upcast", "3072:256:eager"]) == [
        (4096, 256, "bfloat16", ""), (4096, 256, "float16", ""), (2048, 0, "bfloat16", ""),
        (3072, 256, "bfloat16", "upcast"), (3072, 256, "bfloat16", "eager")]
    assert arms(packs=(4096, 8192), chunks=(256, 1024)) == [
        (4096, 256, "bfloat16", ""), (4096, 1024, "bfloat16", ""), (8192, 256, "bfloat16", ""),
        (8192, 1024, "bfloat16", "")]
    for wrong in ("4096:256:float32", "big", "4096:256:float16:x", "upcast", "4096:upcast:256", "eager:4096"):
        with pytest.raises(SystemExit, match="PACK\\[:CHUNK"):
            arms([wrong])


def test_the_loss_before_arm_restores_the_recomputing_loss_for_its_run(monkeypatch):
    """`3072:256:loss_before` (bench/speed_patches.py): the A/B against the loss made with its gradient
    in the forward pass, which would otherwise compare the shipped loss with itself."""
    import torch

    import speed_patches
    from xtuner_assistant.training import answer_loss

    assert arms(["3072:256:loss_before"]) == [(3072, 256, "bfloat16", "loss_before")]
    monkeypatch.setattr(answer_loss, "_head_parts", answer_loss._head_parts)  # undone after the test
    head = torch.nn.Linear(4, 9).requires_grad_(False)
    hidden = torch.randn(1, 6, 4, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, 3, 4, 5]])

    def path():
        return str(answer_loss.answer_token_loss(hidden, labels, head).grad_fn.next_functions)

    assert "LossWithGradientInForward" in path()
    model = torch.nn.Module()
    model.graphed_step = SimpleNamespace(answer_slots=2000)
    speed_patches.loss_before(model)
    assert "LossWithGradientInForward" not in path() and model.graphed_step.answer_slots is None


def test_stock_template_renders_what_xtuner_internlm2_chat_template_builds():
    from tiny_models import tiny_tokenizer
    from xtuner.utils import PROMPT_TEMPLATE

    from xtuner_assistant.chat_template import render

    template = PROMPT_TEMPLATE.internlm2_chat
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "你是谁"}, {"role": "assistant", "content": "我是小菜鸡的小助手"},
                {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]
    # XTuner's template_map_fn + encode_fn: system, then per turn INSTRUCTION + output + SUFFIX, turns
    # joined by SEP.
    turns = [template.INSTRUCTION.format(input="你是谁") + "我是小菜鸡的小助手" + template.SUFFIX,
             template.INSTRUCTION.format(input="What is 2+2?") + "4." + template.SUFFIX]
    expected = template.SYSTEM.format(system="Be brief.") + template.SEP.join(turns)
    tokenizer = tiny_tokenizer()  # its own: the session's shared tokenizer keeps its template
    tokenizer.chat_template = speed.STOCK_CHAT_TEMPLATE
    assert render(tokenizer, messages, add_generation_prompt=False) == expected


def test_loop_windows_puts_a_saves_time_in_the_window_after_it():
    """bench/loop_windows.py on mmengine's log lines: the wait a checkpoint save (and an evaluation)
    adds shows in the window after them, measured against a typical window."""
    import loop_windows

    line = "12/01 00:00:00 - mmengine - INFO - Iter(train) [{end:>3}/120]  lr: 1e-4  eta: 0:00:01  time: {row}  data_time: {data}  loss: 1.0"
    log = [line.format(end=10, row=0.9, data=0.01)]
    log += [line.format(end=end, row=0.11, data=0.005) for end in (20, 30, 40, 50)]
    log += ["... IdentityEvalHook iter 50: identity_accuracy 0.5", "... Saving checkpoint at 50 iterations",
            line.format(end=60, row=0.31, data=0.205)]
    log += [line.format(end=end, row=0.11, data=0.005) for end in (70, 80, 90, 100, 110, 120)]
    windows = loop_windows.windows("\n".join(log))
    assert [w["last"] for w in windows] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]
    after_save = windows[5]
    assert after_save["saved_before"] == [50] and after_save["evaluated_before"] == [50]
    assert after_save["waiting_beyond_typical_s"] == pytest.approx(2.0) and after_save["beyond_typical_s"] == pytest.approx(2.0)
    assert all(w["beyond_typical_s"] == pytest.approx(0) for w in windows[1:5] + windows[6:])
    assert windows[0]["beyond_typical_s"] == pytest.approx(7.9)  # the first rows compile and capture
