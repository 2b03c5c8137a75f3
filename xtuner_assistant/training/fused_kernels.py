"""Fewer, larger GPU kernels for a training step: fused decoder pieces and compiled decoder layers.

A packed QLoRA step of a 1.8B model launches ~5,300 kernels, most of them small elementwise ones
(docs/BENCHMARKS.md, "Where a step's time goes"). Two maintained tools launch fewer:
- `fuse_decoder`: Liger Kernel's fused RMSNorm, SiLU x up (SwiGLU) and rotary embedding, forward and
  backward one kernel each, in place of the model's own modules. Each replacement is first run beside
  the module it replaces, on the module's own device and dtype, and kept only if the outputs agree:
  a model whose code follows another convention (InternLM2 releases whose `apply_rotary_pos_emb`
  gathers `cos[position_ids]` itself, a norm with an offset) keeps its own forward.
- `compile_decoder_layers`: `torch.compile` of each decoder layer (regional compilation). Only
  training uses it; generation (the evaluation hook) runs the layers eagerly, so its growing KV cache
  never recompiles them. One graph serves every layer and row: the packed-attention router reads no
  per-row number inside a layer (document_attention.py), and activation checkpointing runs around
  each compiled layer in its non-reentrant kind (or inside it, `checkpoint_inside`: faster, more memory).
`PackedSupervisedFinetune(fused_kernels=..., compile_layers=...)` applies them on a CUDA model's first
step. The RoPE replacement is process-wide: the `apply_rotary_pos_emb` of the modeling module that
defines the model's classes (README.md lists it with the other process-wide patches).
"""
from __future__ import annotations

import functools
import logging
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import torch.utils.checkpoint
from torch import nn

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kernels:
    """The three fused functions `fuse_decoder` swaps in (Llama's conventions)."""
    rms_norm: Callable  # (hidden, weight, eps) -> weight * normalised(hidden) in hidden's dtype
    silu_mul: Callable  # (gate, up) -> silu(gate) * up
    rope: Callable      # (q, k, cos, sin) -> (q, k) rotated; cos/sin already per position: (batch, n, head_dim)


def liger_kernels() -> Kernels:
    """Liger Kernel's Triton kernels (GPU only); ImportError when Liger Kernel is not installed."""
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction
    from liger_kernel.ops.rope import LigerRopeFunction
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    return Kernels(
        # Llama's casting: statistics in float32, the result back in the input's dtype; not in place,
        # since the input is the residual stream.
        rms_norm=lambda hidden, weight, eps: LigerRMSNormFunction.apply(hidden, weight, eps, 0.0, "llama", False),
        silu_mul=LigerSiLUMulFunction.apply,
        rope=lambda q, k, cos, sin: LigerRopeFunction.apply(q, k, cos, sin, None, 1))


def fuse_decoder(model: nn.Module, kernels: Kernels | None = None) -> dict:
    """Swap the fused kernels into `model` in place, where each agrees with what it replaces.
    Returns counts: {"rms_norm": n, "swiglu": n, "rope_modules": n, "kept_own": [why, ...]}."""
    kernels = kernels or liger_kernels()
    counts = {"rms_norm": 0, "swiglu": 0, "rope_modules": 0, "kept_own": []}
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind.endswith("RMSNorm") and isinstance(getattr(module, "weight", None), torch.Tensor):
            fused = _fused_rms_norm(module, kernels)
            if _agrees(module.forward, fused, _sample(module.weight, module.weight.shape[-1])):
                module.forward = fused
                counts["rms_norm"] += 1
            else:
                counts["kept_own"].append(f"{name} ({kind})")
        elif parts := _swiglu_parts(module):
            gate, up, down = parts
            fused = _fused_swiglu(module, kernels, gate, up, down)
            weight = next(p for p in getattr(module, gate).parameters() if p.dim() >= 1)
            sample = _sample(weight, getattr(module, gate).in_features, _autocast_dtype())
            if _agrees(module.forward, fused, sample):
                module.forward = fused
                counts["swiglu"] += 1
            else:
                counts["kept_own"].append(f"{name} ({kind})")
    device, dtype = _first_float_parameter(model)
    # The rotary embedding is a function of the modeling module that defines the model's classes.
    for module_name in sorted({type(m).__module__ for m in model.modules()}):
        module = sys.modules.get(module_name)
        own = getattr(module, "apply_rotary_pos_emb", None)
        if not callable(own) or getattr(own, "fused_by_xtuner_assistant", False):
            continue
        if _rope_agrees(own, kernels.rope, model, device, dtype):
            module.apply_rotary_pos_emb = _fused_rope(kernels.rope, own)
            counts["rope_modules"] += 1
        else:
            counts["kept_own"].append(f"{module_name}.apply_rotary_pos_emb")
    return counts


def compile_decoder_layers(model: nn.Module, backend: str = "inductor", checkpoint_inside: bool = False,
                           required: bool = True) -> int:
    """`torch.compile` each decoder layer for training; in eval mode the layer runs eagerly.
    Where the model checkpoints activations, the checkpoint stays around each layer, switched to the
    non-reentrant kind: reentrant recomputation runs with gradients where the forward ran without, so
    a compiled layer would alternate between two graphs. With `checkpoint_inside` it moves into the
    compiled region instead (the model's own checkpointing is turned off; one compiled function,
    `checkpoint(type(layer).forward, layer, use_reentrant=False)`, serves every layer): the compiler
    then decides what to keep and what to recompute, and keeps more (docs/gpu.md).
    Compiling happens on the first training call; where it fails there and compiling is not
    `required`, every layer runs eagerly from then on, with a warning (a failure while compiling the
    backward pass, which comes later, still stops the run). Returns how many layers."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer") and not hasattr(m, "_eager_forward")]
    if not layers:
        return 0
    checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
    if checkpoint_inside and not checkpointing:
        _log.warning("checkpoint_in_compiled_layers has no effect: the model does not checkpoint activations")
    inside = checkpointing and checkpoint_inside
    if inside:
        model.gradient_checkpointing_disable()
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # Random ops (LoRA dropout) in a compiled checkpoint are otherwise saved, not recomputed: their
    # activation-sized outputs would cost the memory checkpointing saves. Recomputing them needs
    # CUDA's counter-based generator.
    attempt = _FirstCompile(recompute_random=inside and any(p.is_cuda for p in model.parameters()), required=required)
    shared = torch.compile(_checkpointed_layer, backend=backend) if inside else None
    for module in layers:
        module._eager_forward = module.forward
        if inside:
            compiled, eager = functools.partial(shared, module), functools.partial(_checkpointed_layer, module)
        else:
            compiled, eager = torch.compile(module.forward, backend=backend), module.forward

        def forward(*args, _layer=module, _compiled=compiled, _eager=eager, **kwargs):
            if _layer.training:
                return attempt.run(_compiled, _eager, *args, **kwargs)
            return _layer._eager_forward(*args, **kwargs)

        module.forward = forward
    return len(layers)


# torch.utils.checkpoint.checkpoint's keyword options (the CUDA-graph step passes preserve_rng_state)
CHECKPOINT_OPTIONS = frozenset(("use_reentrant", "preserve_rng_state", "context_fn", "determinism_check", "debug"))


def keep_activations_of_last_layers(model: nn.Module, count: int) -> int:
    """Activation checkpointing for every decoder layer but the last `count`, whose activations are kept
    rather than recomputed in the backward pass: less recomputation for the memory those layers hold
    (each layer's share is the same at the backward pass's start, when every kept activation is alive).
    The model checkpoints through `_gradient_checkpointing_func(layer.__call__, ...)` (transformers'
    Llama/Qwen2, InternLM2's own code); that function is wrapped, so it must be set (checkpointing on)
    before this is called. Returns how many layers run without checkpointing."""
    if count <= 0:
        return 0
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    owners = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True
              and callable(getattr(m, "_gradient_checkpointing_func", None))]
    if not layers or not owners:
        return 0
    kept = set(layers[-count:])
    for owner in owners:
        def checkpoint_unless_kept(function, *args, _checkpoint=owner._gradient_checkpointing_func, **kwargs):
            if getattr(function, "__self__", None) in kept:  # the checkpoint's own options are not the layer's
                return function(*args, **{k: v for k, v in kwargs.items() if k not in CHECKPOINT_OPTIONS})
            return _checkpoint(function, *args, **kwargs)

        owner._gradient_checkpointing_func = checkpoint_unless_kept
    return len(kept)


def _checkpointed_layer(layer: nn.Module, *args, **kwargs):
    return torch.utils.checkpoint.checkpoint(type(layer).forward, layer, *args, use_reentrant=False, **kwargs)


class _FirstCompile:
    """Runs the compiled layers; if compiling fails on their first call and was not required, the
    eager ones from then on."""

    def __init__(self, recompute_random: bool, required: bool):
        self.recompute_random, self.required = recompute_random, required
        self.state = "untried"  # -> "compiled" after a first call that worked, or "eager"

    def run(self, compiled: Callable, eager: Callable, *args, **kwargs):
        if self.state == "eager":
            return eager(*args, **kwargs)
        try:
            if self.recompute_random:
                with torch._functorch.config.patch(functionalize_rng_ops=True):
                    out = compiled(*args, **kwargs)
            else:
                out = compiled(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as error:
            cause = getattr(error, "inner_exception", None) or error.__cause__ or error  # the compiler's own error
            if self.required or self.state == "compiled" or isinstance(cause, torch.OutOfMemoryError):
                raise
            _log.warning("compiling the decoder layers failed (%s: %s); they run uncompiled. Set "
                         "compile_layers=false to skip the attempt", type(cause).__name__, str(cause).strip()[:300])
            self.state = "eager"
            return eager(*args, **kwargs)
        self.state = "compiled"
        return out


# ------------------------------------------------------------------------------------------ helpers
def _swiglu_parts(module: nn.Module) -> tuple[str, str, str] | None:
    """(gate, up, down) attribute names of a SiLU-gated MLP, or None."""
    for names in (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2")):  # Llama/Qwen2, InternLM2
        if all(isinstance(getattr(module, n, None), nn.Module) for n in names):
            activation = getattr(module, "act_fn", None)
            if type(activation).__name__ in ("SiLU", "SiLUActivation"):
                return names
    return None


def _fused_rms_norm(module, kernels: Kernels):
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))

    def forward(hidden_states):
        return kernels.rms_norm(hidden_states, module.weight, eps)

    return forward


def _fused_swiglu(module, kernels: Kernels, gate: str, up: str, down: str):
    def forward(x):
        return getattr(module, down)(kernels.silu_mul(getattr(module, gate)(x), getattr(module, up)(x)))

    return forward


def _fused_rope(rope: Callable, own: Callable):
    def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        if unsqueeze_dim != 1:  # Liger's layout is (batch, heads, n, head_dim)
            return own(q, k, cos, sin, position_ids, unsqueeze_dim)
        return rope(q, k, cos, sin)

    apply_rotary_pos_emb.fused_by_xtuner_assistant = True
    return apply_rotary_pos_emb


def _autocast_dtype() -> torch.dtype | None:
    """The dtype CUDA autocast computes in now (what a layer's input is during training), or None."""
    return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None


def _first_float_parameter(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            if not parameter.is_cuda:
                return parameter.device, parameter.dtype
            return parameter.device, _autocast_dtype() or (torch.bfloat16 if parameter.dtype == torch.float32
                                                           else parameter.dtype)
    return torch.device("cpu"), torch.float32


def _sample(like: torch.Tensor, width: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(0)
    dtype = dtype or (like.dtype if like.is_floating_point() else torch.bfloat16)
    return torch.randn(2, 5, width, generator=generator).to(device=like.device, dtype=dtype)


def _tolerance(dtype: torch.dtype) -> dict:
    return dict(rtol=2e-2, atol=2e-2) if dtype in (torch.bfloat16, torch.float16) else dict(rtol=1e-4, atol=1e-5)


def _agrees(own: Callable, fused: Callable, sample: torch.Tensor) -> bool:
    try:
        with torch.no_grad():
            expected, got = own(sample), fused(sample)
    except Exception:  # a kernel that cannot run here (no GPU for Triton, an odd layout) is not used
        return False
    return expected.shape == got.shape and torch.allclose(got.float(), expected.float(), **_tolerance(sample.dtype))


def _rope_agrees(own: Callable, rope: Callable, model: nn.Module, device, dtype) -> bool:
    """The model's `apply_rotary_pos_emb` and the fused one give the same rotation for cos/sin given
    per position, (batch, n, head_dim), the convention Liger's kernel takes."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", 2)
    head_dim = getattr(config, "head_dim", None) or getattr(config, "hidden_size", 2 * heads * 8) // heads
    generator = torch.Generator(device="cpu").manual_seed(0)
    q, k = (torch.randn(1, 2, 6, head_dim, generator=generator).to(device, dtype) for _ in range(2))
    angles = torch.randn(1, 6, head_dim // 2, generator=generator).repeat(1, 1, 2)
    cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)
    position_ids = torch.arange(6, device=device)[None]
    try:
        with torch.no_grad():
            expected = own(q, k, cos, sin, position_ids)
            got = rope(q.clone(), k.clone(), cos, sin)
    except Exception:
        return False
    return all(e.shape == g.shape and torch.allclose(g.float(), e.float(), **_tolerance(dtype))
               for e, g in zip(expected, got))
