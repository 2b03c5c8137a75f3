"""XTuner's SupervisedFinetune for packed rows, with a loss that never builds the full logits.

Two things make stock XTuner slow on short chat samples at one GPU: rows of ~1k tokens leave the
GPU idle between kernels, and the (tokens x vocabulary) float32 logits (0.4 GB per 1k tokens for
InternLM2's 92,544 words, plus their gradient) cap how many tokens fit in a step. Here:
- rows come from `PackedChatDataset` and attend only within each conversation (packing.py);
- on CUDA, attention is routed through the per-conversation mask by `DocumentAttention` (dense,
  or with `flex_attention=True` as flex_attention with a block mask that skips the blocks between
  conversations: not yet measured on a GPU); elsewhere, SDPA with the additive mask;
- logits are computed only at answer tokens (labels != -100) and in chunks, each chunk recomputed
  in the backward pass, so their memory stays one chunk whatever the row length.
The loss is the same token-mean cross-entropy as `SupervisedFinetune` (tests/test_packing.py).
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig
from xtuner.model import SupervisedFinetune

from xtuner_assistant.chat_template import IGNORE_INDEX
from xtuner_assistant.packing import block_diagonal_causal_mask

LOSS_CHUNK_TOKENS = 1024
_log = logging.getLogger(__name__)


class DocumentAttention:
    """Routes the models' own `F.scaled_dot_product_attention` calls for the current packed batch
    through the per-conversation mask: as a dense boolean mask (what the measured GPU runs used),
    or with `flex=True` as flex_attention with a block mask that skips the blocks between
    conversations. Installed once; the batch's documents stay current until the next packed
    forward, so gradient checkpointing's recomputation in the backward pass uses them too. Calls of
    any other shape (generation, other models) pass through. Should flex_attention fail (an old
    torch or triton), the dense mask is used from then on, with a warning."""

    def __init__(self):
        self.original = torch.nn.functional.scaled_dot_product_attention
        self.flex = None
        self.flex_failed = False
        self.block_mask = self.documents = None

    @classmethod
    def installed(cls, flex: bool = False) -> "DocumentAttention":
        global _document_attention
        if _document_attention is None:
            _document_attention = cls()
            torch.nn.functional.scaled_dot_product_attention = _document_attention.as_function()
        if flex and _document_attention.flex is None and not _document_attention.flex_failed:
            try:
                from torch.nn.attention.flex_attention import flex_attention

                _document_attention.flex = torch.compile(flex_attention, dynamic=False)
            except ImportError as error:
                _document_attention._give_up_flex(error)
        return _document_attention

    def _give_up_flex(self, error) -> None:
        _log.warning("flex_attention failed (%s); packed rows use SDPA with a dense mask", error)
        self.flex, self.flex_failed, self.block_mask = None, True, None

    def set_documents(self, document_ids: torch.Tensor) -> None:
        self.documents = document_ids
        self.block_mask = None
        if self.flex is None:
            return
        from torch.nn.attention.flex_attention import create_block_mask

        def same_document_causal(b, h, q, k):
            return (document_ids[b, q] == document_ids[b, k]) & (q >= k)

        batch, n = document_ids.shape
        self.block_mask = create_block_mask(same_document_causal, batch, None, n, n, device=document_ids.device)

    def as_function(self):
        """A plain function with SDPA's name and signature: torch's compiler inspects
        `F.scaled_dot_product_attention` and expects a function there."""
        @functools.wraps(self.original)
        def scaled_dot_product_attention(*args, **kwargs):
            return self(*args, **kwargs)

        return scaled_dot_product_attention

    def _ours(self, query, key, attn_mask, dropout_p) -> bool:
        return (self.documents is not None and attn_mask is not None and dropout_p == 0.0
                and query.shape[0] == self.documents.shape[0] and query.shape[1] == key.shape[1]
                and query.shape[-2] == key.shape[-2] == self.documents.shape[1])

    def __call__(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if not self._ours(query, key, attn_mask, dropout_p):
            return self.original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                 scale=scale, **kwargs)
        if self.flex is not None and self.block_mask is not None:
            try:
                return self.flex(query, key, value, block_mask=self.block_mask, scale=scale)
            except Exception as error:  # noqa: BLE001 -- compile failures come in many types
                self._give_up_flex(error)
        documents = self.documents
        allowed = (documents[:, :, None] == documents[:, None, :]).tril()[:, None]
        return self.original(query, key, value, attn_mask=allowed, scale=scale)


_document_attention: DocumentAttention | None = None


def _chunk_loss_sum(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def answer_token_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module,
                      document_ids: torch.Tensor | None = None, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Mean next-token cross-entropy over answer tokens, with hidden (batch, n, d), labels (batch, n)."""
    targets = labels[:, 1:].clone()
    if document_ids is not None:
        # The last token of one conversation must not be trained to predict the next one's first.
        targets[document_ids[:, 1:] != document_ids[:, :-1]] = IGNORE_INDEX
    keep = targets != IGNORE_INDEX
    hidden, targets = hidden[:, :-1][keep], targets[keep]
    if targets.numel() == 0:
        return hidden.sum() * 0.0
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        total = total + checkpoint(_chunk_loss_sum, hidden[piece], targets[piece], head, use_reentrant=False)
    return total / targets.numel()


def causal_lm_parts(llm) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder stack, output head) of a causal LM, under a PEFT wrapper or not. Calling the
    decoder directly still runs the LoRA layers, which PEFT injects into its modules."""
    model = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    decoder = getattr(model, "model", None)
    if decoder is None:
        raise TypeError(f"{type(model).__name__}: no `.model` decoder; packed training supports "
                        "Llama/Qwen2/InternLM2-style causal LMs")
    return decoder, model.get_output_embeddings()


class PackedSupervisedFinetune(SupervisedFinetune):
    """`SupervisedFinetune` whose batches may carry `document_ids` (from `packed_collate_fn`)."""

    loss_chunk_tokens = LOSS_CHUNK_TOKENS

    def __init__(self, *args, flex_attention: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.flex_attention = flex_attention

    def _dispatch_lm_model_cfg(self, cfg, max_position_embeddings=None):
        cfg = super()._dispatch_lm_model_cfg(cfg, max_position_embeddings)
        wanted = cfg.get("attn_implementation")
        config = AutoConfig.from_pretrained(cfg["pretrained_model_name_or_path"], trust_remote_code=True)
        if wanted and getattr(config, "attn_implementation", wanted) != wanted:
            # InternLM2's own modeling code picks its attention from this config field ("eager" in
            # the published config.json), not from the from_pretrained argument.
            config.attn_implementation = wanted
            cfg["config"] = config
        return cfg

    def compute_loss(self, data, data_samples=None):
        data = dict(data)
        labels = data.pop("labels")
        document_ids = data.pop("document_ids", None)
        decoder, head = causal_lm_parts(self.llm)
        if document_ids is not None:
            dtype = decoder.get_input_embeddings().weight.dtype
            if not dtype.is_floating_point or dtype == torch.float32:
                dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.float32
            if document_ids.is_cuda:
                DocumentAttention.installed(self.flex_attention).set_documents(document_ids)
                # The models still need a 4-D mask to skip their own causal mask; the router
                # ignores its values, so a zero-stride one costs no memory.
                batch, n = document_ids.shape
                data["attention_mask"] = torch.zeros((), dtype=dtype, device=document_ids.device).expand(batch, 1, n, n)
            else:
                data["attention_mask"] = block_diagonal_causal_mask(document_ids, dtype)
        hidden = decoder(**data, use_cache=False).last_hidden_state
        return {"loss": answer_token_loss(hidden, labels, head, document_ids, self.loss_chunk_tokens)}
