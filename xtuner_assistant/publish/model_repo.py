"""What goes into the model repo: the merged model folder as it is, a model card and .gitattributes.
The folder is checked first, so a publish never starts with something that cannot be loaded back."""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from xtuner_assistant.publish.git_repo import Files, PublishError
from xtuner_assistant.publish.model_card import LFS_PATTERNS, CardFacts, gitattributes, model_card

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.tiktoken")
GENERATED = (".gitattributes", "README.md")
LFS_POINTER = b"version https://git-lfs"


def check_publishable(model_dir: Path) -> None:
    from xtuner_assistant.models.generation import ModelPathError, check_model_dir

    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        raise PublishError(f"{model_dir}: this is a LoRA adapter, which the app cannot run on its own; merge it "
                           f"first (`xtuner-assistant merge {model_dir} --out MERGED`) and publish MERGED")
    try:
        check_model_dir(model_dir)
    except ModelPathError as error:
        raise PublishError(str(error)) from None
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise PublishError(f"{model_dir}: the tokenizer is incomplete (none of {', '.join(TOKENIZER_FILES)}); "
                           "save the tokenizer beside the model (tokenizer.save_pretrained(folder))")
    config = model_dir / "tokenizer_config.json"
    try:
        has_template = bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except json.JSONDecodeError as error:
        raise PublishError(f"{config}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not has_template and not (model_dir / "chat_template.jinja").is_file():
        raise PublishError(f"{config}: no chat_template; the published app formats every conversation with it. "
                           "Set tokenizer.chat_template and save the tokenizer again")
    for weights in list(model_dir.glob("*.safetensors")) + list(model_dir.glob("*.bin")):
        with open(weights, "rb") as f:
            if f.read(len(LFS_POINTER)) == LFS_POINTER:
                raise PublishError(f"{weights}: a Git LFS pointer, not the weights; run `git lfs pull` in "
                                   f"{model_dir} first")


def model_files(model_dir: Path) -> list[Path]:
    model_dir = Path(model_dir)
    return sorted(p for p in model_dir.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
                  and p.relative_to(model_dir).as_posix() not in GENERATED)


def model_repo_files(model_dir: Path, facts: CardFacts, repo: str) -> Files:
    check_publishable(model_dir)
    files: Files = {p.relative_to(model_dir).as_posix(): p for p in model_files(model_dir)}
    files[".gitattributes"] = gitattributes().encode()
    files["README.md"] = model_card(facts, repo, sorted(files)).encode()
    return files


def goes_through_lfs(path: str) -> bool:
    return any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in LFS_PATTERNS)
