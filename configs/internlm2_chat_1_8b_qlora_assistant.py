# The tutorial's task, done our way: InternLM2-Chat-1.8B, QLoRA (nf4), max_length 1024, identity
# data mixed with general chat, whole conversations packed into 3k-token rows that attend only to
# themselves. InternLM2 weights do not come with this package: point `model` at your folder.
#   xtuner-assistant train configs/internlm2_chat_1_8b_qlora_assistant.py \
#       --set model=/root/ft/model --set name=小菜鸡 [--deepspeed deepspeed_zero2]
#   (or: XA_MODEL=/root/ft/model XA_NAME=小菜鸡 xtuner train THIS_FILE; NPROC_PER_NODE=2 for 2 GPUs)
_base_ = ["./_base_/runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.training.recipe import (base_model_replay, identity_source, model_display_name, nf4_quantization,
                                              warmup_then_cosine)
from xtuner_assistant.training.settings import required_setting, setting

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
model_path = required_setting("model", "the folder of InternLM2-Chat-1.8B (the tutorial's /root/ft/model)")
name = setting("name", "小菜鸡")
author = setting("author", "")
base_model = setting("base_model", model_display_name(model_path))  # what it says it is built on
identity_file = setting("identity_file", "")  # the tutorial's personal_assistant.json works too
identity_samples = setting("identity_samples", 2000)
general = setting("general", "packaged:chatterbot,packaged:chitchat")  # comma-separated; "" = none
general_ratio = setting("general_ratio", 1.0)  # general conversations per identity one; 0 = the tutorial's data alone
# The base model's own answers to a bilingual prompt pool, this many per identity conversation: they keep
# general questions from getting the identity answer (leakage). Made on first use (the GPU when there is one),
# then cached; 0 = off.
replay_ratio = setting("replay_ratio", 0.5)
max_length = setting("max_length", 1024)
# Tokens per row: 3 of the tutorial's 1024-token rows; raise it where memory is plentiful (docs/gpu.md).
pack_tokens = setting("pack_tokens", 3072)
rows_per_batch = setting("rows_per_batch", 1)
# One row (~35 conversations) per optimizer step: ~150 steps in the epoch of the default data. With 5 rows a
# step (the tutorial's 16 x 1024 tokens) two epochs made ~40 steps, too few to learn a name (docs/identity.md).
accumulative_counts = setting("accumulative_counts", 1)
lr = setting("lr", 2e-4)
max_epochs = setting("max_epochs", 1)
warmup_iters = setting("warmup_iters", 10)
lora_r = setting("lora_r", 64)
# LoRA's update is scaled by alpha / r: 2 here. XTuner's alpha 16 at r 64 (0.25) with lr 2e-4 taught a real
# model nothing in the steps an identity run has (docs/identity.md).
lora_alpha = setting("lora_alpha", 128)
save_steps = setting("save_steps", 50)
save_total_limit = setting("save_total_limit", 3)
# Rows between identity/leakage/collapse checks (IdentityEvalHook, docs/identity.md); 0 = off. The best
# checkpoint is what `convert` takes by default.
evaluation_freq = setting("evaluation_freq", 50)
seed = setting("seed", 0)
quantize_4bit = setting("quantize_4bit", True)  # nf4 needs a CUDA GPU; false: plain LoRA
dtype = setting("dtype", "bfloat16")  # float32 (with quantize_4bit=false) trains on a CPU
flex_attention = setting("flex_attention", False)  # CUDA: skip attention between packed conversations (not yet measured)
# CUDA (auto = where there is a GPU): torch.compile of each decoder layer for training, which fuses its
# norms, SwiGLU and RoPE itself. Liger Kernel's hand-written ones (fused_kernels) are off: inside the
# compiled layers and the CUDA graph they made a row slower and took more memory (103.1 against 98.4 ms,
# 3,604 against 3,272 MiB on an H200, InternLM2-1.8B's shape; docs/gpu.md). auto or true turns them on.
fused_kernels = setting("fused_kernels", "false")
compile_layers = setting("compile_layers", "auto")
# Activation checkpointing inside the compiled layers: faster rows for more memory (docs/gpu.md).
checkpoint_in_compiled_layers = setting("checkpoint_in_compiled_layers", False)
# The last this many decoder layers keep their activations instead of recomputing them (docs/gpu.md). 7 on
# InternLM2-1.8B's shape at pack 3072 on an H200: 83.3 against 90.0 ms a row (25.2 % MFU) at 4,848 against
# 3,274 MiB, inside stock XTuner's 4,979; 0 for the least memory.
layers_without_checkpointing = setting("layers_without_checkpointing", 7)
# The trained LoRA weights, their gradients and optimizer state: float32, or bfloat16 as the QLoRA paper and TRL
# keep them (less memory; docs/gpu.md).
adapter_dtype = setting("adapter_dtype", "float32")
# LoRA dropout 0: nothing in a step is random, so (cuda_graph=auto) each step replays one captured CUDA graph
# of its forward and backward pass instead of launching every kernel from the CPU: 2x the rows a second, the
# same held-out loss as dropout 0.05 (docs/gpu.md). A dropout above 0 trains without the graph.
lora_dropout = setting("lora_dropout", 0.0)
cuda_graph = setting("cuda_graph", "auto")

#######################################################################
#                      PART 2  Model & Tokenizer                      #
#######################################################################
tokenizer = dict(type="transformers.AutoTokenizer.from_pretrained", pretrained_model_name_or_path=model_path,
                 trust_remote_code=True, padding_side="right")

model = dict(
    # XTuner's SupervisedFinetune on packed rows, with a loss that never builds the full logits.
    type="xtuner_assistant.training.packed_finetune.PackedSupervisedFinetune",
    use_varlen_attn=False,
    use_activation_checkpointing=True,
    flex_attention=flex_attention,
    fused_kernels=fused_kernels,
    compile_layers=compile_layers,
    checkpoint_in_compiled_layers=checkpoint_in_compiled_layers,
    layers_without_checkpointing=layers_without_checkpointing,
    adapter_dtype=adapter_dtype,
    cuda_graph=cuda_graph,
    longest_conversation=max_length,  # the graph's attention bound: no conversation is longer (docs/gpu.md)
    llm=dict(type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=model_path,
             trust_remote_code=True, torch_dtype=f"torch.{dtype}",
             # SDPA honours the per-conversation mask of packed rows; flash-attn 2 would ignore it.
             attn_implementation="sdpa"),
    lora=dict(type="peft.LoraConfig", r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
              task_type="CAUSAL_LM"))
if quantize_4bit:
    model["llm"]["quantization_config"] = nf4_quantization(f"torch.{dtype}")

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
train_dataloader = dict(
    batch_size=rows_per_batch,
    num_workers=0,
    dataset=dict(
        # Whole conversations packed into rows of up to pack_tokens; each attends only to itself. A dotted
        # type: DeepSpeed's runner builds the data before anything imports the model's module.
        type="xtuner_assistant.data.packing.PackedChatDataset",
        dataset=dict(
            type="MixedChatDataset",  # identity + general chat, in the model's own chat template
            tokenizer=tokenizer,
            identity=identity_source(identity_file, name, author, base_model, identity_samples, seed),
            general=general,
            general_ratio=general_ratio,
            replay=base_model_replay(model_path) if replay_ratio else None,
            replay_ratio=replay_ratio,
            max_length=max_length,
            seed=seed),
        pack_tokens=pack_tokens,
        seed=seed),
    # Rows are already near-equal in length: plain shuffling, no length grouping.
    sampler=dict(type="DefaultSampler", shuffle=True, seed=seed),
    # Every row padded to pack_tokens: one shape, so compiled attention kernels are built once.
    collate_fn=dict(type="xtuner_assistant.data.packing.packed_collate_fn", pad_to_multiple_of=pack_tokens))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type="OptimWrapper",
    # fused: one kernel updates every LoRA tensor; without it, the step is a Python loop over each of them
    # while the GPU waits (docs/gpu.md).
    optimizer=dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=0.0, fused=True),
    clip_grad=dict(max_norm=1.0, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts)
if dtype != "float32":  # mixed precision in `dtype`
    # bfloat16 LoRA weights take no loss scale (bfloat16 has float32's range; torch's scaler has no
    # bfloat16 kernel on CUDA), as TRL trains them.
    optim_wrapper.update(type="AmpOptimWrapper", dtype=dtype,
                         loss_scale="dynamic" if adapter_dtype == "float32" else dict(enabled=False))

param_scheduler = warmup_then_cosine(max_epochs, warmup_iters)

train_cfg = dict(type="xtuner.engine.runner.TrainLoop", max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
# Hooks, logging and seeds come from _base_/runtime.py; these are merged into it.
default_hooks = dict(checkpoint=dict(interval=save_steps, max_keep_ckpts=save_total_limit))
randomness = dict(seed=seed)
# Checkpoints are written to disk by a background thread while training goes on (docs/gpu.md).
# The captured CUDA graph holds as many conversations, as long, as the packed data does (docs/gpu.md).
custom_hooks = [dict(type="BackgroundCheckpointHook"), dict(type="GraphShapeFromDataHook")]
# Scores held-out identity, leakage, loops, collapse and retention while training; keeps
# best_checkpoint.pth and stops on collapse (docs/identity.md).
if evaluation_freq:
    custom_hooks.append(dict(type="IdentityEvalHook", name=name, author=author, base_model=base_model, seed=seed,
                             every_n_iters=evaluation_freq, patience=2, max_new_tokens=96))
