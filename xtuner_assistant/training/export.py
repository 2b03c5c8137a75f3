"""Checkpoint -> LoRA adapter -> merged model.

A LoRA checkpoint holds only LoRA's weights (XTuner's SupervisedFinetune saves PEFT's state dict), so
the adapter is written straight from them and the config's `lora=dict(...)`, without building the
model (on a GPU, XTuner's pth_to_hf loads and quantizes the whole base model first: about 24 s for
Qwen2.5-0.5B). Anything else (LLaVA, DeepSpeed folders, weights other than LoRA's) goes through
XTuner's pth_to_hf on the work dir's own config.

Both steps write into a staging folder and rename it into place only when complete, so a failed
step never leaves a folder that looks like a whole model. An existing `--out` folder is replaced
only when xtuner-assistant wrote it (paths.check_output_dir), and never when it is or holds an
input: the base model, the adapter, the work dir, or the model cache.

The merged model carries its provenance in `xtuner_assistant_merge.json`: the run's identity,
settings and evaluation, copied from the work dir at merge time, with no local paths, so that
publishing it from any folder tells the same story and reveals nothing about this machine.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from xtuner_assistant import progress
from xtuner_assistant.models.folder import ModelPathError, adapter_base, check_adapter_dir, check_model_dir
from xtuner_assistant.models.fetch import recorded_licence
from xtuner_assistant.models.zoo import model_display_name
from xtuner_assistant.paths import (check_output_dir, record_output_dir, replace_dir_atomic, staging_dir_for,
                                    write_json_atomic)
from xtuner_assistant.training.recipe import nf4_quantization
from xtuner_assistant.training.work_dir import (CONVERT_RECORD, checkpoint_problem, find_training_run,
                                                literal_settings, named_checkpoint, resolved_config, run_facts)
from xtuner_assistant.training.xtuner_tools import run_tool

MERGE_TOLERANCE = 1e-3  # largest |logit difference| allowed between merged and base+adapter, float32
MERGE_RECORD = "xtuner_assistant_merge.json"


class ConversionError(RuntimeError):
    pass


def config_folders(config: Path) -> list[Path]:
    """The existing folders a dumped config names (the base LLM, a vision encoder): outputs never replace them."""
    values = [v for v in literal_settings(config).values() if isinstance(v, str)]
    values += re.findall(r"pretrained_model_name_or_path=['\"]([^'\"]+)['\"]", config.read_text(encoding="utf-8"))
    return [Path(v) for v in dict.fromkeys(values) if v and Path(v).is_dir()]


def pth_to_hf(work_dir: Path, out: Path, checkpoint: str | Path | None = None, expect: str = "adapter_config.json",
              what: str = "a LoRA adapter", hint: str = "", force: bool = False, direct=None) -> Path:
    """XTuner's pth_to_hf of a checkpoint (default: the evaluation hook's best, else the last; or `best`,
    `last`, a file) with the work dir's own resolved config, or `direct(config, checkpoint, folder)`
    where it writes the result itself (it returns False where it cannot). The result is written to a
    staging folder and renamed to `out` only once it holds `expect`."""
    work_dir, out = Path(work_dir), Path(out)
    checkpoint, which = named_checkpoint(work_dir, str(checkpoint) if checkpoint else None)
    config = resolved_config(work_dir)
    check_output_dir(out, [work_dir, checkpoint, *config_folders(config)], force)
    problem = checkpoint_problem(checkpoint)
    if problem:
        raise ConversionError(f"{checkpoint}: {problem}; give another with --checkpoint (best, last or one of "
                              f"the work dir's iter_*.pth files)")
    staging = staging_dir_for(out)
    try:
        if direct is not None and direct(config, checkpoint, staging):
            progress.log(f"converted {which} to {what} (its LoRA weights as they are)")
        else:
            progress.log(f"converting {which} to {what} (XTuner pth_to_hf)")
            status = run_tool("pth_to_hf", [str(config), str(checkpoint), str(staging),
                                            "--fp32", "--safe-serialization"])
            if status != 0 or not (staging / expect).is_file():
                raise ConversionError(f"xtuner pth_to_hf failed (exit status {status}) on {checkpoint}; "
                                      f"{out} was not touched{hint}")
        write_json_atomic(staging / CONVERT_RECORD, {"work_dir": str(work_dir.resolve()),
                                                     "checkpoint": checkpoint.name})
        record_output_dir(staging)
        check_output_dir(out, [work_dir, checkpoint], force)  # nothing appeared there while converting
        replace_dir_atomic(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


# A key of a LoRA checkpoint's state dict, and the adapter's name for the same weight.
_LORA_KEY = re.compile(r"llm\.(base_model\.model\.(?:.+\.)?(?P<module>[^.]+)\.lora_[AB])\.default\.weight")


def lora_adapter_from_checkpoint(config: Path, checkpoint: Path, folder: Path) -> bool:
    """The adapter folder PEFT's `save_pretrained` writes after pth_to_hf (adapter_config.json,
    adapter_model.safetensors with float32 weights, as `--fp32`), plus the config as xtuner_config.py,
    written from the checkpoint's LoRA weights and the config's `lora=dict(...)`. False, writing
    nothing, where the checkpoint is anything else: a DeepSpeed folder, a model that is not an LLM
    with LoRA, weights that are not LoRA's A and B (DoRA, LoRA on embeddings, modules_to_save)."""
    from mmengine.config import Config

    if checkpoint.is_dir():
        return False
    try:
        model = Config.fromfile(str(config), import_custom_modules=False).model
    except Exception as error:  # whatever mmengine raises for a config it cannot run
        raise ConversionError(f"{config}: the work dir's config cannot be read ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}); restore it, or train again") from None
    lora, llm = model.get("lora"), model.get("llm")
    if not (lora and llm) or lora.get("type") not in ("peft.LoraConfig", "LoraConfig") \
            or set(model) & {"visual_encoder", "projector"}:
        return False
    state = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True).get("state_dict") or {}
    matches = {key: _LORA_KEY.fullmatch(key) for key in state}
    if not matches or not all(matches.values()):
        return False
    from peft import LoraConfig
    from safetensors.torch import save_file

    settings = {key: value for key, value in lora.to_dict().items() if key != "type"}
    settings.setdefault("target_modules", sorted({match["module"] for match in matches.values()}))
    adapter_config = LoraConfig(**settings)
    adapter_config.base_model_name_or_path = llm.get("pretrained_model_name_or_path")
    adapter_config.inference_mode = True
    folder.mkdir(parents=True, exist_ok=True)
    save_file({match[1] + ".weight": state[key].to(torch.float32).contiguous() for key, match in matches.items()},
              str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    adapter_config.save_pretrained(str(folder))
    shutil.copyfile(config, folder / "xtuner_config.py")
    return True


def checkpoint_to_adapter(work_dir: Path, out: Path, checkpoint: Path | None = None, force: bool = False) -> Path:
    return pth_to_hf(work_dir, out, checkpoint, force=force, direct=lora_adapter_from_checkpoint)


def fixed_probe_ids(tokenizer) -> list[list[int]]:
    from xtuner_assistant.chat_template import generation_prompt_ids

    prompts = ["Who are you?", "你是谁？", "What is 2 + 3?", "Write a haiku about the sea."]
    return [generation_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts]


@torch.inference_mode()
def largest_logit_difference(model_a, model_b, tokenizer) -> float:
    worst = 0.0
    for ids in fixed_probe_ids(tokenizer):
        batch = torch.tensor([ids])
        logits_a = model_a(batch.to(model_a.device)).logits.float().cpu()
        logits_b = model_b(batch.to(model_b.device)).logits.float().cpu()
        diff = (logits_a - logits_b).abs().max().item()
        worst = max(worst, diff)
    return worst


def quantization_gap(base: Path, adapter: Path, merged, tokenizer) -> dict:
    """QLoRA trains the adapter against the nf4-quantized base, but the merge adds it to the
    full-precision base. How far the merged model is from what was trained (the adapter on the
    nf4 base), next to the quantization's own gap (nf4 base vs full base) for scale. Needs CUDA."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    nf4 = nf4_quantization("float32")  # the quantization the QLoRA configs train with
    del nf4["type"]  # the registry's name for the class built here
    quantized = AutoModelForCausalLM.from_pretrained(base, quantization_config=BitsAndBytesConfig(**nf4),
                                                     torch_dtype=torch.float32,
                                                     device_map={"": 0}, trust_remote_code=True).eval()
    plain = AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32, trust_remote_code=True).eval()
    base_gap = largest_logit_difference(quantized, plain, tokenizer)
    del plain
    trained = PeftModel.from_pretrained(quantized, adapter).eval()
    return {"merged_vs_adapter_on_nf4_base": largest_logit_difference(trained, merged, tokenizer),
            "nf4_base_vs_full_base": base_gap}


def merge_record(base: Path, adapter: Path, check: dict) -> dict:
    """What the merged folder says about itself: no local paths, only names, settings and numbers."""
    record = {"base_model": model_display_name(base), "licence": recorded_licence(base), **check}
    run = find_training_run(adapter)
    if run is not None:
        record.update(run_facts(run))
    return record


def merge_adapter(adapter: Path, out: Path, base: Path | None = None, tolerance: float = MERGE_TOLERANCE,
                  quantized_reference: bool = False, force: bool = False) -> dict:
    """Merge LoRA into the base weights (float32), check the merged model against base+adapter on a
    fixed prompt set, and only then put it at `out`. Returns the check's numbers."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter, out = Path(adapter), Path(out)
    check_adapter_dir(adapter)
    named = adapter_base(adapter)
    if base is None and not named:
        raise ConversionError(f"{adapter / 'adapter_config.json'}: names no base model; pass --base PATH")
    base = Path(base or named)
    try:
        check_model_dir(base)
    except ModelPathError as error:
        hint = "" if base != Path(named) else f" (the base that {adapter / 'adapter_config.json'} names; pass --base PATH)"
        raise ConversionError(f"base model: {error}{hint}") from None
    check_output_dir(out, [adapter, base], force)
    progress.log(f"merging {adapter} into {base}")
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=True)

    def base_model():
        return AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32, trust_remote_code=True)

    reference = PeftModel.from_pretrained(base_model(), adapter).eval()
    merged = PeftModel.from_pretrained(base_model(), adapter)
    merged = merged.merge_and_unload().eval()
    difference = largest_logit_difference(reference, merged, tokenizer)
    check = {"largest_logit_difference": difference, "tolerance": tolerance, "prompts": len(fixed_probe_ids(tokenizer))}
    if quantized_reference:
        check["qlora"] = quantization_gap(base, adapter, merged, tokenizer)
    if not difference <= tolerance:
        raise ConversionError(f"merged model differs from base+adapter by {difference:.3g} in logits "
                              f"(tolerance {tolerance}); {out} was not written")
    # config.json would otherwise name the folder the base was loaded from on this machine.
    merged.config._name_or_path = model_display_name(base)
    staging = staging_dir_for(out)
    try:
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_json_atomic(staging / MERGE_RECORD, merge_record(base, adapter, check))
        record_output_dir(staging)
        check_output_dir(out, [adapter, base], force)  # nothing appeared there while merging
        replace_dir_atomic(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    progress.log(f"merge check: largest logit difference {difference:.2e} <= {tolerance}")
    return check
