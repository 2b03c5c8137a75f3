"""What a training run leaves in its work dir: the resolved config, checkpoints, scalars, and the
facts of the run (identity, settings, evaluation) that a merged model carries on."""
from __future__ import annotations

import ast
import re
import zipfile
from pathlib import Path

from xtuner_assistant.evaluation import records

TRAINING_SETTINGS = ["identity_samples", "general_ratio", "lr", "max_epochs", "batch_size", "accumulative_counts",
                     "max_length", "replay_ratio", "warmup_iters", "warmup_ratio", "seed"]
LORA_SETTINGS = {"r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout"}


class WorkDirError(FileNotFoundError):
    pass


def checkpoints(work_dir: Path) -> list[Path]:
    """iter_N.pth files (or DeepSpeed folders of that name), oldest first."""
    found = [p for p in Path(work_dir).glob("iter_*.pth") if re.fullmatch(r"iter_\d+\.pth", p.name)]
    return sorted(found, key=lambda p: int(p.stem.split("_")[1]))


def last_checkpoint(work_dir: Path) -> Path:
    """The checkpoint mmengine's last_checkpoint marker names, this work dir's own of that name (a
    copied or moved work dir's marker names the original's path), else the newest iter_N.pth."""
    work_dir = Path(work_dir)
    marker = work_dir / "last_checkpoint"
    if marker.is_file():
        own = work_dir / Path(marker.read_text().strip()).name
        if own.exists():
            return own
    found = checkpoints(work_dir)
    if not found:
        raise WorkDirError(f"{work_dir}: no checkpoint (iter_*.pth) to resume or convert; train first")
    return found[-1]


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint cannot be loaded (empty, truncated, not a checkpoint), or None when it loads."""
    path = Path(path)
    if path.is_dir():  # DeepSpeed: a folder of .pt files
        parts = list(path.rglob("*.pt"))
        bad = next((problem for part in parts if (problem := checkpoint_problem(part))), None)
        return bad or (None if parts else "an empty checkpoint folder")
    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        return "truncated or not a PyTorch checkpoint"
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as error:  # any reason torch gives: the file cannot be resumed or converted from
        return f"cannot be loaded ({type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''})"
    return None


def newest_loadable_checkpoint(work_dir: Path) -> tuple[Path, list[str]]:
    """The newest iter_N.pth that loads, and a line for each newer one that does not."""
    work_dir = Path(work_dir)
    skipped = []
    for path in reversed(checkpoints(work_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path, skipped
        skipped.append(f"{path.name}: {problem}")
    if skipped:
        raise WorkDirError(f"{work_dir}: no checkpoint loads ({'; '.join(skipped)}); train again without --resume")
    raise WorkDirError(f"{work_dir}: no checkpoint (iter_*.pth) to resume or convert; train first")


def default_checkpoint(work_dir: Path) -> tuple[Path, str]:
    """The checkpoint to convert when none is named, and a sentence saying which and why: the
    evaluation hook's best (held-out identity highest among evaluations free of collapse and loops)
    when the run kept one, else the last."""
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


def literal_settings(config_file: Path) -> dict:
    """Plain values from an xtuner-dumped config, read without running it."""
    try:
        tree = ast.parse(config_file.read_text(encoding="utf-8"), filename=str(config_file))
    except (SyntaxError, ValueError) as error:  # ValueError: not UTF-8, or a NUL byte
        where = f"line {error.lineno}: {error.msg}" if isinstance(error, SyntaxError) else str(error)
        raise WorkDirError(f"{config_file}: {where}; this is the config `xtuner train` wrote into the work dir "
                           "and it no longer reads as Python: restore it, or train again") from None
    settings = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                settings[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "lora" and isinstance(node.value, ast.Call):
            for keyword in node.value.keywords:
                if keyword.arg in LORA_SETTINGS:
                    try:
                        settings[LORA_SETTINGS[keyword.arg]] = ast.literal_eval(keyword.value)
                    except ValueError:
                        pass
    return settings


def looks_like_training_run(folder: Path) -> bool:
    return (any(folder.glob("iter_*.pth")) or (folder / "last_checkpoint").is_file()
            or records.eval_dir(folder).is_dir())


EARLIER_RUNS = "earlier_runs"


def set_aside_earlier_run(work_dir: Path, now: str | None = None) -> Path | None:
    """Before a new run (not a resume) in a work dir that holds one: move what says which checkpoint is
    whose (its iter_N.pth, last_checkpoint, the hook's best checkpoint and records) into
    earlier_runs/<time>/, and return that folder; None when there was nothing. Otherwise the new run's
    checkpoints would mix with the old ones: `--resume` would pick the old run's higher iteration, and
    `convert` an old best checkpoint or, after a crash, the old last one. Nothing is deleted."""
    import time

    work_dir = Path(work_dir)
    if not work_dir.is_dir() or not looks_like_training_run(work_dir):
        return None
    stamp = now or time.strftime("%Y%m%d_%H%M%S")
    target, suffix = work_dir / EARLIER_RUNS / stamp, 1
    while target.exists():
        suffix += 1
        target = work_dir / EARLIER_RUNS / f"{stamp}_{suffix}"
    target.mkdir(parents=True)
    leftovers = [*checkpoints(work_dir), work_dir / "last_checkpoint", work_dir / records.BEST_CHECKPOINT,
                 records.eval_dir(work_dir)]
    for path in leftovers:
        if path.exists():
            path.rename(target / path.name)
    return target


def run_facts(work_dir: Path) -> dict:
    """Who the run made (name, author, base model), its settings and its evaluation, with no paths:
    a merged model keeps these in its merge record, so they travel with it wherever it is published."""
    work_dir = Path(work_dir)
    facts: dict = {}
    try:
        config = resolved_config(work_dir)
    except WorkDirError:
        config = None
    if config:
        settings = literal_settings(config)
        facts["identity"] = {key: str(settings.get(key, "") or "") for key in ("name", "author", "base_model")}
        facts["training"] = {key: settings[key] for key in TRAINING_SETTINGS + list(LORA_SETTINGS.values())
                             if isinstance(settings.get(key), (int, float, str))}
        languages = settings.get("languages")
        if isinstance(languages, (list, tuple)) and languages and all(isinstance(x, str) for x in languages):
            facts["languages"] = list(languages)
    summary = records.read_summary(work_dir)
    evaluation = {key: summary[key] for key in ("rule", "best", "stopped_early") if summary.get(key)}
    if isinstance(evaluation.get("best"), dict) and evaluation["best"].get("checkpoint"):
        evaluation["best"] = {**evaluation["best"], "checkpoint": Path(evaluation["best"]["checkpoint"]).name}
    if evaluation:
        facts["evaluation"] = evaluation
    return facts


def find_training_run(adapter: Path) -> Path | None:
    """The work dir an adapter was converted from: named in its convert record, else the folder
    `xtuner-assistant demo` puts beside it (train/) or the one it sits in."""
    from xtuner_assistant.paths import parse_json

    adapter = Path(adapter).resolve()
    record = adapter / CONVERT_RECORD
    candidates = [adapter.parent / "train", adapter.parent]
    if record.is_file():
        try:
            named = parse_json(record.read_text(encoding="utf-8"), record).get("work_dir")
            candidates.insert(0, Path(named)) if named else None
        except (ValueError, AttributeError):
            pass
    return next((d for d in candidates if d.is_dir() and any(d.glob("*.py")) and looks_like_training_run(d)), None)


# Written by `convert` into the adapter folder (which is never published): where it came from.
CONVERT_RECORD = "xtuner_assistant_convert.json"
