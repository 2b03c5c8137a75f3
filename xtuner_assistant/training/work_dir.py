"""What a training run leaves in its work dir: the resolved config, checkpoints, scalars."""
from __future__ import annotations

import re
from pathlib import Path


class WorkDirError(FileNotFoundError):
    pass


def checkpoints(work_dir: Path) -> list[Path]:
    """iter_N.pth files (or DeepSpeed folders of that name), oldest first."""
    found = [p for p in Path(work_dir).glob("iter_*.pth") if re.fullmatch(r"iter_\d+\.pth", p.name)]
    return sorted(found, key=lambda p: int(p.stem.split("_")[1]))


def last_checkpoint(work_dir: Path) -> Path:
    work_dir = Path(work_dir)
    marker = work_dir / "last_checkpoint"
    if marker.is_file():
        path = Path(marker.read_text().strip())
        if path.exists():
            return path
    found = checkpoints(work_dir)
    if not found:
        raise WorkDirError(f"{work_dir}: no checkpoint (iter_*.pth) to resume or convert; train first")
    return found[-1]


def resolved_config(work_dir: Path) -> Path:
    """The config `xtuner train` dumped into the work dir, with every setting resolved: the newest .py
    there that sets `work_dir` (DeepSpeed writes its own zero_to_fp32.py beside it)."""
    work_dir = Path(work_dir)
    configs = sorted((p for p in work_dir.glob("*.py")
                      if re.search(r"^work_dir = ", p.read_text(encoding="utf-8", errors="replace"), re.M)),
                     key=lambda p: p.stat().st_mtime)
    if not configs:
        raise WorkDirError(f"{work_dir}: no dumped config (*.py); is this an xtuner work dir?")
    return configs[-1]
