"""The app repo: a standalone Gradio chat (app.py) that fetches the model repo at start-up, its pinned
requirements, the system packages it needs, and the README front matter the app platform reads.

For a LLaVA model the app also gets xtuner-assistant's own image-chat code, copied here from its one
source (llava/image_chat.py and the chat-template contract it uses, chat_template.py), so the app
answers about an image exactly as `chat --image` does without installing xtuner-assistant or XTuner."""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent
TEMPLATE = Path(__file__).parent / "templates" / "app.py"
# App file -> its source in the package. image_chat.py imports the contract as a sibling module there.
IMAGE_CHAT_FILES = {"image_chat.py": PACKAGE / "llava" / "image_chat.py", "chat_template.py": PACKAGE / "chat_template.py"}
PACKAGE_IMPORT = "from xtuner_assistant.chat_template import"
# EfficientNet-Lite0's model code (pure Python, needs only torch); its weights are in the model repo.
EFFICIENTNET_REQUIREMENT = "efficientnet-lite-pytorch==0.1.0"

# Every package the app installs, pinned: the closure pip resolved for gradio 5.49.1, transformers
# 4.48.0 (the version the model was trained and tested with), torch 2.5.1 (CUDA 12 or the CPU),
# accelerate, safetensors and sentencepiece, for CPython 3.10 on manylinux x86_64 (pip install
# --dry-run --report, 2026-11-29). A floating dependency would let a later release change the app
# under a published model. gradio comes first: the README's sdk_version is read from it.
REQUIREMENTS = [
    "gradio==5.49.1",
    "accelerate==1.2.1",
    "aiofiles==24.1.0",
    "annotated-doc==0.0.6",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "brotli==1.2.1",
    "certifi==2026.10.19.post1",
    "charset-normalizer==3.5.3",
    "click==8.5.1",
    "fastapi==0.162.5",
    "ffmpy==1.0.0",
    "filelock==4.1.0",
    "fsspec==2026.9.0",
    "gradio_client==1.13.3",
    "groovy==0.1.2",
    "h11==0.16.0",
    "hf-xet==1.8.0",
    "httpcore==1.0.9",
    "httpx==0.28.1",
    "huggingface_hub==0.36.2",
    "idna==3.20",
    "Jinja2==3.1.6",
    "markdown-it-py==4.3.0",
    "MarkupSafe==3.0.4",
    "mdurl==0.1.2",
    "mpmath==1.3.0",
    "networkx==3.6.1",
    "numpy==2.2.6",
    "nvidia-cublas-cu12==12.4.5.8",
    "nvidia-cuda-cupti-cu12==12.4.127",
    "nvidia-cuda-nvrtc-cu12==12.4.127",
    "nvidia-cuda-runtime-cu12==12.4.127",
    "nvidia-cudnn-cu12==9.1.0.70",
    "nvidia-cufft-cu12==11.2.1.3",
    "nvidia-curand-cu12==10.3.5.147",
    "nvidia-cusolver-cu12==11.6.1.9",
    "nvidia-cusparse-cu12==12.3.1.170",
    "nvidia-nccl-cu12==2.21.5",
    "nvidia-nvjitlink-cu12==12.4.127",
    "nvidia-nvtx-cu12==12.4.127",
    "opentelemetry-api==1.45.2",
    "orjson==3.13.0",
    "packaging==26.4",
    "pandas==2.3.3",
    "pillow==11.3.0",
    "psutil==7.2.2",
    "pydantic==2.11.10",
    "pydantic_core==2.33.2",
    "pydub==0.25.1",
    "Pygments==2.21.0",
    "python-dateutil==3.0.0",
    "python-multipart==0.0.32",
    "pytz==2026.6",
    "PyYAML==6.0.4",
    "regex==2026.9.29",
    "requests==2.34.2",
    "rich==15.0.0",
    "ruff==0.17.6",
    "safehttpx==0.1.7",
    "safetensors==0.5.2",
    "semantic-version==2.10.0",
    "sentencepiece==0.2.0",
    "shellingham==1.5.4",
    "six==1.17.0",
    "starlette==0.52.1",
    "sympy==1.13.1",
    "tokenizers==0.21.4",
    "tomlkit==0.13.3",
    "torch==2.5.1",
    "tqdm==4.70.1",
    "transformers==4.48.0",
    "triton==3.1.0",
    "typer==0.29.1",
    "typing-inspection==0.4.5",
    "typing_extensions==4.16.0",
    "tzdata==2026.6",
    "urllib3==2.8.0",
    "uvicorn==0.54.0",
    "websockets==15.0.1",
]
SYSTEM_PACKAGES = ["git", "git-lfs"]


def app_source(model_url: str, title: str, branch: str = "main", examples: list[str] | None = None) -> str:
    source = TEMPLATE.read_text(encoding="utf-8")
    for placeholder, value in (("__MODEL_REPO_URL__", model_url), ("__MODEL_BRANCH__", branch),
                               ("__EXAMPLES__", list(examples or [])), ("__TITLE__", title)):
        source = source.replace(placeholder, repr(value))
    return source


def readme(title: str, model_url: str, sees_images: bool = False) -> str:
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
        ("Questions about an image you upload, answered by a LLaVA vision-language model. " if sees_images
         else "A chat with a fine-tuned assistant. ")
        + f"At start-up the app clones the model from {model_url} "
        "(git + git-lfs, from packages.txt) and answers on the GPU when there is one, else on the CPU.",
        "",
        "Run it yourself: `pip install -r requirements.txt && python app.py`.",
        "",
    ])


def image_chat_sources() -> dict:
    """The app's copies of the image-chat code: the package's files, with the one import of the
    package turned into an import of the sibling file; refused if anything else of the package is used."""
    sources = {}
    for name, source in IMAGE_CHAT_FILES.items():
        text = source.read_text(encoding="utf-8").replace(PACKAGE_IMPORT, "from chat_template import")
        if "xtuner_assistant." in "\n".join(line for line in text.splitlines() if "import" in line):
            raise RuntimeError(f"{source} imports more of xtuner_assistant than the app carries")
        sources[name] = text
    return sources


def app_files(model_url: str, title: str, branch: str = "main", examples: list[str] | None = None,
              llava: dict | None = None) -> dict:
    """`llava`: a LLaVA model's llava.json (the portable layout), which says which encoder it needs."""
    requirements = list(REQUIREMENTS)
    if llava and llava["visual_encoder"]["kind"] == "efficientnet-lite0":
        requirements.append(EFFICIENTNET_REQUIREMENT)
    files = {
        "app.py": app_source(model_url, title, branch, examples).encode(),
        "requirements.txt": ("\n".join(requirements) + "\n").encode(),
        "packages.txt": ("\n".join(SYSTEM_PACKAGES) + "\n").encode(),
        "README.md": readme(title, model_url, bool(llava)).encode(),
    }
    if llava:
        files.update({name: text.encode() for name, text in image_chat_sources().items()})
    return files
