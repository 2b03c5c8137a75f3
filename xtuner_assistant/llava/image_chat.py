"""Questions about an image the user gives, as `chat --image`, `vqa chat` and the web page take them:
which model folders are LLaVA ones, and reading the user's image with an error that says what was
wrong. The model itself is xtuner_assistant.llava.model (load_llava, answer)."""
from __future__ import annotations

import io
from pathlib import Path

IMAGE_TYPES = ("png", "jpg", "jpeg")


def is_llava_model(path: str | Path) -> bool:
    """The layout `vqa convert` writes (XTuner's pth_to_hf for LLaVA): projector/ + xtuner_config.py."""
    path = Path(path)
    return (path / "projector").is_dir() and (path / "xtuner_config.py").is_file()


def read_image(source: str | Path | bytes, name: str | None = None):
    """An RGB PIL image from a file path or uploaded bytes; ValueError/FileNotFoundError naming it otherwise."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, bytes):
        name, opened = name or "the uploaded file", io.BytesIO(source)
    else:
        name, opened = name or str(source), Path(source)
        if not opened.is_file():
            raise FileNotFoundError(f"{name}: no such image file")
    try:
        with Image.open(opened) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError(f"{name}: not an image (no image format recognised in it); give a PNG or JPEG file") from None
    except OSError as error:  # recognised but truncated or corrupt
        raise ValueError(f"{name}: a broken image ({error}); give a PNG or JPEG file") from None
