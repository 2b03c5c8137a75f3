"""Speed variants measured by bench/profile_step.py before any of them becomes a default.

The profile of one step of the InternLM2 config (bench/results/gpu_2026-11-29/profile_before_ours.txt)
shows the GPU busy mostly with elementwise work, not matrix products: dtype copies, the fp32 RMSNorm,
rotary embeddings, SiLU x up, LoRA dropout and scaling, each a kernel of its own, ~5,800 launches a step.
  fuse_elementwise  Liger Kernel's fused RMSNorm, SwiGLU and RoPE swapped into the loaded model
                    (InternLM2's remote code, Llama, Qwen2), forward and backward in one kernel each;
  compile_layers    torch.compile of every decoder layer (regional compilation);
  frozen_in_bf16    the frozen norms, embeddings and lm_head back in bfloat16. PEFT's
                    prepare_model_for_kbit_training (called by XTuner's SupervisedFinetune) upcasts every
                    bf16 parameter to float32, so each RMSNorm returns float32, the residual stream runs in
                    float32 and autocast casts every linear's input back to bf16: ~1,900 activation-sized
                    copies a step. The values are unchanged (they were loaded in bf16); LoRA stays float32.
  loss_before       the packed loss as it was before its gradient was made in the forward pass.
"""
from __future__ import annotations

import sys


def _rms_norm_forward(module, eps):
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    def forward(hidden_states):
        # Llama's casting: the statistics in float32, the result back in the input's dtype.
        return LigerRMSNormFunction.apply(hidden_states, module.weight, eps, 0.0, "llama", False)

    return forward


def _swiglu_forward(module, gate, up, down):
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    def forward(x):
        return getattr(module, down)(LigerSiLUMulFunction.apply(getattr(module, gate)(x), getattr(module, up)(x)))

    return forward


def fuse_elementwise(model) -> dict:
    """Patch the decoder of `model` in place; returns how many modules of each kind were patched."""
    from liger_kernel.ops.rope import LigerRopeFunction

    counts = {"rms_norm": 0, "swiglu": 0, "rope_modules": 0}
    for module in model.modules():
        kind = type(module).__name__
        if kind.endswith("RMSNorm") and getattr(module, "weight", None) is not None:
            eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
            module.forward = _rms_norm_forward(module, eps)
            counts["rms_norm"] += 1
        elif all(hasattr(module, name) for name in ("w1", "w2", "w3")):  # InternLM2
            module.forward = _swiglu_forward(module, "w1", "w3", "w2")
            counts["swiglu"] += 1
        elif all(hasattr(module, name) for name in ("gate_proj", "up_proj", "down_proj")):  # Llama, Qwen2
            module.forward = _swiglu_forward(module, "gate_proj", "up_proj", "down_proj")
            counts["swiglu"] += 1

    def rope(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        return LigerRopeFunction.apply(q, k, cos, sin, position_ids, unsqueeze_dim)

    for name, module in list(sys.modules.items()):
        if "modeling_" in name and callable(getattr(module, "apply_rotary_pos_emb", None)):
            module.apply_rotary_pos_emb = rope
            counts["rope_modules"] += 1
    return counts


def compile_layers(model) -> int:
    """torch.compile each decoder layer in place; returns how many."""
    compiled = 0
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            module.compile()
            compiled += 1
    return compiled


def frozen_in_bf16(model) -> int:
    """Cast frozen float32 parameters to bfloat16 in place; returns how many."""
    import torch

    cast = 0
    for parameter in model.parameters():
        if not parameter.requires_grad and parameter.dtype == torch.float32:
            parameter.data = parameter.data.to(torch.bfloat16)
            cast += 1
    return cast


def loss_before(model) -> str:
    """The loss as it was before 2026-12-01's second change, for an A/B in one call: every position of a
    captured row scored (no answer slots), and each chunk's logits and softmax recomputed in the backward
    pass (autograd through checkpointed chunks) instead of the gradient made in the forward pass. For
    the rest of the process."""
    from xtuner_assistant.training import answer_loss

    answer_loss._head_parts = lambda head: None
    step = getattr(model, "graphed_step", None)
    if step is not None:
        step.answer_slots = None
    return "every position scored, logits recomputed in the backward pass"
