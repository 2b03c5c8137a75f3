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


def default_checkpoint(work_dir: Path) -> tuple[Path, str]:
    """The checkpoint to convert when none is named, and a sentence saying which and why: the
    evaluation hook's best (held-out identity highest among evaluations free of collapse and loops)
    when the run kept one, else the last."""
    from xtuner_assistant.evaluation import records

    work_dir = Path(work_dir)
    best = work_dir / records.BEST_CHECKPOINT
    chosen = records.read_summary(work_dir).get("best") if best.exists() else None
    if chosen:
        return best, (f"{best.name}, the evaluation hook's best: iteration {chosen['iter']}, score "
                      f"{chosen['scores']['combined']:.3f} (--checkpoint last for the last one)")
    last = last_checkpoint(work_dir)
    why = " (the evaluation hook kept no best one)" if records.eval_dir(work_dir).is_dir() else ""
    return last, f"{last.name}, the last checkpoint{why}"


def named_checkpoint(work_dir: Path, name: str | None) -> tuple[Path, str]:
    """`--checkpoint`: None (the default above), `last`, `best`, or a file (in the work dir or a path)."""
    from xtuner_assistant.evaluation import records

    work_dir = Path(work_dir)
    if name is None:
        return default_checkpoint(work_dir)
    if name == "last":
        path = last_checkpoint(work_dir)
        return path, f"{path.name}, the last checkpoint"
    if name == "best":
        path = work_dir / records.BEST_CHECKPOINT
        if not path.exists():
            raise WorkDirError(f"{path}: no best checkpoint; train with the evaluation hook (evaluation_freq > 0), "
                               "or convert --checkpoint last")
        return path, f"{path.name}, the evaluation hook's best"
    path = Path(name)
    if not path.exists() and (work_dir / name).exists():
        path = work_dir / name
    if not path.exists():
        raise WorkDirError(f"{name}: no such checkpoint; give iter_N.pth of {work_dir}, `best` or `last`")
    return path, path.name


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
