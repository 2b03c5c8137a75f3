"""Attention that stays inside each packed conversation, routed under the models' own SDPA calls.

Packed rows (data/packing.py) hold several conversations; each must attend only to itself. Transformers'
Llama/Qwen2 and InternLM2's own code call `F.scaled_dot_product_attention`; `DocumentAttention`
replaces that function once and, for calls shaped like the current packed batch, computes, best
first:
- **varlen**: torch's flash-attention kernel over variable-length sequences
  (`torch.nn.attention.varlen.varlen_attn`, torch >= 2.9, CUDA, fp16/bf16): no mask at all, no work
  between conversations, memory linear in the row length. Checked once against the dense path on
  the running GPU (forward and gradients) before it is trusted: `prepare()` does it before a step
  runs, outside any compiled or checkpointed layer;
- **flex** (opt-in): flex_attention with a block mask that skips the blocks between conversations;
- **dense**: SDPA with a (row x row) boolean mask -- correct everywhere, but its mask and the
  kernels that accept one cost memory quadratic in the row length.
Any other call (generation, other shapes, other models) passes through untouched. A route that
fails is dropped with a warning and the next one is used from then on.

Compiled decoder layers call the router too, so nothing it reads inside a layer changes from row to
row except tensors: the longest conversation is bounded by the row length (a constant), and the
offsets' length (the number of conversations) is marked dynamic.
"""
from __future__ import annotations

import functools
import inspect
import logging

import torch

from xtuner_assistant.data.packing import allowed_pairs

_log = logging.getLogger(__name__)


def document_boundaries(document_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(cumulative start offsets as int32, a bound on the longest run) of the runs of equal ids in
    the flattened (batch, n) rows: the `cu_seqlens` and `max_seqlen` of varlen kernels. Every row
    starts a new run, so the row length n bounds every run; it is used instead of the longest run
    itself, which would be a new number for every row (a recompilation of every compiled layer)
    and a host-device sync to find."""
    batch, n = document_ids.shape
    flat = document_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::n] = True
    offsets = torch.cat([starts.nonzero().flatten(), flat.new_tensor([flat.numel()])]).to(torch.int32)
    return offsets, n


def _torch_varlen_kernel():
    """torch's varlen flash attention as f(q, k, v, offsets, longest, scale) with causal masking,
    whichever of its signatures this torch has; None where it has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters

    def kernel(query, key, value, offsets, longest, scale):
        kwargs = {"is_causal": True} if "is_causal" in parameters else {"window_size": (-1, 0)}
        if scale is not None:
            if "scale" not in parameters:
                if abs(scale - query.shape[-1] ** -0.5) > 1e-6:
                    raise ValueError("this torch's varlen_attn takes no scale")
            else:
                kwargs["scale"] = scale
        return varlen_attn(query, key, value, offsets, offsets, longest, longest, **kwargs)

    return kernel


class DocumentAttention:
    """The SDPA replacement; `installed()` puts one in place, `set_documents()` names the current
    packed batch's conversations (they stay current for gradient checkpointing's recomputation)."""

    def __init__(self, varlen_kernel=None):
        self.original = torch.nn.functional.scaled_dot_product_attention
        self.varlen = varlen_kernel
        self.varlen_dtypes = (torch.float16, torch.bfloat16)  # what flash-attention kernels take
        self.varlen_checked = False
        self.flex = None
        self.flex_failed = False
        self.block_mask = self.documents = self.boundaries = self.allowed = None
        self.route_used = None

    @classmethod
    def installed(cls, flex: bool = False) -> "DocumentAttention":
        global _document_attention
        if _document_attention is None:
            _document_attention = cls(varlen_kernel=_torch_varlen_kernel())
            torch.nn.functional.scaled_dot_product_attention = _document_attention.as_function()
        if flex and _document_attention.flex is None and not _document_attention.flex_failed:
            try:
                from torch.nn.attention.flex_attention import flex_attention

                _document_attention.flex = torch.compile(flex_attention, dynamic=False)
            except ImportError as error:
                _document_attention._give_up_flex(error)
        return _document_attention

    def _give_up_flex(self, error) -> None:
        _log.warning("flex_attention failed (%s); packed rows use the next attention route", error)
        self.flex, self.flex_failed, self.block_mask = None, True, None

    def _give_up_varlen(self, error) -> None:
        _log.warning("varlen flash attention unusable here (%s); packed rows use the next attention route", error)
        self.varlen = None

    def set_documents(self, document_ids: torch.Tensor) -> None:
        self.documents = document_ids
        self.block_mask = self.allowed = None
        self.boundaries = document_boundaries(document_ids) if self.varlen is not None else None
        if self.boundaries is not None:  # one compiled graph for any number of conversations
            torch._dynamo.maybe_mark_dynamic(self.boundaries[0], 0)
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
        dtype = self._half_dtype(query)
        if self.varlen is not None and dtype is not None:
            query, key, value = (x.to(dtype) for x in (query, key, value))
            if not self.varlen_checked:  # a caller that did not prepare(): check on first use
                self._check_varlen(dtype, query.shape[-1], query.device, scale)
            if self.varlen is not None:
                self._use("varlen")
                return self._varlen(query, key, value, scale)
        if self.flex is not None and self.block_mask is not None:
            try:
                out = self.flex(query, key, value, block_mask=self.block_mask, scale=scale)
                self._use("flex")
                return out
            except Exception as error:  # noqa: BLE001 -- compile failures come in many types
                self._give_up_flex(error)
        self._use("dense")
        if self.allowed is None:  # once per batch, not once per layer and recomputation
            self.allowed = allowed_pairs(self.documents)
        return self.original(query, key, value, attn_mask=self.allowed, scale=scale)

    def prepare(self, dtype: torch.dtype, head_dim: int) -> str:
        """Before a step of the current documents, whose attention runs in `dtype` with heads of
        `head_dim`: check the varlen route now, if it was not yet, and say which route packed rows
        take. Checked later, inside the first layer, the check would run inside a compiled graph and
        inside a checkpointed forward, whose recomputation would then save different tensors."""
        if self.varlen is not None and not self.varlen_checked and dtype in self.varlen_dtypes:
            self._check_varlen(dtype, head_dim, self.documents.device, None)
        route = ("varlen" if self.varlen is not None and dtype in self.varlen_dtypes
                 else "flex" if self.flex is not None and self.block_mask is not None else "dense")
        self._use(route)
        return route

    def _half_dtype(self, query):
        """The dtype the varlen kernel would run in, or None. Under autocast, float32 inputs (rotary
        embeddings in float32 promote q and k) go in autocast's dtype, as SDPA itself would take them."""
        if query.dtype in self.varlen_dtypes:
            return query.dtype
        device = query.device.type
        if query.dtype == torch.float32 and torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            return dtype if dtype in self.varlen_dtypes else None
        return None

    def _use(self, route: str) -> None:
        if torch.compiler.is_compiling():  # prepare() said it; a compiled layer keeps no such state
            return
        if route != self.route_used:
            _log.warning("packed attention route: %s", route)  # a warning, so that mmengine's log shows it
            self.route_used = route

    def _varlen(self, query, key, value, scale, boundaries=None):
        """(batch, heads, n, dim) in and out; the kernel sees (batch * n, heads, dim)."""
        batch, heads, n, dim = query.shape
        offsets, longest = boundaries or self.boundaries

        def tokens_first(x):
            return x.transpose(1, 2).reshape(batch * n, heads, x.shape[-1])

        out = self.varlen(tokens_first(query), tokens_first(key), tokens_first(value), offsets, longest, scale)
        return out.view(batch, n, heads, value.shape[-1]).transpose(1, 2)

    def _dense(self, query, key, value, documents, scale):
        return self.original(query, key, value, attn_mask=allowed_pairs(documents), scale=scale)

    def _check_varlen(self, dtype: torch.dtype, head_dim: int, device: torch.device, scale) -> None:
        """Once, on this GPU: the varlen route's output and gradients against the dense route's,
        on three short conversations. A torch whose kernel is missing, lacks a backward pass or
        disagrees is dropped before it can train anything."""
        self.varlen_checked = True
        try:
            generator = torch.Generator(device=device).manual_seed(0)
            documents = torch.tensor([[0] * 5 + [1] * 7 + [2] * 4], device=device)
            shape = (1, 2, documents.shape[1], head_dim)
            q, k, v = (torch.randn(shape, generator=generator, device=device).to(dtype).requires_grad_()
                       for _ in range(3))
            with torch.enable_grad():  # the first call may come from a checkpointed no-grad forward
                varlen_out = self._varlen(q, k, v, scale, boundaries=document_boundaries(documents))
                varlen_grads = torch.autograd.grad(varlen_out.float().square().sum(), (q, k, v))
                dense_out = self._dense(q, k, v, documents, scale)
                dense_grads = torch.autograd.grad(dense_out.float().square().sum(), (q, k, v))
            # Relative to each tensor's scale: half-precision rounding, not a wrong attention pattern.
            worst = max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()
                        for a, b in zip((varlen_out, *varlen_grads), (dense_out, *dense_grads)))
            if worst > 2e-2:
                raise ValueError(f"differs from the dense route by {worst:.3g} of its scale")
        except Exception as error:  # noqa: BLE001 -- missing kernels fail in many ways
            self._give_up_varlen(error)


_document_attention: DocumentAttention | None = None
