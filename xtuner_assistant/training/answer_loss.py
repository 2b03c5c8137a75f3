"""The packed configs' loss: mean next-token cross-entropy over answer tokens, with logits computed in
chunks of the output head, so their memory stays one chunk whatever the row length. Two forms, the
same number:
- `answer_token_loss` selects the answer tokens first (the eager step: no logits for the rest);
- `fixed_shape_answer_loss` gathers them into a fixed number of slots, or scores every position with
  the others ignored, so its shapes do not depend on the data (the step captured as a CUDA graph,
  graphed_step.py).
In both, the last token of one packed conversation is not trained to predict the next one's first.

Where the output head is a linear layer with a frozen weight (LoRA training; a LoRA adapter on the
head itself included), each chunk's gradients are computed in the forward pass, from the
probabilities it already has (`_LossWithGradientInForward`, as Liger Kernel's fused linear
cross-entropy does): the backward pass then only scales them, instead of computing the chunk's logits
and softmax a second time. Any other head is checkpointed chunk by chunk and recomputed.
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


class _LossWithGradientInForward(torch.autograd.Function):
    """Summed cross-entropy of hidden (tokens, d) against targets through a linear head whose weight is
    frozen, with or without a LoRA adapter on it (InternLM2's `output` gets one from XTuner), chunk by
    chunk. The gradients (softmax minus the target's one-hot, through the head) are made in the same
    pass and kept: for hidden, and for the adapter's A and B when there is one. Memory: one chunk's
    logits, one (tokens, d) tensor and the adapter's size."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, lora_a, lora_b, scaling, targets, chunk_tokens):
        total = hidden.new_zeros((), dtype=torch.float32)
        gradient = torch.empty_like(hidden)
        lora = lora_a is not None
        if lora:
            gradient_a, gradient_b = torch.zeros_like(lora_a), torch.zeros_like(lora_b)
        for start in range(0, targets.numel(), chunk_tokens):
            piece = slice(start, start + chunk_tokens)
            states = hidden[piece]
            wanted = targets[piece]
            ignored = wanted == IGNORE_INDEX
            wanted = wanted.masked_fill(ignored, 0)[:, None]
            logits = F.linear(states, weight, bias)
            if lora:  # as PEFT's Linear: the input in the adapter's dtype, the sum in the layer's
                down = F.linear(states.to(lora_a.dtype), lora_a)
                logits = logits + (F.linear(down, lora_b) * scaling).to(logits.dtype)
                down = down.masked_fill(ignored[:, None], 0.0)
            logits = logits.float()
            log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
            total = total + (log_norm - logits.gather(1, wanted)).squeeze(1).masked_fill(ignored, 0).sum()
            probabilities = logits.sub_(log_norm).exp_()  # in place: the chunk's logits are not needed again
            probabilities.scatter_add_(1, wanted, probabilities.new_full(wanted.shape, -1.0))
            d_logits = probabilities.to(weight.dtype)  # an ignored row is zeroed in the small products below
            d_states = d_logits @ weight
            if lora:
                d_down = ((d_logits @ lora_b.to(d_logits.dtype)) * scaling).masked_fill_(ignored[:, None], 0.0)
                d_states = d_states + d_down @ lora_a.to(d_down.dtype)
                gradient_b += (d_logits.transpose(0, 1) @ down.to(d_logits.dtype)) * scaling
                gradient_a += d_down.transpose(0, 1) @ states.to(d_down.dtype)
            gradient[piece] = d_states.masked_fill_(ignored[:, None], 0.0)
        ctx.save_for_backward(gradient, *((gradient_a, gradient_b) if lora else ()))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        gradient, *adapter = ctx.saved_tensors
        scaled = [g * grad_total.to(g.dtype) for g in (gradient, *adapter)]
        gradient_a, gradient_b = scaled[1:] if adapter else (None, None)
        return scaled[0], None, None, gradient_a, gradient_b, None, None, None


def _head_parts(head: torch.nn.Module) -> tuple | None:
    """(weight, bias, lora_a, lora_b, scaling) of a linear head whose own weight is frozen, plain
    (lora_a = lora_b = None) or with one active PEFT LoRA adapter of no dropout; else None: a trained,
    quantized or other head (DoRA, dropout, several adapters) keeps autograd's own path."""
    base, lora_a, lora_b, scaling = head, None, None, 1.0
    if type(head).__name__ == "Linear" and hasattr(head, "lora_A") and hasattr(head, "base_layer"):  # PEFT's
        adapters = list(getattr(head, "active_adapters", []))
        if head.merged or head.disable_adapters or len(adapters) != 1 or adapters[0] not in head.lora_A \
                or head.use_dora.get(adapters[0], False) or getattr(head, "lora_variant", {}).get(adapters[0]):
            return None
        name = adapters[0]
        down, up = head.lora_A[name], head.lora_B[name]
        if type(head.lora_dropout[name]) is not torch.nn.Identity or down.bias is not None or up.bias is not None \
                or type(down) is not torch.nn.Linear or type(up) is not torch.nn.Linear:
            return None
        base, lora_a, lora_b, scaling = head.base_layer, down.weight, up.weight, float(head.scaling[name])
    if type(base) is not torch.nn.Linear or any(p.requires_grad for p in base.parameters()):
        return None
    return base.weight, base.bias, lora_a, lora_b, scaling


def _chunked_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, chunk_tokens: int,
                      preserve_rng_state: bool) -> torch.Tensor:
    """Summed cross-entropy of hidden (tokens, d) against targets (tokens,), one chunk at a time: the
    gradients made in the forward pass for a linear head with a frozen weight (and maybe LoRA), else
    each chunk checkpointed."""
    parts = _head_parts(head)
    if parts is not None and hidden.requires_grad:
        return _LossWithGradientInForward.apply(hidden, *parts, targets, chunk_tokens)
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


def answer_targets_in_row(labels: torch.Tensor, document_ids: torch.Tensor | None) -> int:
    """How many positions of a row `answer_token_loss` scores (for the captured step's `answer_slots`)."""
    return int((_next_token_targets(labels, document_ids) != IGNORE_INDEX).sum())


def fixed_shape_answer_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                            document_ids: torch.Tensor, chunk_tokens: int,
                            answer_slots: int | None = None) -> torch.Tensor:
    """`answer_token_loss` with shapes that do not depend on the data. With `answer_slots`, the answer
    positions are gathered, in order, into that many slots, the rest ignored (the row must hold no more
    answer positions, `answer_targets_in_row`); without, every position is scored, non-answers ignored.
    Both without reading anything back to the host. No RNG state is saved for a recomputation (inside
    a graph nothing random runs)."""
    targets = _next_token_targets(labels, document_ids).flatten()
    hidden = hidden[:, :-1].flatten(0, 1)
    if answer_slots is not None and answer_slots < targets.numel():
        is_answer = targets != IGNORE_INDEX
        slot = torch.where(is_answer, is_answer.cumsum(0) - 1, answer_slots).clamp_max(answer_slots)
        # one slot more, for the positions that are not answers; dropped after
        positions = torch.zeros(answer_slots + 1, dtype=torch.long, device=targets.device)
        positions.scatter_(0, slot, torch.arange(targets.numel(), device=targets.device))
        kept = torch.full((answer_slots + 1,), IGNORE_INDEX, dtype=targets.dtype, device=targets.device)
        kept.scatter_(0, slot, targets)  # the extra slot gets only ignored targets
        hidden, targets = hidden.index_select(0, positions[:answer_slots]), kept[:answer_slots]
    total = _chunked_loss_sum(hidden, targets, head, chunk_tokens, preserve_rng_state=False)
    return total / (targets != IGNORE_INDEX).sum().clamp_min(1)
