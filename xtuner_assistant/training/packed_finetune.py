"""XTuner's SupervisedFinetune for packed rows, with a loss that never builds the full logits.

Two things make stock XTuner slow on short chat samples at one GPU: rows of ~1k tokens leave the
GPU idle between kernels, and the (tokens x vocabulary) float32 logits (0.4 GB per 1k tokens for
InternLM2's 92,544 words, plus their gradient) cap how many tokens fit in a step. Here:
- rows come from `PackedChatDataset` and attend only within each conversation (data/packing.py);
- on CUDA, attention stays inside each conversation through `DocumentAttention`
  (document_attention.py: varlen flash attention where torch has it, else a dense mask);
  elsewhere, SDPA with the additive mask;
- logits are computed only at answer tokens (labels != -100) and in chunks, each chunk recomputed
  in the backward pass, so their memory stays one chunk whatever the row length;
- the frozen weights stay in bfloat16 when they were loaded in it. PEFT's
  `prepare_model_for_kbit_training` (XTuner calls it for every LoRA model) upcasts them to float32:
  each RMSNorm then returns float32, the residual stream runs in float32 and autocast casts every
  linear's input back, ~1,900 activation-sized copies a step. Keeping them made one InternLM2-1.8B
  step 1.4x faster at 0.73x the memory (docs/BENCHMARKS.md); their values are the loaded ones
  either way, and the LoRA weights, the only ones trained, stay float32;
- on a CUDA model's first step, Liger Kernel's fused RMSNorm/SwiGLU/RoPE and compiled decoder layers
  (fused_kernels.py);
- on a CUDA GPU without dropout, each step after the first few is one replay of a captured CUDA
  graph of its forward and backward pass (graphed_step.py).
The loss is the same token-mean cross-entropy as `SupervisedFinetune` (tests/test_packing.py).
"""
from __future__ import annotations

import logging

import torch
from mmengine.logging import print_log
from transformers import AutoConfig
from xtuner.model import SupervisedFinetune

from xtuner_assistant.data.packing import block_diagonal_causal_mask
from xtuner_assistant.training.answer_loss import LOSS_CHUNK_TOKENS, answer_token_loss
from xtuner_assistant.training.document_attention import DocumentAttention
from xtuner_assistant.training.fused_kernels import (compile_decoder_layers, fuse_decoder, keep_activations_of_last_layers,
                                                      liger_kernels)
from xtuner_assistant.training.graphed_step import GraphedTrainStep
from xtuner_assistant.training.settings import SettingError, cast_setting, check_range

def causal_lm_parts(llm) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder stack, output head) of a causal LM, under a PEFT wrapper or not. Calling the
    decoder directly still runs the LoRA layers, which PEFT injects into its modules."""
    model = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    decoder = getattr(model, "model", None)
    if decoder is None:
        raise SettingError(f"{type(model).__name__}: no `.model` decoder; packed training supports "
                           "Llama/Qwen2/InternLM2-style causal LMs")
    return decoder, model.get_output_embeddings()


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _auto_or_bool(field: str, value) -> bool | str:
    """A setting's "auto" / True / False, also as the text a config setting or --set gives (read as
    every boolean setting is: settings.cast_setting)."""
    text = str(value).strip()
    if text.lower() == "auto":
        return "auto"
    try:
        return cast_setting(text, False, f"model.{field}={value!r}")
    except SettingError:
        raise SettingError(f"model.{field}={value!r}: expected auto, true or false") from None


def _count_setting(field: str, value) -> int:
    """A whole-number setting as the model gets it, in its range (settings.RANGES), as `--set` checks it."""
    shown = f"model.{field}={value!r}"
    count = cast_setting(str(value).strip(), 0, shown)
    check_range(field, count, shown)
    return count


class PackedSupervisedFinetune(SupervisedFinetune):
    """`SupervisedFinetune` whose batches may carry `document_ids` (from `packed_collate_fn`)."""

    loss_chunk_tokens = LOSS_CHUNK_TOKENS

    def __init__(self, *args, flex_attention: bool = False, frozen_in_bfloat16: bool = True,
                 fused_kernels: bool | str = "auto", compile_layers: bool | str = "auto",
                 checkpoint_in_compiled_layers: bool = False, layers_without_checkpointing: int = 0,
                 adapter_dtype: str = "float32", cuda_graph: bool | str = "auto",
                 longest_conversation: int | None = None, graph_shape_from_data: bool = True, **kwargs):
        """`fused_kernels` / `compile_layers`: "auto" = on when training on a CUDA GPU (fused kernels
        also need Liger Kernel installed), True = required (an error where they cannot be had), False = off.
        `checkpoint_in_compiled_layers`: activation checkpointing inside the compiled layers rather than
        around them: faster rows for more memory (fused_kernels.compile_decoder_layers, docs/gpu.md).
        `layers_without_checkpointing`: the last this many decoder layers keep their activations instead
        of recomputing them (fused_kernels.keep_activations_of_last_layers).
        `adapter_dtype`: the trained (LoRA) weights, their gradients and optimizer state in float32, or in
        bfloat16 as the QLoRA paper and TRL keep them (docs/gpu.md).
        `cuda_graph`: "auto" = each training step replays one captured CUDA graph where the step allows
        it (graphed_step.py: a CUDA GPU, no dropout, no accumulated gradients), True = required, False = off.
        `longest_conversation`: the data's max_length, the graph's bound on a conversation's length
        (None: the row length; a shorter bound spares the attention kernel empty blocks).
        `graph_shape_from_data`: GraphShapeFromDataHook narrows the graph's conversation slots and length
        bound to what the packed data holds (graphed_step.fit_graph_to_data); False keeps 256 slots and
        `longest_conversation`."""
        check_range("adapter_dtype", str(adapter_dtype), f"model.adapter_dtype={adapter_dtype!r}")
        self.adapter_dtype = getattr(torch, str(adapter_dtype))  # read by _prepare_for_lora, during super().__init__
        fused_kernels, compile_layers = _auto_or_bool("fused_kernels", fused_kernels), _auto_or_bool("compile_layers", compile_layers)
        self.frozen_in_bfloat16 = frozen_in_bfloat16  # read by _prepare_for_lora, during super().__init__
        super().__init__(*args, **kwargs)
        self.flex_attention = flex_attention
        self.fused_kernels, self.compile_layers = fused_kernels, compile_layers
        self.checkpoint_in_compiled_layers = cast_setting(str(checkpoint_in_compiled_layers), False,
                                                          f"model.checkpoint_in_compiled_layers={checkpoint_in_compiled_layers!r}")
        self.layers_without_checkpointing = _count_setting("layers_without_checkpointing", layers_without_checkpointing)
        self.speed_ups = None  # what _apply_speed_ups did, on the first step
        self.cuda_graph = _auto_or_bool("cuda_graph", cuda_graph)
        self.graph_shape_from_data = cast_setting(str(graph_shape_from_data), True,
                                                  f"model.graph_shape_from_data={graph_shape_from_data!r}")
        if longest_conversation is not None:
            longest_conversation = _count_setting("longest_conversation", longest_conversation)
            if longest_conversation < 1:
                raise SettingError(f"model.longest_conversation={longest_conversation!r}: expected a whole number "
                                   "of at least 1 (the data's max_length), or None")
        self.graphed_step = GraphedTrainStep(self, required=self.cuda_graph is True,
                                             longest_conversation=longest_conversation) if self.cuda_graph else None

    def _prepare_for_lora(self, peft_model=None, use_activation_checkpointing=True):
        loaded_in_bfloat16 = {id(p) for p in self.llm.parameters() if p.dtype == torch.bfloat16}
        super()._prepare_for_lora(peft_model, use_activation_checkpointing)
        if self.frozen_in_bfloat16:
            for parameter in self.llm.parameters():
                if not parameter.requires_grad and id(parameter) in loaded_in_bfloat16:
                    parameter.data = parameter.data.to(torch.bfloat16)
        for parameter in self.llm.parameters():
            if parameter.requires_grad and parameter.is_floating_point():
                parameter.data = parameter.data.to(self.adapter_dtype)

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

    def _apply_speed_ups(self, on_cuda: bool) -> dict:
        """Fused kernels and compiled layers, once, on the first step (the model is on its device by then)."""
        done = {"fused_kernels": None, "compiled_layers": 0}
        for field in ("fused_kernels", "compile_layers", "cuda_graph"):
            if getattr(self, field) is True and not on_cuda:
                raise SettingError(f"model.{field}=True needs training on a CUDA GPU; set it to \"auto\" or False")
        if self.fused_kernels and on_cuda:
            try:
                kernels = liger_kernels()
            except ImportError as error:
                if self.fused_kernels is True:
                    raise SettingError(f"model.fused_kernels=True needs Liger Kernel ({error}): "
                                       "pip install liger-kernel, or set it to \"auto\" or False") from error
            else:
                done["fused_kernels"] = fuse_decoder(self.llm, kernels)
        if self.checkpoint_in_compiled_layers and not (self.compile_layers and on_cuda):
            print_log("PackedSupervisedFinetune: checkpoint_in_compiled_layers has no effect without compiled "
                      "layers (compile_layers, on a CUDA GPU)", logger="current", level=logging.WARNING)
        if self.compile_layers and on_cuda:
            done["compiled_layers"] = compile_decoder_layers(self.llm, checkpoint_inside=self.checkpoint_in_compiled_layers,
                                                              required=self.compile_layers is True)
        done["layers_without_checkpointing"] = keep_activations_of_last_layers(self.llm, self.layers_without_checkpointing)
        if done["fused_kernels"] or done["compiled_layers"] or done["layers_without_checkpointing"]:
            print_log(f"PackedSupervisedFinetune: fused kernels {done['fused_kernels']}, "
                      f"compiled decoder layers {done['compiled_layers']}, layers without activation "
                      f"checkpointing {done['layers_without_checkpointing']}", logger="current")
        return done

    def decoder_and_head(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return causal_lm_parts(self.llm)

    def attention_dtype(self) -> torch.dtype:
        """The dtype of packed rows' attention masks: the embeddings', or autocast's (else float32) where
        those are float32 or not floating point (4-bit)."""
        dtype = self.decoder_and_head()[0].get_input_embeddings().weight.dtype
        if not dtype.is_floating_point or dtype == torch.float32:
            dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.float32
        return dtype

    def train_step(self, data, optim_wrapper):
        """mmengine's step (forward, backward, optimizer), or one replay of the captured CUDA graph of it."""
        if self.graphed_step is None:
            return super().train_step(data, optim_wrapper)
        return self.graphed_step(data, optim_wrapper, eager=super().train_step)

    def compute_loss(self, data, data_samples=None):
        data = dict(data)
        if self.speed_ups is None:
            self.speed_ups = self._apply_speed_ups(data["input_ids"].is_cuda)
        labels = data.pop("labels")
        document_ids = data.pop("document_ids", None)
        decoder, head = self.decoder_and_head()
        if document_ids is not None:
            dtype = self.attention_dtype()
            if document_ids.is_cuda:
                router = DocumentAttention.installed(self.flex_attention)
                router.set_documents(document_ids)
                router.prepare(dtype, _head_dim(decoder.config))
                # The models still need a 4-D mask to skip their own causal mask; the router
                # ignores its values, so a zero-stride one costs no memory.
                batch, n = document_ids.shape
                data["attention_mask"] = torch.zeros((), dtype=dtype, device=document_ids.device).expand(batch, 1, n, n)
            else:
                data["attention_mask"] = block_diagonal_causal_mask(document_ids, dtype)
        hidden = decoder(**data, use_cache=False).last_hidden_state
        return {"loss": answer_token_loss(hidden, labels, head, document_ids, self.loss_chunk_tokens)}
