"""An anchor to the base model: on the mix's general and replayed conversations, a KL term holds the
trained model's next-token distribution at the base model's (the same weights with the adapter off),
while identity conversations are learned from their labels alone.

Why: leakage is the identity's tokens given to a general question. Replay shows the model one sampled
answer of the base per general question; the anchor shows it the base's whole distribution at every
answer token of every general conversation, which is where leakage starts (a "我是" of more weight after
a Chinese general question). It is Learning without Forgetting (Li & Hoiem, 2016) applied to the
general part of the mix, with the base model as its own teacher: no second model is loaded, the
adapter is switched off for one forward pass without gradients.

`anchor_weight` 0 trains exactly as XTuner's SupervisedFinetune (no extra pass).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from xtuner.model import SupervisedFinetune

from xtuner_assistant.chat_template import IGNORE_INDEX

ANCHORED_KINDS = ("general", "replay")  # MixedChatDataset's kinds whose answers stay the base model's


def anchored_collate_fn(instances: Sequence[dict], **kwargs) -> dict:
    """XTuner's default_collate_fn, and `anchored`: which rows (batch,) are general or replayed
    conversations (each instance's `kind`, from MixedChatDataset)."""
    from xtuner.dataset.collate_fns import default_collate_fn

    batch = default_collate_fn(instances, **kwargs)
    batch["data"]["anchored"] = torch.tensor([instance.get("kind") in ANCHORED_KINDS for instance in instances])
    return batch


def base_anchor_kl(logits: torch.Tensor, base_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the answer tokens of KL(base || trained) of the next-token distributions: `logits` and
    `base_logits` (rows, n, vocab) predict `labels` (rows, n) shifted by one, as the causal LM loss does."""
    answers = labels[:, 1:] != IGNORE_INDEX
    if not answers.any():
        return logits.sum() * 0.0
    trained = F.log_softmax(logits[:, :-1][answers].float(), dim=-1)
    base = F.log_softmax(base_logits[:, :-1][answers].float(), dim=-1)
    return F.kl_div(trained, base, log_target=True, reduction="batchmean")


class AnchoredSupervisedFinetune(SupervisedFinetune):
    """SupervisedFinetune whose general and replayed rows also pay `anchor_weight` x base_anchor_kl."""

    def __init__(self, *args, anchor_weight: float = 0.0, **kwargs):
        from xtuner_assistant.training.settings import SettingError

        try:
            anchor_weight = float(anchor_weight)
        except (TypeError, ValueError):
            raise SettingError(f"model.anchor_weight={anchor_weight!r}: expected a number of 0 or more") from None
        if not anchor_weight >= 0:
            raise SettingError(f"model.anchor_weight={anchor_weight!r}: expected a number of 0 or more")
        super().__init__(*args, **kwargs)
        self.anchor_weight = anchor_weight

    def compute_loss(self, data, data_samples=None):
        anchored = data.pop("anchored", None)
        if not self.anchor_weight or anchored is None or not bool(anchored.any()):
            losses = super().compute_loss(data, data_samples)
            if self.anchor_weight:  # the same keys every step, so the log's columns stay put
                losses["anchor_loss"] = losses["loss"].detach() * 0.0
            return losses
        outputs = self.llm(**data)
        rows = anchored.to(data["input_ids"].device)
        inputs = {key: value[rows] for key, value in data.items() if key != "labels" and value is not None}
        embedding = self.llm.get_input_embeddings()
        was_training = embedding.training
        embedding.eval()  # the base model's answers as it gives them: no NEFTune noise on its embeddings
        try:
            with torch.no_grad(), self.llm.disable_adapter():
                base_logits = self.llm(**inputs).logits
        finally:
            embedding.train(was_training)
        anchor = base_anchor_kl(outputs.logits[rows], base_logits, data["labels"][rows])
        return {"loss": outputs.loss, "anchor_loss": self.anchor_weight * anchor}
