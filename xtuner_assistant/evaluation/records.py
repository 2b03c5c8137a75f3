"""What IdentityEvalHook leaves in a work dir, and reading it back. In `<work_dir>/identity_eval/`:
history.jsonl (one line of scores per evaluation), iter_NNNNNN.json and .txt (every answer),
summary.json (the rule, the best evaluation, an early stop); beside the checkpoints,
best_checkpoint.pth. `xtuner-assistant eval` and the model card read them."""
from __future__ import annotations

import json
from pathlib import Path

EVAL_DIR = "identity_eval"
BEST_CHECKPOINT = "best_checkpoint.pth"


def eval_dir(work_dir) -> Path:
    return Path(work_dir) / EVAL_DIR


def history_file(work_dir) -> Path:
    return eval_dir(work_dir) / "history.jsonl"


def summary_file(work_dir) -> Path:
    return eval_dir(work_dir) / "summary.json"


def read_history(work_dir) -> list[dict]:
    """Every evaluation's scores, in the order they were made; [] before the first. A last line without its
    newline is one the hook is still writing (or was writing when training was killed) and is left out
    until it parses; any other line that is not JSON is named."""
    path = history_file(work_dir)
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        return []
    history = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                history.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number == len(lines) and not line.endswith("\n"):
                    break
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg}); "
                                 "was training killed while writing? delete that line") from None
    return history


def read_summary(work_dir) -> dict:
    """summary.json, or {} before the first evaluation after training began."""
    path = summary_file(work_dir)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
