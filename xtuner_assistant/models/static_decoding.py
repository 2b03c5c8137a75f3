"""Greedy decoding of a batch with a static KV cache, each new token one replay of a CUDA graph.

Token by token, a chat model's decoding on a GPU waits on Python and on kernel launches, not on its
arithmetic: `generate()` grows its cache and launches every kernel of every layer again for each
token. Here the cache is allocated once for the prompt and the longest answer, so every step has
the same shapes and the same addresses; the step (forward pass, greedy pick, end-of-turn
bookkeeping) is captured once as a CUDA graph and replayed for each token after. The answers are
`generate()`'s greedy ones (tests/test_static_decoding.py compares them token for token on the CPU, where
the same loop runs without the graph).

`replies` (generation.py) decodes this way where it can (`usable`): a CUDA model whose architecture
takes transformers' StaticCache and does not run flash-attention-2 layers, greedy, no repetition
penalty; `XA_STATIC_DECODING=0` turns it off. Anywhere else it calls `generate()`.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import sys

import torch
import torch.nn.functional as F

_log = logging.getLogger(__name__)

# Steps between checks of whether every answer has ended: each check waits for the GPU.
CHECK_EVERY = 8
_GAVE_UP = "_xa_static_decoding_failed"  # set on a model whose forward the static loop does not fit


def usable(model, settings: dict) -> bool:
    """Whether `model` can decode with a static cache and a CUDA graph under these generation settings."""
    if os.environ.get("XA_STATIC_DECODING", "1") == "0":  # the escape hatch, and the benchmark's other arm
        return False
    if getattr(model, _GAVE_UP, False):
        return False
    if settings.get("do_sample") or settings.get("repetition_penalty", 1.0) not in (None, 1.0) \
            or not settings.get("max_new_tokens", 0) >= 1:  # generate() says what is wrong with 0
        return False
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != "cuda" or not getattr(model, "_supports_static_cache", False):
        return False
    config = model.config
    attention = {getattr(config, "_attn_implementation", None), getattr(config, "attn_implementation", None)}
    return "flash_attention_2" not in attention


def give_up(model, error: Exception) -> None:
    """After `greedy_decode` failed on `model`: say so once, and let it answer through `generate()` from now on."""
    setattr(model, _GAVE_UP, True)
    _log.warning("answering through generate(): decoding with a static cache failed (%s: %s)", type(error).__name__, error)


def _static_cache(model, batch: int, length: int, device, dtype):
    from transformers import StaticCache

    parameters = inspect.signature(StaticCache.__init__).parameters
    size = {"max_batch_size": batch} if "max_batch_size" in parameters else {"batch_size": batch}
    return StaticCache(config=model.config, max_cache_len=length, device=device, dtype=dtype, **size)


def _without_kv_copies(decode):
    """`decode(model, ...)` inside `grouped_attention_without_copies(model)`."""
    @functools.wraps(decode)
    def decode_without_copies(model, *args, **kwargs):
        with grouped_attention_without_copies(model):
            return decode(model, *args, **kwargs)

    return decode_without_copies


@torch.inference_mode()
@_without_kv_copies
def greedy_decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                  stop_ids: list[int], pad_id: int, cuda_graph: bool | None = None) -> torch.Tensor:
    """`generate()`'s greedy output for left-padded `input_ids`: the prompt, then each row's answer up
    to and including its first stop token, `pad_id` after it, as long as the longest answer.
    `cuda_graph`: replay each step from one CUDA graph (default: on a CUDA model); where capturing
    fails, the steps run eagerly from where they were, with a warning."""
    batch, width = input_ids.shape
    device = input_ids.device
    cuda_graph = device.type == "cuda" if cuda_graph is None else cuda_graph
    dtype = model.get_input_embeddings().weight.dtype
    cache = _static_cache(model, batch, width + max_new_tokens, device, dtype)
    mask = torch.ones(batch, width + max_new_tokens, dtype=attention_mask.dtype, device=device)
    mask[:, :width] = attention_mask
    positions = attention_mask.long().cumsum(-1) - 1  # as generate() numbers left-padded prompts
    positions.masked_fill_(attention_mask == 0, 1)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes it through
    keep_last = {"num_logits_to_keep": 1} if "num_logits_to_keep" in inspect.signature(inner.forward).parameters else {}
    stop = torch.tensor(stop_ids, device=device)

    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   cache_position=torch.arange(width, device=device), use_cache=True, **keep_last).logits
    first = logits[:, -1, :].argmax(-1)
    # The step's state: fixed tensors that the step (and its graph) update in place.
    answers = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    answers[:, 0] = first
    finished = torch.isin(first, stop)
    token = first[:, None].clone()
    position = positions[:, -1:] + 1
    cache_position = torch.tensor([width], device=device)
    column = torch.tensor([1], device=device)
    pad = torch.tensor(pad_id, device=device)

    def step():
        logits = model(input_ids=token, attention_mask=mask, position_ids=position, past_key_values=cache,
                       cache_position=cache_position, use_cache=True).logits
        chosen = torch.where(finished, pad, logits[:, -1, :].argmax(-1))
        answers.index_copy_(1, column, chosen[:, None])
        finished.logical_or_(torch.isin(chosen, stop))
        token.copy_(chosen[:, None])
        position.add_(1)
        cache_position.add_(1)
        column.add_(1)

    graph = None
    for made in range(1, max_new_tokens):
        if made % CHECK_EVERY == 0 and bool(finished.all()):
            break
        if graph is not None:
            graph.replay()
            continue
        if cuda_graph and made == 2:  # step 1 ran eagerly: the warm-up a capture needs
            graph = _captured(step)
            if graph is not None:
                graph.replay()
                continue
        step()
    # As long as the longest answer: up to its first stop token, or all of it where one has none.
    stops = torch.isin(answers, stop)
    ends = torch.where(stops.any(-1), stops.int().argmax(-1) + 1, torch.full_like(finished, max_new_tokens, dtype=torch.long))
    return torch.cat([input_ids, answers[:, :int(ends.max())]], dim=1)


@contextlib.contextmanager
def grouped_attention_without_copies(model):
    """While decoding, grouped-query attention reads each key/value head once instead of copying the
    whole static cache to the query heads' count for every token and layer (transformers' and InternLM2's
    `repeat_kv`; on InternLM2-1.8B's shape a third of the evaluation pass's GPU time). The query heads
    that share a key/value head are folded into the query length, with the attention mask repeated to
    match, which is the same attention. Only for SDPA attention (an eager `repeat_kv` feeds a matmul) and
    only where a mask is passed (no `is_causal` to fold); otherwise the heads are repeated as before."""
    from transformers.integrations import sdpa_attention

    attention = [m for m in model.modules() if hasattr(m, "num_key_value_groups")]
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None)
    modules = [m for m in {sys.modules.get(type(m).__module__) for m in attention} | {sdpa_attention}
               if m is not None and callable(getattr(m, "repeat_kv", None))]
    if not attention or all(m.num_key_value_groups == 1 for m in attention) \
            or not all(_runs_sdpa(m, implementation) for m in attention):
        yield
        return
    own = {module: module.repeat_kv for module in modules}
    sdpa = F.scaled_dot_product_attention
    for module in modules:
        module.repeat_kv = _heads_as_they_are
    F.scaled_dot_product_attention = functools.partial(_grouped_sdpa, sdpa)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa
        for module, repeat in own.items():
            module.repeat_kv = repeat


def _runs_sdpa(attention: torch.nn.Module, implementation: str | None) -> bool:
    """A model's own SDPA class (InternLM2's code), or transformers' attention set to SDPA."""
    if "Sdpa" in type(attention).__name__:
        return True
    return type(attention).__module__.startswith("transformers.models.") and implementation == "sdpa"


def _heads_as_they_are(hidden_states: torch.Tensor, n_rep: int) -> torch.Tensor:
    return hidden_states


def _grouped_sdpa(sdpa, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    heads, kv_heads = query.shape[-3], key.shape[-3]
    groups = heads // kv_heads
    grouped = heads != kv_heads and not kwargs.get("enable_gqa")
    if not grouped or attn_mask is None or is_causal or query.dim() != 4 or attn_mask.dim() != 4 \
            or heads % kv_heads or attn_mask.shape[-3] not in (1, heads):
        if grouped:  # repeat the heads, as before
            key, value = key.repeat_interleave(groups, dim=-3), value.repeat_interleave(groups, dim=-3)
        return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                    **kwargs)
    batch, _, length, dim = query.shape
    # query head h = k * groups + g attends with key/value head k: row g * length + i of head k's queries
    folded = query.reshape(batch, kv_heads, groups * length, dim)
    if attn_mask.shape[-3] == 1:
        mask = attn_mask.unsqueeze(2).expand(*attn_mask.shape[:2], groups, *attn_mask.shape[2:])
    else:
        mask = attn_mask.reshape(attn_mask.shape[0], kv_heads, groups, *attn_mask.shape[2:])
    mask = mask.reshape(mask.shape[0], mask.shape[1], groups * length, mask.shape[-1])
    out = sdpa(folded, key, value, attn_mask=mask, dropout_p=dropout_p, scale=scale, **kwargs)
    return out.reshape(batch, heads, length, out.shape[-1])


def _captured(step):
    """`step` captured as a CUDA graph (recorded, not run), or None, with a warning, where it cannot be."""
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except Exception as error:  # noqa: BLE001 -- capture fails in many types (a host sync, an unsupported op)
        _log.warning("decoding each token eagerly: the decoding step could not be captured as a CUDA graph (%s)",
                     str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None
    return graph
