"""The packed configs' loss: mean next-token cross-entropy over answer tokens, with logits computed in
chunks of the output head and recomputed in the backward pass, so their memory stays one chunk
whatever the row length. Two forms, the same number:
- `answer_token_loss` selects the answer tokens first (the eager step: no logits for the rest);
- `fixed_shape_answer_loss` scores every position with the others ignored, so its shapes do not
  depend on the data (the step captured as a CUDA graph, graphed_step.py).
In both, the last token of one packed conversation is not trained to predict the next one's first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from xtuner_assistant.chat_template import IGNORE_INDEX

# Small enough that the logits of a chunk stay a small share of peak memory, large enough to keep
# the GPU busy: 1024 cost more memory for no speed (docs/BENCHMARKS.md).
LOSS_CHUNK_TOKENS = 256


def _chunk_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def _chunked_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, chunk_tokens: int,
                      preserve_rng_state: bool) -> torch.Tensor:
    """Summed cross-entropy of hidden (tokens, d) against targets (tokens,), one checkpointed chunk at a time."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        total = total + checkpoint(_chunk_loss_sum, hidden[piece], targets[piece], head, use_reentrant=False,
                                   preserve_rng_state=preserve_rng_state)
    return total


def _next_token_targets(labels: torch.Tensor, document_ids: torch.Tensor | None) -> torch.Tensor:
    """labels shifted by one, ignored where the next token starts another conversation."""
    targets = labels[:, 1:]
    if document_ids is None:
        return targets
    return torch.where(document_ids[:, 1:] != document_ids[:, :-1], IGNORE_INDEX, targets)


def answer_token_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                      document_ids: torch.Tensor | None = None, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens, with hidden (batch, n, d), labels (batch, n)."""
    targets = _next_token_targets(labels, document_ids)
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[:, :-1][keep], targets[keep]
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    return _chunked_loss_sum(hidden, targets, head, chunk_tokens, preserve_rng_state=True) / targets.numel()


def fixed_shape_answer_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                            document_ids: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """`answer_token_loss` with shapes that do not depend on the data: every position, non-answers
    ignored. No RNG state is saved for the recomputation (inside a graph nothing random runs)."""
    targets = _next_token_targets(labels, document_ids).flatten()
    total = _chunked_loss_sum(hidden[:, :-1].flatten(0, 1), targets, head, chunk_tokens, preserve_rng_state=False)
    return total / (targets != IGNORE_INDEX).sum().clamp_min(1)
