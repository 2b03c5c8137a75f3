"""Where things are: what xtuner-assistant keeps outside the user's work dirs, the files it ships
(configs/ and web/), atomic writes, and reading the user's JSON lists."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("XTUNER_ASSISTANT_HOME", Path.home() / ".cache" / "xtuner-assistant"))


def shipped(folder: str) -> Path:
    """`configs` or `web`: at the top of the source tree, inside the package once installed
    (pyproject.toml maps them to xtuner_assistant.configs and xtuner_assistant.web)."""
    return Path(str(resources.files(f"xtuner_assistant.{folder}")))


def model_cache_dir(name: str) -> Path:
    return home() / "models" / name


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data) -> None:
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def replace_dir_atomic(staging: Path, final: Path) -> None:
    """Move a finished `staging` folder to `final`, replacing an old one without a moment where
    `final` holds a mix of both."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staging_dir_for(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))


def read_json_list(path: str | os.PathLike, holding: str, error: type[Exception] = ValueError,
                   missing: str = "no such file") -> list:
    """The list in a JSON file the user gave, or `error` saying what is wrong and where: the file is
    missing (`missing` says what to do), not JSON (with its line), or not a list of `holding`."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as bad:
        raise error(f"{path}:{bad.lineno}: not valid JSON ({bad.msg} at column {bad.colno})") from None
    if not isinstance(data, list):
        raise error(f"{path}: expected a JSON list of {holding}")
    return data
