# Settings shared by the two Qwen2.5-Coder configs (qwen2_5_0_5b_qlora_assistant.py and
# qwen2_5_1_5b_qlora_assistant.py), which differ only in their model. Override any with --set NAME=VALUE
# (or XA_NAME=VALUE), or by setting it again in the config that inherits this file.
_base_ = ["./runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.training.recipe import setting

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
name = setting("name", "小菜鸡")
author = setting("author", "")
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
