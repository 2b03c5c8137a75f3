"""Progress for long work: tqdm bars and timestamped log lines on stderr."""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

_start = time.monotonic()


def bar(**kwargs):
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)


def log(message: str) -> None:
    elapsed = time.monotonic() - _start
    print(f"[xtuner-assistant {elapsed:6.0f}s] {message}", file=sys.stderr, flush=True)
