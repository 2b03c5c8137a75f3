"""What makes a folder a model we can load: checked before anything is loaded, trained, merged or
published, so a damaged folder is named file by file instead of failing deep inside transformers.

A model folder: config.json (with a model_type), whole weights (safetensors headers and sizes agree,
no Git LFS pointers, every shard of an index present), a tokenizer whose files parse, and a chat
template. An adapter folder: adapter_config.json naming its base, and its weights.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from xtuner_assistant.paths import parse_json, read_user_text

LFS_POINTER = b"version https://git-lfs"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.tiktoken")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
MAX_SAFETENSORS_HEADER = 100 << 20


class ModelPathError(FileNotFoundError):
    pass


def is_lfs_pointer(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(LFS_POINTER)) == LFS_POINTER


def _not_a_pointer(path: Path) -> None:
    if is_lfs_pointer(path):
        raise ModelPathError(f"{path}: a Git LFS pointer, not the file itself; run `git lfs pull` in {path.parent}")


def read_json_file(path: Path) -> dict:
    """A JSON object from a model folder, or a ModelPathError naming the file and line."""
    if path.is_file():
        _not_a_pointer(path)
    data = parse_json(read_user_text(path, ModelPathError), path, error=ModelPathError)
    if not isinstance(data, dict):
        raise ModelPathError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def check_safetensors(path: Path) -> None:
    """The header parses and the tensors it lists end exactly where the file ends."""
    size = path.stat().st_size
    if size == 0:
        raise ModelPathError(f"{path}: empty (0 bytes); copy or save the weights again")
    _not_a_pointer(path)
    damaged = f"{path}: truncated or damaged safetensors ({size:,} bytes)"
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little") if size >= 8 else -1
        if not 0 < length <= min(size - 8, MAX_SAFETENSORS_HEADER):
            raise ModelPathError(f"{damaged}: no valid header; copy or save the weights again")
        try:
            header = json.loads(f.read(length))
            end = max([entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"] or [0])
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise ModelPathError(f"{damaged}: its header is not valid; copy or save the weights again") from None
    if 8 + length + end != size:
        raise ModelPathError(f"{damaged}: its header describes {8 + length + end:,} bytes; copy or save the "
                             "weights again")


def check_torch_weights(path: Path) -> None:
    """A PyTorch .bin: a whole zip archive (torch >= 1.6), or an older pickle."""
    size = path.stat().st_size
    if size == 0:
        raise ModelPathError(f"{path}: empty (0 bytes); copy or save the weights again")
    _not_a_pointer(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path):
                return
        except (zipfile.BadZipFile, OSError):
            pass
    else:
        with open(path, "rb") as f:
            if f.read(1) == b"\x80":  # a pickle from torch < 1.6
                return
    raise ModelPathError(f"{path}: truncated or damaged PyTorch weights ({size:,} bytes); copy or save them again")


def check_weight_file(path: Path) -> None:
    (check_safetensors if path.suffix == ".safetensors" else check_torch_weights)(path)


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file())


def check_weights(folder: Path, what: str = "weights (*.safetensors or *.bin)") -> None:
    files = _weight_files(folder)
    if not files:
        raise ModelPathError(f"{folder}: has no {what}")
    for index in folder.glob("*.index.json"):
        shards = read_json_file(index).get("weight_map", {})
        missing = sorted({shard for shard in shards.values() if not (folder / str(shard)).is_file()})
        if missing:
            raise ModelPathError(f"{index}: names shard {missing[0]}, which is missing" +
                                 (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for path in files:
        check_weight_file(path)


def check_tokenizer(folder: Path, chat_template: bool = True) -> None:
    config_file = folder / "tokenizer_config.json"
    if not config_file.is_file():
        raise ModelPathError(f"{folder}: has no tokenizer (tokenizer_config.json); save the tokenizer beside the model")
    config = read_json_file(config_file)
    present = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        raise ModelPathError(f"{folder}: the tokenizer is incomplete (none of {', '.join(TOKENIZER_FILES)}); "
                             "save the tokenizer beside the model (tokenizer.save_pretrained(folder))")
    for path in present:
        if path.suffix == ".json":
            read_json_file(path)
        elif path.stat().st_size == 0:
            raise ModelPathError(f"{path}: empty (0 bytes); save the tokenizer again")
        else:
            _not_a_pointer(path)
    if chat_template and not config.get("chat_template") and not (folder / "chat_template.jinja").is_file() \
            and not (folder / "chat_template.json").is_file():
        raise ModelPathError(f"{config_file}: no chat_template; xtuner-assistant formats every conversation with "
                             "the model's own template: use a chat/instruct model, or set tokenizer.chat_template "
                             "and save the tokenizer again")


def check_model_dir(path: str | Path, chat_template: bool = True) -> Path:
    """A model folder that loads (or an adapter folder, checked as one)."""
    path = Path(path)
    if not path.is_dir():
        what = "a file, not a folder" if path.exists() else "no such folder"
        raise ModelPathError(f"{path}: {what}. Give a model folder (config.json + weights), e.g. the "
                             "`merged model:` path printed by `xtuner-assistant merge` or `make demo`.")
    if (path / "adapter_config.json").is_file():
        return check_adapter_dir(path)
    if not (path / "config.json").is_file():
        raise ModelPathError(f"{path}: not a model folder (no config.json). Point at the folder that "
                             "holds config.json and the weights.")
    config = read_json_file(path / "config.json")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise ModelPathError(f"{path / 'config.json'}: has no model_type, so it is not a transformers model "
                             "config; point at a folder saved with save_pretrained")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config["model_type"] not in CONFIG_MAPPING_NAMES and "auto_map" not in config:
        raise ModelPathError(f"{path / 'config.json'}: model_type {config['model_type']!r} is not a model type this "
                             "transformers knows, and the folder brings no code for it (auto_map)")
    check_weights(path)
    check_tokenizer(path, chat_template)
    return path


def check_adapter_dir(path: str | Path) -> Path:
    """A LoRA adapter folder: adapter_config.json (naming its base model) and adapter weights."""
    path = Path(path)
    if not path.is_dir():
        raise ModelPathError(f"{path}: {'a file, not a folder' if path.exists() else 'no such folder'}; give the "
                             "adapter folder written by `xtuner-assistant convert`")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise ModelPathError(f"{path}: not a LoRA adapter folder (no adapter_config.json)")
    config = read_json_file(config_file)
    base = config.get("base_model_name_or_path")
    if base is not None and not isinstance(base, str):
        raise ModelPathError(f"{config_file}: base_model_name_or_path must be a folder path (a string)")
    check_weights(path, "adapter weights (adapter_model.safetensors); convert the checkpoint again "
                        "(xtuner-assistant convert WORK_DIR)")
    return path


def adapter_base(path: str | Path) -> str:
    """The base model folder an adapter names, or '' when it names none."""
    return read_json_file(Path(path) / "adapter_config.json").get("base_model_name_or_path") or ""
