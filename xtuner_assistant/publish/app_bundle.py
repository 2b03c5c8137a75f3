"""The app repo: a standalone Gradio chat (app.py) that fetches the model repo at start-up, its pinned
requirements, the system packages it needs, and the README front matter the app platform reads."""
from __future__ import annotations

from pathlib import Path

TEMPLATE = Path(__file__).parent / "templates" / "app.py"

# Resolved together for CPython 3.10 on manylinux x86_64 (pip --dry-run, 2026-11-28). transformers
# matches the version the model was trained and tested with; torch 2.5.1 runs on CUDA 12 or the CPU.
REQUIREMENTS = [
    "gradio==5.49.1",
    "transformers==4.48.0",
    "tokenizers==0.21.4",
    "huggingface_hub==0.36.2",
    "torch==2.5.1",
    "accelerate==1.2.1",
    "safetensors==0.5.2",
    "sentencepiece==0.2.0",
]
SYSTEM_PACKAGES = ["git", "git-lfs"]


def app_source(model_url: str, title: str, branch: str = "main", examples: list[str] | None = None) -> str:
    source = TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in (("__MODEL_REPO_URL__", model_url), ("__MODEL_BRANCH__", branch),
                               ("__EXAMPLES__", list(examples or [])), ("__TITLE__", title)):
        source = source.replace(placeholder, repr(value))
    return source


def readme(title: str, model_url: str) -> str:
    return "\n".join([
        "---",
        f"title: {title!r}",
        "emoji: 🤖",
        "colorFrom: blue",
        "colorTo: purple",
        "sdk: gradio",
        f"sdk_version: {REQUIREMENTS[0].split('==')[1]}",
        "python_version: '3.10'",
        "app_file: app.py",
        "pinned: false",
        "license: apache-2.0",
        "---",
        "",
        f"# {title}",
        "",
        f"A chat with a fine-tuned assistant. At start-up the app clones the model from {model_url} "
        "(git + git-lfs, from packages.txt) and answers on the GPU when there is one, else on the CPU.",
        "",
        "Run it yourself: `pip install -r requirements.txt && python app.py`.",
        "",
    ])


def app_files(model_url: str, title: str, branch: str = "main", examples: list[str] | None = None) -> dict:
    return {
        "app.py": app_source(model_url, title, branch, examples).encode(),
        "requirements.txt": ("\n".join(REQUIREMENTS) + "\n").encode(),
        "packages.txt": ("\n".join(SYSTEM_PACKAGES) + "\n").encode(),
        "README.md": readme(title, model_url).encode(),
    }
