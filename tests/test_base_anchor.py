"""The anchor to the base model (training/base_anchor.py): the KL term counts answer tokens only and is
the base model's, adapter off and without NEFTune noise; identity rows pay none; weight 0 trains exactly
as XTuner's SupervisedFinetune; the mix tells the collate function each row's kind."""
from __future__ import annotations

import pytest
import torch
from mmengine.config import ConfigDict
from transformers import AutoModelForCausalLM

from xtuner_assistant.chat_template import IGNORE_INDEX
from xtuner_assistant.training.base_anchor import AnchoredSupervisedFinetune, anchored_collate_fn, base_anchor_kl
from xtuner_assistant.training.embedding_noise import add_embedding_noise
from xtuner_assistant.training.settings import SettingError

ROWS = [  # two general rows and an identity row, answers after the first two tokens
    {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [IGNORE_INDEX] * 2 + [7, 8, 9, 10], "kind": "general"},
    {"input_ids": [11, 12, 13, 14], "labels": [IGNORE_INDEX] * 2 + [13, 14], "kind": "replay"},
    {"input_ids": [15, 16, 17, 18, 19], "labels": [IGNORE_INDEX] * 2 + [17, 18, 19], "kind": "identity"},
]


def anchored(model_dir, weight: float) -> AnchoredSupervisedFinetune:
    from peft import LoraConfig

    torch.manual_seed(0)
    model = AnchoredSupervisedFinetune(
        llm=ConfigDict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(model_dir)),
        lora=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM"),
        use_activation_checkpointing=False, anchor_weight=weight)
    with torch.no_grad():  # a trained adapter: LoRA's B starts at zero, which would make the anchor 0
        for name, parameter in model.llm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    return model.train()


def batch(rows=ROWS) -> dict:
    return anchored_collate_fn([dict(row) for row in rows], pad_index=0)["data"]


def test_the_kl_counts_answer_tokens_only_and_is_zero_at_the_base():
    torch.manual_seed(0)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX]])
    base = torch.randn(1, 5, 11)
    assert base_anchor_kl(base.clone(), base, labels).item() == pytest.approx(0.0, abs=1e-6)
    trained = base + torch.randn(1, 5, 11)
    kl = base_anchor_kl(trained, base, labels)
    assert kl.item() > 0.01
    moved = trained.clone()
    moved[0, 0] += 5.0   # predicts a prompt token (label at 1 is ignored)
    moved[0, 3] += 5.0   # predicts the padding after the answer
    assert base_anchor_kl(moved, base, labels).item() == pytest.approx(kl.item(), rel=1e-6)
    moved[0, 2, 0] += 5.0  # predicts an answer token
    assert base_anchor_kl(moved, base, labels).item() != pytest.approx(kl.item(), rel=1e-3)
    p, q = base[0, 1:3].softmax(-1), trained[0, 1:3].softmax(-1)  # KL(base || trained), by hand
    assert kl.item() == pytest.approx(float((p * (p.log() - q.log())).sum(-1).mean()), rel=1e-5)
    assert base_anchor_kl(trained, base, torch.full_like(labels, IGNORE_INDEX)).item() == 0.0


def test_the_collate_function_marks_general_and_replayed_rows():
    data = batch()
    assert data["anchored"].tolist() == [True, True, False]
    assert {"input_ids", "labels", "attention_mask", "position_ids"} <= set(data)


def test_weight_zero_is_xtuners_loss_and_identity_rows_pay_no_anchor(tiny_model_dir):
    off = anchored(tiny_model_dir, 0.0)
    data = batch()
    plain = off.llm(**{k: v for k, v in data.items() if k != "anchored"}).loss
    losses = off.compute_loss(dict(data))
    assert set(losses) == {"loss"} and losses["loss"].item() == pytest.approx(plain.item(), rel=1e-6)
    on = anchored(tiny_model_dir, 2.0)
    only_identity = on.compute_loss(batch(ROWS[2:]))
    assert only_identity["anchor_loss"].item() == 0.0 and not only_identity["anchor_loss"].requires_grad


def test_the_anchor_is_the_base_models_kl_without_noise_and_trains_only_the_adapter(tiny_model_dir):
    model = anchored(tiny_model_dir, 2.0)
    embedding = model.llm.get_input_embeddings()
    noisy = embedding.register_forward_hook(lambda m, i, out: add_embedding_noise(out, 50.0) if m.training else out)
    data = batch()
    rows = data["anchored"]
    torch.manual_seed(1)
    losses = model.compute_loss(dict(data))
    torch.manual_seed(1)  # the same noise again: the trained pass draws it, the base pass must draw none
    trained = model.llm(**{k: v for k, v in data.items() if k != "anchored"}).logits[rows]
    noisy.remove()
    with torch.no_grad(), model.llm.disable_adapter():
        base = model.llm(**{k: v[rows] for k, v in data.items() if k not in ("labels", "anchored")}).logits
    expected = 2.0 * base_anchor_kl(trained, base, data["labels"][rows])
    assert losses["anchor_loss"].item() > 0.01
    assert losses["anchor_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    losses["anchor_loss"].backward()
    moved = {n for n, p in model.llm.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved and all("lora_" in name for name in moved)


def test_a_bad_weight_is_one_line(tiny_model_dir):
    for bad in (-0.5, "strong", float("nan")):
        with pytest.raises(SettingError, match="anchor_weight"):
            anchored(tiny_model_dir, bad)


def test_the_cpu_config_trains_with_the_anchor_under_xtuner_train(tmp_path, tiny_model_dir):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_eval_hook import train

    work_dir = tmp_path / "anchored"
    result = train(tmp_path, tiny_model_dir, [], work_dir, epochs=1,
                   extra=("--cfg-options", "model.anchor_weight=1.0", "train_dataloader.dataset.general_ratio=1.0"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    logged = [line for line in output.splitlines() if "Iter(train)" in line]
    assert logged and all("anchor_loss:" in line for line in logged), logged
    import re

    assert any(float(re.search(r"anchor_loss: ([0-9.e+-]+)", line).group(1)) > 0 for line in logged), logged
