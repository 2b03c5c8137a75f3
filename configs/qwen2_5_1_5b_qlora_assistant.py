# Qwen2.5-Coder-1.5B-Instruct (fetched from PyPI, see `xtuner-assistant model`), QLoRA (nf4) on one
# CUDA GPU, packed 8k-token rows. The same recipe as internlm2_chat_1_8b_qlora_assistant.py.
#   xtuner-assistant train configs/qwen2_5_1_5b_qlora_assistant.py --set name=小菜鸡 [--deepspeed deepspeed_zero2]
_base_ = ["./_base_/runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.recipe import (assistant_eval_hook, chat_tokenizer, identity_source, optimizer, packaged_model,
                                     packed_dataloader, packed_lora_model, schedule, setting)

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
model_path = setting("model", packaged_model("qwen2.5-1.5b"))
name = setting("name", "小菜鸡")
author = setting("author", "")
base_model = setting("base_model", "Qwen2.5-Coder-1.5B-Instruct")
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
#                  PART 2  Wiring (xtuner_assistant/recipe.py)        #
#######################################################################
tokenizer = chat_tokenizer(model_path)
model = packed_lora_model(model_path, r=lora_r, alpha=lora_alpha, dropout=0.1, quantize_4bit=quantize_4bit,
                          dtype=f"torch.{dtype}", flex_attention=flex_attention)
train_dataloader = packed_dataloader(
    tokenizer, identity_source(identity_file, name, author, base_model, identity_samples, seed),
    general, general_ratio, max_length, pack_tokens, rows_per_batch, seed)
optim_wrapper = optimizer(lr, accumulative_counts, mixed_precision=None if dtype == "float32" else dtype)
param_scheduler, train_cfg = schedule(max_epochs, warmup_iters)
default_hooks = dict(checkpoint=dict(interval=save_steps, max_keep_ckpts=save_total_limit))
randomness = dict(seed=seed)
custom_hooks = [assistant_eval_hook(name, author, base_model, seed, evaluation_freq)] if evaluation_freq else []
