"""NEFTune (Jain et al., 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"): while
training, uniform noise is added to the input embeddings, scaled by alpha / sqrt(sequence length x
hidden size), as in transformers' `neftune_post_forward_hook` and TRL's `neftune_noise_alpha`. A model
that sees its training questions a little blurred must answer from their meaning rather than their
exact tokens, which is what identity questions phrased in new ways ask of it.

The noise is added only while the embedding layer is in training mode: the evaluation hook's answers,
replay and every exported model see clean embeddings.
"""
from __future__ import annotations

import math

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


def add_embedding_noise(embeddings: torch.Tensor, alpha: float) -> torch.Tensor:
    """`embeddings` (batch, length, hidden) plus U(-m, m) noise, m = alpha / sqrt(length * hidden)."""
    magnitude = alpha / math.sqrt(embeddings.size(1) * embeddings.size(2))
    return embeddings + torch.empty_like(embeddings).uniform_(-magnitude, magnitude)


@HOOKS.register_module()
class EmbeddingNoiseHook(Hook):
    """Adds NEFTune noise to the LLM's input embeddings during training; `alpha` 0 adds none."""

    priority = "NORMAL"

    def __init__(self, alpha: float = 5.0):
        if not alpha >= 0:
            raise ValueError(f"EmbeddingNoiseHook: alpha must be 0 or more, got {alpha!r}")
        self.alpha = float(alpha)
        self.handle = None

    def before_train(self, runner) -> None:
        if not self.alpha:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        embedding = model.llm.get_input_embeddings()

        def noisy(module, inputs, output):
            return add_embedding_noise(output, self.alpha) if module.training else output

        self.handle = embedding.register_forward_hook(noisy)
        runner.logger.info(f"NEFTune: noise of alpha {self.alpha:g} on the input embeddings while training")

    def after_train(self, runner) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
