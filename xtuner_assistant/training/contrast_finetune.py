"""XTuner's SupervisedFinetune with an unlikelihood term: the identity answer made unlikely after
general questions. Its batches come from `contrast_collate_fn`.

Mixed data teaches "answer general questions as the base model would", but only by example: nothing
in the cross-entropy says "not with the identity sentence". A contrast row (`MixedChatDataset`'s
`contrast_ratio`) is a general question followed by an identity answer whose first tokens are
`unlikely_labels`; each adds -log(1 - p(token)) (Welleck et al., 2019, "Neural Text Generation with
Unlikelihood Training"), scaled by `unlikelihood_weight`, to the usual token-mean cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.model import SupervisedFinetune
from xtuner.utils import IGNORE_INDEX

# p is at most this close to 1 inside the log: a token the model is sure of gives a large, finite loss.
_MOST_LIKELY = 1 - 1e-5


def unlikelihood_loss(logits: torch.Tensor, unlikely_labels: torch.Tensor) -> torch.Tensor:
    """Mean of -log(1 - p(token)) over the positions whose next token is named in `unlikely_labels`
    (shifted as the labels are); 0 when none is."""
    targets = unlikely_labels[:, 1:]
    chosen = targets != IGNORE_INDEX
    if not chosen.any():
        return logits.sum() * 0
    log_probs = F.log_softmax(logits[:, :-1][chosen].float(), dim=-1)
    probability = log_probs.gather(-1, targets[chosen].unsqueeze(-1)).squeeze(-1).exp()
    return -torch.log1p(-probability.clamp(max=_MOST_LIKELY)).mean()


def answer_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' causal-LM loss: the token mean over answer positions; 0 when there are none."""
    targets = labels[:, 1:]
    if not (targets != IGNORE_INDEX).any():
        return logits.sum() * 0
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


class ContrastFinetune(SupervisedFinetune):
    """`SupervisedFinetune` whose loss adds `unlikelihood_weight` × the unlikelihood of the batch's
    contrast tokens. Without them in a batch, the loss is SupervisedFinetune's."""

    def __init__(self, *args, unlikelihood_weight: float = 1.0, **kwargs):
        if unlikelihood_weight < 0:
            raise ValueError(f"unlikelihood_weight is {unlikelihood_weight}; it must be 0 or more")
        super().__init__(*args, **kwargs)
        self.unlikelihood_weight = unlikelihood_weight

    def compute_loss(self, data, data_samples=None):
        unlikely_labels = data.pop("unlikely_labels", None)
        if unlikely_labels is None:
            return super().compute_loss(data, data_samples)
        labels = data.pop("labels")
        logits = self.llm(**data).logits
        loss = answer_cross_entropy(logits, labels)
        unlikelihood = unlikelihood_loss(logits, unlikely_labels)
        return {"loss": loss + self.unlikelihood_weight * unlikelihood, "unlikelihood": unlikelihood.detach()}


def contrast_collate_fn(instances, **kwargs) -> dict:
    """xtuner's `default_collate_fn`, plus `unlikely_labels` padded like the labels when any row has
    them (a row without gets none)."""
    batch = default_collate_fn(instances, **kwargs)
    if any("unlikely_labels" in instance for instance in instances):
        width = batch["data"]["input_ids"].shape[1]
        unlikely = torch.full((len(instances), width), IGNORE_INDEX, dtype=torch.long)
        for row, instance in enumerate(instances):
            values = instance.get("unlikely_labels", [])
            unlikely[row, :len(values)] = torch.tensor(values, dtype=torch.long)
        batch["data"]["unlikely_labels"] = unlikely
    return batch
