# Qwen2.5-Coder-1.5B-Instruct (fetched from PyPI, see `xtuner-assistant model`), QLoRA (nf4) on one
# CUDA GPU, packed 8k-token rows. The same recipe as internlm2_chat_1_8b_qlora_assistant.py.
#   xtuner-assistant train configs/qwen2_5_1_5b_qlora_assistant.py --set name=小菜鸡 [--deepspeed deepspeed_zero2]
_base_ = ["./_base_/qwen2_5_coder_qlora.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.training.recipe import packaged_model, packed_qlora_wiring, setting

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
# The other settings (name, data, rows, LoRA, schedule, checkpoints, evaluation) are in
# _base_/qwen2_5_coder_qlora.py, shared with the other Qwen2.5-Coder size; set one again here to change it.
model_path = setting("model", packaged_model("qwen2.5-1.5b"))
base_model = setting("base_model", "Qwen2.5-Coder-1.5B-Instruct")

#######################################################################
#                  PART 2  Wiring (xtuner_assistant/training/recipe.py)#
#######################################################################
# One function for every packed QLoRA config, so their wiring is said once. It defines tokenizer, model,
# train_dataloader, optim_wrapper, param_scheduler, train_cfg, default_hooks, randomness, custom_hooks.
globals().update(packed_qlora_wiring(globals()))
