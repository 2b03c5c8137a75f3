# Qwen2.5-Coder-0.5B-Instruct (fetched from PyPI, see `xtuner-assistant model`), QLoRA (nf4) on one
# CUDA GPU, packed 8k-token rows. The same recipe as internlm2_chat_1_8b_qlora_assistant.py.
#   xtuner-assistant train configs/qwen2_5_0_5b_qlora_assistant.py --set name=小菜鸡 [--deepspeed deepspeed_zero2]
_base_ = ["./_base_/runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.training.recipe import (identity_source, model_display_name, nf4_quantization, packaged_model,
                                              warmup_then_cosine)
from xtuner_assistant.training.settings import setting

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
model_path = setting("model", packaged_model("qwen2.5-0.5b"))
name = setting("name", "小菜鸡")
author = setting("author", "")
base_model = setting("base_model", model_display_name(model_path))  # what it says it is built on
identity_file = setting("identity_file", "")  # from `xtuner-assistant data identity`; else made here
identity_samples = setting("identity_samples", 2000)
general = [s for s in setting("general", "packaged:chatterbot,packaged:chitchat").split(",") if s]  # "" = none
general_ratio = setting("general_ratio", 1.0)
max_length = setting("max_length", 1024)
pack_tokens = setting("pack_tokens", 8192)
rows_per_batch = setting("rows_per_batch", 1)
accumulative_counts = setting("accumulative_counts", 2)
lr = setting("lr", 2e-4)
max_epochs = setting("max_epochs", 2)
warmup_iters = setting("warmup_iters", 10)
lora_r = setting("lora_r", 64)
lora_alpha = setting("lora_alpha", 16)
save_steps = setting("save_steps", 40)
save_total_limit = setting("save_total_limit", 3)
evaluation_freq = setting("evaluation_freq", 20)  # iterations between identity/collapse checks; 0 = off
seed = setting("seed", 0)
quantize_4bit = setting("quantize_4bit", True)  # nf4 needs a CUDA GPU; false: plain LoRA
dtype = setting("dtype", "bfloat16")  # float32 (with quantize_4bit=false) trains on a CPU
flex_attention = setting("flex_attention", False)  # CUDA: skip attention between packed conversations (not yet measured)

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
    llm=dict(type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=model_path,
             trust_remote_code=True, torch_dtype=f"torch.{dtype}",
             # SDPA honours the per-conversation mask of packed rows; flash-attn 2 would ignore it.
             attn_implementation="sdpa"),
    lora=dict(type="peft.LoraConfig", r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.1, bias="none",
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
            replay=None,  # the base model's replayed answers: not used by the packed configs yet
            replay_ratio=0.0,
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
    optimizer=dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=0.0),
    clip_grad=dict(max_norm=1.0, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts)
if dtype != "float32":  # mixed precision in `dtype`
    optim_wrapper.update(type="AmpOptimWrapper", loss_scale="dynamic", dtype=dtype)

param_scheduler = warmup_then_cosine(max_epochs, warmup_iters)

train_cfg = dict(type="xtuner.engine.runner.TrainLoop", max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
# Hooks, logging and seeds come from _base_/runtime.py; these are merged into it.
default_hooks = dict(checkpoint=dict(interval=save_steps, max_keep_ckpts=save_total_limit))
randomness = dict(seed=seed)
# Scores held-out identity, leakage, loops, collapse and retention while training; keeps
# best_checkpoint.pth and stops on collapse (docs/identity.md).
custom_hooks = [dict(type="IdentityEvalHook", name=name, author=author, base_model=base_model, seed=seed,
                     every_n_iters=evaluation_freq, patience=2, max_new_tokens=96)] if evaluation_freq else []
