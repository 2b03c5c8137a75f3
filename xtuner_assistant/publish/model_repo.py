"""What goes into the model repo: the merged model folder as it is, a model card and .gitattributes.
The folder is checked first (models/folder.py: weights whole, config, tokenizer and chat template
parse, no Git LFS pointers), so a publish never starts with something that cannot be loaded back.
Files that name folders of this machine (the merge record, config.json's `_name_or_path`) are
published without those paths.

A LLaVA model (a `vqa convert` folder, which names its LLM and vision encoder by local paths) goes
as the portable layout the app loads without XTuner (llava/image_chat.py): llm/ with its adapter
merged, projector/, visual_encoder/ with its weights and image processor, and llava.json."""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from xtuner_assistant.publish.git_repo import Files, PublishError
from xtuner_assistant.publish.model_card import LFS_PATTERNS, CardFacts, gitattributes, model_card

GENERATED = (".gitattributes", "README.md")
MERGE_RECORD = "xtuner_assistant_merge.json"
# Local files that say where things were on this machine; never published.
LOCAL_ONLY = ("xtuner_assistant_convert.json",)
# JSON files that name local folders, and the keys that hold paths even when relative.
PATH_KEYS = {MERGE_RECORD: ["base", "adapter"], "config.json": ["_name_or_path"],
             "tokenizer_config.json": ["name_or_path"]}


def check_publishable(model_dir: Path) -> None:
    from xtuner_assistant.models.folder import ModelPathError, check_model_dir

    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        raise PublishError(f"{model_dir}: this is a LoRA adapter, which the app cannot run on its own; merge it "
                           f"first (`xtuner-assistant merge {model_dir} --out MERGED`) and publish MERGED")
    try:
        check_model_dir(model_dir)
    except ModelPathError as error:
        raise PublishError(f"{error} (nothing was pushed)") from None


def looks_local(value) -> bool:
    """A string that names a place on this machine: an absolute path, or one starting at ~ or ."""
    return isinstance(value, str) and (value.startswith(("/", "~", "./", "../")) or (len(value) > 2 and value[1:3] in (":\\", ":/")))


def without_local_paths(data):
    """A JSON value with every local path replaced by its last part (a folder name says nothing of the machine)."""
    if isinstance(data, dict):
        return {key: without_local_paths(value) for key, value in data.items()}
    if isinstance(data, list):
        return [without_local_paths(value) for value in data]
    return Path(data).name if looks_local(data) else data


def published_json(path: Path, path_keys=()) -> bytes | Path:
    """The file as it is, or a copy where local paths (and the values of `path_keys`, which hold
    paths even when relative) are cut to their last part."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return path
    if not isinstance(data, dict):
        return path
    cleaned = without_local_paths(data)
    cleaned.update({key: Path(data[key]).name for key in path_keys if isinstance(data.get(key), str)})
    if cleaned == data:
        return path
    return (json.dumps(cleaned, ensure_ascii=False, indent=2) + "\n").encode()


def model_files(model_dir: Path) -> list[Path]:
    model_dir = Path(model_dir)
    return sorted(p for p in model_dir.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
                  and p.relative_to(model_dir).as_posix() not in GENERATED + LOCAL_ONLY)


def portable_llava(model_dir: Path, staging: Path) -> Path:
    """The LLaVA model as the portable layout, written under `staging` (a folder already in that
    layout, e.g. a clone of a published one, is taken as it is)."""
    from xtuner_assistant.chat_template import ChatTemplateError
    from xtuner_assistant.llava.image_chat import PORTABLE
    from xtuner_assistant.llava.model import LLaVAModelError, load_llava, save_portable_llava
    from xtuner_assistant.llava.vision_encoder import VisionEncoderMissing

    if (model_dir / PORTABLE).is_file():
        return model_dir
    try:
        model = load_llava(model_dir, device="cpu")
        return save_portable_llava(model, Path(staging) / "llava")
    except (LLaVAModelError, ChatTemplateError, VisionEncoderMissing) as error:
        raise PublishError(f"{error} (nothing was pushed)") from None


def model_repo_files(model_dir: Path, facts: CardFacts, repo: str, staging: Path | None = None) -> Files:
    """`staging`: an empty folder that outlives the push, for a LLaVA model's portable layout."""
    from xtuner_assistant.llava.image_chat import is_llava_model

    model_dir = Path(model_dir)
    llava = is_llava_model(model_dir)
    if llava:
        if staging is None:
            raise ValueError("publishing a LLaVA model needs a staging folder")
        model_dir = portable_llava(model_dir, staging)
        check_publishable(model_dir / "llm")
    else:
        check_publishable(model_dir)
    files: Files = {p.relative_to(model_dir).as_posix(): p for p in model_files(model_dir)}
    for name in files:  # llm/config.json too, in a LLaVA model
        if Path(name).name in PATH_KEYS:
            files[name] = published_json(files[name], PATH_KEYS[Path(name).name])
    files[".gitattributes"] = gitattributes().encode()
    files["README.md"] = model_card(facts, repo, sorted(files)).encode()
    return files


def goes_through_lfs(path: str) -> bool:
    return any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in LFS_PATTERNS)
