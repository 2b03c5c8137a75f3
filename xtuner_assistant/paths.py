"""Where things are: what xtuner-assistant keeps outside the user's work dirs, the files it ships
(configs/ and web/), atomic writes, which outputs it may replace, and reading the user's JSON lists."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

# In every folder xtuner-assistant writes into: the files it wrote there, with their sizes and digests.
# A file (or a whole output folder) is replaced only while it is listed here unchanged.
OUTPUT_RECORD = ".xtuner-assistant-output.json"
DIGEST_LIMIT = 64 << 20  # bigger files (weights) are recognised by size alone


class OutputError(ValueError):
    """An output path that would replace something xtuner-assistant did not write."""


def home() -> Path:
    return Path(os.environ.get("XTUNER_ASSISTANT_HOME", Path.home() / ".cache" / "xtuner-assistant"))


def shipped(folder: str) -> Path:
    """`configs` or `web`: at the top of the source tree, inside the package once installed
    (pyproject.toml maps them to xtuner_assistant.configs and xtuner_assistant.web)."""
    return Path(str(resources.files(f"xtuner_assistant.{folder}")))


def model_cache_dir(name: str) -> Path:
    return home() / "models" / name


def user_mode(directory: bool = False) -> int:
    """The mode a file (or folder) created by `open()` (or `mkdir`) gets under the user's umask.
    mkstemp and mkdtemp create 0600/0700 whatever the umask, which surprises users who share outputs."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, user_mode())
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
    `final` holds a mix of both. What is inside gets the modes of the user's umask: writers that go
    through a temporary file of their own (safetensors 0.8's save_file) leave it 0600."""
    for path in [staging, *staging.rglob("*")]:
        if not path.is_symlink():
            path.chmod(user_mode(directory=path.is_dir()))
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
        os.replace(final, old)  # onto the empty folder mkdtemp made: a name nobody else uses
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staging_dir_for(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging-"))
    staging.chmod(user_mode(directory=True))
    return staging


# ----------------------------------------------------------------------------- what we may replace
def _fingerprint(path: Path) -> dict:
    size = path.stat().st_size
    if size > DIGEST_LIMIT:
        return {"size": size}
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def _recorded(folder: Path) -> dict:
    try:
        record = json.loads((folder / OUTPUT_RECORD).read_text(encoding="utf-8"))
        return record["files"] if isinstance(record.get("files"), dict) else {}
    except (OSError, ValueError, KeyError, AttributeError):
        return {}


def record_outputs(paths) -> None:
    """Note in each folder's record that we wrote these files, as they are now."""
    by_folder: dict[Path, list[Path]] = {}
    for path in map(Path, paths):
        by_folder.setdefault(path.parent, []).append(path)
    for folder, written in by_folder.items():
        files = _recorded(folder)
        files.update({path.name: _fingerprint(path) for path in written if path.is_file()})
        write_json_atomic(folder / OUTPUT_RECORD, {"written_by": "xtuner-assistant", "files": files})


def record_output_dir(folder: Path) -> None:
    """Note every file of a folder we wrote whole (a merged model, an adapter)."""
    folder = Path(folder)
    files = {path.relative_to(folder).as_posix(): _fingerprint(path) for path in sorted(folder.rglob("*"))
             if path.is_file() and path.name != OUTPUT_RECORD}
    write_json_atomic(folder / OUTPUT_RECORD, {"written_by": "xtuner-assistant", "files": files})


def written_by_us(path: Path) -> bool:
    """Whether xtuner-assistant wrote this file and nobody changed it since."""
    path = Path(path)
    entry = _recorded(path.parent).get(path.name)
    return bool(entry) and path.is_file() and _fingerprint(path) == entry


def foreign_files(folder: Path) -> list[str]:
    """Files in `folder` that xtuner-assistant did not write there (or that changed since)."""
    folder = Path(folder)
    files = _recorded(folder)
    foreign = []
    for path in sorted(folder.rglob("*")):
        if path.is_dir() and not path.is_symlink() or path.name == OUTPUT_RECORD and path.parent == folder:
            continue
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink() or files.get(relative) != _fingerprint(path):
            foreign.append(relative)
    return foreign


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _examples(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_output_files(paths, force: bool = False, option: str = "--out") -> None:
    """Refuse to overwrite a file that xtuner-assistant did not write, unless `force`."""
    for path in map(Path, paths):
        if path.is_dir():
            raise OutputError(f"{path}: is a folder, where {option} needs to write a file; choose another {option}")
        if path.exists() and not force and not written_by_us(path):
            raise OutputError(f"{path}: exists and was not written by xtuner-assistant (or was edited since); "
                              f"choose another {option}, or add --force to replace it")
    for folder in {Path(p).parent for p in paths}:
        _check_writable(folder, option)


def _check_writable(folder: Path, option: str) -> None:
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(f"{existing}: is a file, not a folder; choose another {option}")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{existing}: not writable (a read-only file system, or no permission); "
                          f"choose another {option}")


def check_output_dir(out: Path, inputs=(), force: bool = False, option: str = "--out") -> None:
    """Refuse an output folder that would replace what xtuner-assistant did not write: a folder holding
    files we did not put there (unless `force`), and, even with `force`, any of `inputs` (the base
    model, the adapter, the work dir) or a folder holding one, the model cache, the home folder or
    the current folder."""
    out = Path(out)
    resolved = out.resolve()
    cache = (home() / "models").resolve()
    if _inside(resolved, cache) or _inside(cache, resolved):
        raise OutputError(f"{option} {out}: is the model cache ({home() / 'models'}), which holds the base models; "
                          f"choose a path outside it")
    for given in inputs:
        if given is not None and _inside(Path(given).resolve(), resolved):
            holds = "is" if Path(given).resolve() == resolved else "holds"
            raise OutputError(f"{option} {out}: {holds} an input of this command ({given}); choose another path")
    # The home folder first: it usually holds the current folder, and is the better name for it.
    for keep, what in ((Path.home(), "your home folder"), (Path.cwd(), "the current folder")):
        if _inside(keep.resolve(), resolved):
            raise OutputError(f"{option} {out}: would replace {what}; choose a new folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out}: is a file, not a folder; choose another path")
    if out.is_dir() and not force:
        foreign = foreign_files(out)
        if foreign:
            raise OutputError(f"{option} {out}: holds files xtuner-assistant did not write ({_examples(foreign)}); "
                              f"choose another path, or add --force to replace that folder")
    _check_writable(out.parent, option)


# ----------------------------------------------------------------------------- the user's files
def _decoded(data: bytes, path: Path, line: int, error: type[Exception]) -> str:
    """UTF-8 text (a BOM is allowed), or `error` naming the file, line and what to do."""
    if b"\x00" in data:
        raise error(f"{path}:{line}: holds NUL bytes: a binary file, not text; give a UTF-8 JSON or JSONL file")
    try:
        return data.decode("utf-8-sig" if line == 1 else "utf-8")
    except UnicodeDecodeError as bad:
        line += data[:bad.start].count(b"\n")
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{data[bad.start]:02x}); save it as UTF-8, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path.name} > utf8_{path.name}`") from None


def read_user_text(path: str | os.PathLike, error: type[Exception] = ValueError, missing: str = "no such file") -> str:
    """The whole text of a file the user gave, or `error` saying why it cannot be read as text."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {'is a folder, not a file' if path.is_dir() else missing}")
    data = path.read_bytes()
    if not data.strip():
        raise error(f"{path}: is empty")
    return _decoded(data, path, 1, error)


def read_user_lines(path: str | os.PathLike, max_chars: int, error: type[Exception] = ValueError,
                    missing: str = "no such file"):
    """(line number, text) of each line of a file the user gave, read as a stream; a line longer
    than `max_chars` is refused by its number without being read whole."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {'is a folder, not a file' if path.is_dir() else missing}")
    if path.stat().st_size == 0:
        raise error(f"{path}: is empty")
    limit = 4 * max_chars  # UTF-8 takes at most 4 bytes a character
    with open(path, "rb") as f:
        number = 0
        while data := f.readline(limit + 1):
            number += 1
            if len(data) > limit or (len(data) > max_chars and len(_decoded(data, path, number, error)) > max_chars):
                raise error(f"{path}:{number}: a line of more than {max_chars:,} characters; one record must not "
                            "be that long (is the file one JSON document rather than JSON Lines? split it)")
            yield number, _decoded(data, path, number, error)


def parse_json(text: str, path: str | os.PathLike, first_line: int = 1, error: type[Exception] = ValueError):
    """json.loads, or `error` naming the file and line (text that starts at `first_line` of the file)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as bad:
        raise error(f"{path}:{first_line + bad.lineno - 1}: not valid JSON ({bad.msg} at column {bad.colno})") from None
    except RecursionError:
        raise error(f"{path}:{first_line}: JSON nested too deeply (more than about 1,000 levels); "
                    "a chat record is a few levels deep") from None


def read_json_list(path: str | os.PathLike, holding: str, error: type[Exception] = ValueError,
                   missing: str = "no such file") -> list:
    """The list in a JSON file the user gave, or `error` saying what is wrong and where: the file is
    missing (`missing` says what to do), empty, not UTF-8 text, not JSON (with its line), or not a
    list of `holding`."""
    path = Path(path)
    data = parse_json(read_user_text(path, error, missing), path, error=error)
    if not isinstance(data, list):
        raise error(f"{path}: expected a JSON list of {holding}")
    return data
