"""Config pieces the benchmark scripts put together arm by arm (bench/packed_identity_arms.py,
bench/packed_equivalence.py): the same dicts the shipped configs write out in their PART 2-5, as
functions, because an arm swaps one piece (padded or packed rows, nf4 or not) and keeps the rest."""
from __future__ import annotations

from xtuner_assistant.training.recipe import nf4_quantization, warmup_then_cosine


def chat_tokenizer(model_path: str) -> dict:
    return dict(type="transformers.AutoTokenizer.from_pretrained", pretrained_model_name_or_path=model_path,
                trust_remote_code=True, padding_side="right")


def lora_model(model_path: str, *, r: int, alpha: int, dropout: float, quantize_4bit: bool,
               dtype: str = "torch.float32", gradient_checkpointing: bool = True) -> dict:
    llm = dict(type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=model_path,
               trust_remote_code=True, torch_dtype=dtype)
    if quantize_4bit:
        llm["quantization_config"] = nf4_quantization(dtype)
    return dict(type="xtuner.model.SupervisedFinetune", use_varlen_attn=False,
                use_activation_checkpointing=gradient_checkpointing, llm=llm,
                lora=dict(type="peft.LoraConfig", r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                          task_type="CAUSAL_LM"))


def packed_lora_model(model_path: str, *, r: int, alpha: int, dropout: float, quantize_4bit: bool,
                      dtype: str = "torch.bfloat16", gradient_checkpointing: bool = True,
                      attn_implementation: str = "sdpa", flex_attention: bool = False) -> dict:
    model = lora_model(model_path, r=r, alpha=alpha, dropout=dropout, quantize_4bit=quantize_4bit, dtype=dtype,
                       gradient_checkpointing=gradient_checkpointing)
    model["type"] = "xtuner_assistant.training.packed_finetune.PackedSupervisedFinetune"
    model["llm"]["attn_implementation"] = attn_implementation
    model["flex_attention"] = flex_attention
    return model


def mixed_dataloader(tokenizer: dict, identity, general: list, general_ratio: float, max_length: int,
                     batch_size: int, seed: int, replay: str = "", replay_ratio: float = 0.0) -> dict:
    dataset = dict(type="MixedChatDataset", tokenizer=tokenizer, identity=identity, general=general,
                   general_ratio=general_ratio, replay=replay or None, replay_ratio=replay_ratio,
                   max_length=max_length, seed=seed)
    return dict(batch_size=batch_size, num_workers=0, dataset=dataset,
                sampler=dict(type="xtuner.dataset.samplers.LengthGroupedSampler",
                             per_device_batch_size=batch_size, seed=seed),
                collate_fn=dict(type="xtuner.dataset.collate_fns.default_collate_fn"))


def packed_dataloader(tokenizer: dict, identity, general: list, general_ratio: float, max_length: int,
                      pack_tokens: int, rows_per_batch: int, seed: int, replay: str = "",
                      replay_ratio: float = 0.0) -> dict:
    loader = mixed_dataloader(tokenizer, identity, general, general_ratio, max_length, rows_per_batch, seed,
                              replay, replay_ratio)
    loader["dataset"] = dict(type="xtuner_assistant.data.packing.PackedChatDataset", dataset=loader["dataset"],
                             pack_tokens=pack_tokens, seed=seed)
    loader["collate_fn"] = dict(type="xtuner_assistant.data.packing.packed_collate_fn", pad_to_multiple_of=pack_tokens)
    loader["sampler"] = dict(type="DefaultSampler", shuffle=True, seed=seed)
    return loader


def optimizer(lr: float, accumulative_counts: int, mixed_precision: str | None) -> dict:
    wrapper = dict(optimizer=dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=0.0),
                   clip_grad=dict(max_norm=1.0, error_if_nonfinite=False),
                   accumulative_counts=accumulative_counts)
    if mixed_precision:
        return dict(type="AmpOptimWrapper", loss_scale="dynamic", dtype=mixed_precision, **wrapper)
    return dict(type="OptimWrapper", **wrapper)


def schedule(max_epochs: int, warmup_iters: int) -> tuple[list, dict]:
    return warmup_then_cosine(max_epochs, warmup_iters), dict(type="xtuner.engine.runner.TrainLoop",
                                                              max_epochs=max_epochs)


def assistant_eval_hook(name: str, author: str, base_model: str, seed: int, every_n_iters: int,
                        patience: int = 2, max_new_tokens: int = 96) -> dict:
    return dict(type="IdentityEvalHook", name=name, author=author, base_model=base_model, seed=seed,
                every_n_iters=every_n_iters, patience=patience, max_new_tokens=max_new_tokens)
