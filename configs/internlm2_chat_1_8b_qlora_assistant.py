# The tutorial's task, done our way: InternLM2-Chat-1.8B, QLoRA (nf4), max_length 1024, identity
# data mixed with general chat, whole conversations packed into 3k-token rows that attend only to
# themselves. InternLM2 weights do not come with this package: point `model` at your folder.
#   xtuner-assistant train configs/internlm2_chat_1_8b_qlora_assistant.py \
#       --set model=/root/ft/model --set name=小菜鸡 [--deepspeed deepspeed_zero2]
#   (or: XA_MODEL=/root/ft/model XA_NAME=小菜鸡 xtuner train THIS_FILE; NPROC_PER_NODE=2 for 2 GPUs)
_base_ = ["./_base_/runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.training.recipe import packed_qlora_wiring, required_setting, setting

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
model_path = required_setting("model", "the folder of InternLM2-Chat-1.8B (the tutorial's /root/ft/model)")
name = setting("name", "小菜鸡")
author = setting("author", "")
base_model = setting("base_model", "书生·浦语 InternLM2-Chat-1.8B")
identity_file = setting("identity_file", "")  # the tutorial's personal_assistant.json works too
identity_samples = setting("identity_samples", 2000)
general = [s for s in setting("general", "packaged:chatterbot,packaged:chitchat").split(",") if s]  # "" = none
general_ratio = setting("general_ratio", 1.0)  # general conversations per identity one; 0 = the tutorial's data alone
max_length = setting("max_length", 1024)
# Tokens per row: 3 of the tutorial's 1024-token rows, the largest measured that stays under stock
# XTuner's peak memory. On an H200 against stock (BENCHMARKS.md, varlen attention): 3072 ran 2.8x
# stock's tokens/s at 0.94x its peak memory; 4096 3.5x at 1.03x; 8192 5.4x at 1.41x. Raise it where
# memory is plentiful (and lower accumulative_counts to keep the tokens a step).
pack_tokens = setting("pack_tokens", 3072)
rows_per_batch = setting("rows_per_batch", 1)
accumulative_counts = setting("accumulative_counts", 5)  # 5 x 3072: about the tutorial's 16 x 1024 tokens a step
lr = setting("lr", 2e-4)
max_epochs = setting("max_epochs", 2)
warmup_iters = setting("warmup_iters", 10)
lora_r = setting("lora_r", 64)
lora_alpha = setting("lora_alpha", 16)
save_steps = setting("save_steps", 100)  # 100 rows of 3072 = the tutorial's 300 steps of 1024 tokens
save_total_limit = setting("save_total_limit", 3)
# Iterations between identity/collapse checks (0 = off): the tutorial's interval in tokens. One check
# took ~20 s on an H200, about as long as 75 iterations of training (BENCHMARKS.md).
evaluation_freq = setting("evaluation_freq", 100)
seed = setting("seed", 0)
quantize_4bit = setting("quantize_4bit", True)  # nf4 needs a CUDA GPU; false: plain LoRA
dtype = setting("dtype", "bfloat16")  # float32 (with quantize_4bit=false) trains on a CPU
flex_attention = setting("flex_attention", False)  # CUDA: skip attention between packed conversations (not yet measured)

#######################################################################
#                  PART 2  Wiring (xtuner_assistant/training/recipe.py)#
#######################################################################
# One function for every packed QLoRA config, so their wiring is said once. It defines tokenizer, model,
# train_dataloader, optim_wrapper, param_scheduler, train_cfg, default_hooks, randomness, custom_hooks.
globals().update(packed_qlora_wiring(globals()))
