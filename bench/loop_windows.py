"""Where a training run's time went between rows, from its mmengine log: for each logged window of
iterations, the mean time a row took, the mean time spent waiting before it (`data_time`: loading
the batch, and whatever ran after the row before it, checkpoint saves and the evaluation hook's pass
included), and the seconds a window spent beyond a typical one. Used on `bench/gpu_session.sh loop`'s
log to see what a checkpoint save costs the run (the window after it).

    python bench/loop_windows.py LOG [--json]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

WINDOW = re.compile(r"Iter\(train\) \[\s*(\d+)/(\d+)\].*?\btime: ([0-9.]+)\s+data_time: ([0-9.]+)")
SAVE = re.compile(r"Saving checkpoint at (\d+) iterations")
EVALUATION = re.compile(r"IdentityEvalHook iter (\d+):")


def windows(log: str) -> list[dict]:
    """One entry per logged window; `saved_before` and `evaluated_before` name the iterations after which
    a checkpoint was saved or the evaluation hook ran, since the window before (their time falls in it)."""
    rows, last, saved, evaluated = [], 0, [], []
    for line in log.splitlines():
        if match := SAVE.search(line):
            saved.append(int(match[1]))
        elif match := EVALUATION.search(line):
            evaluated.append(int(match[1]))
        elif match := WINDOW.search(line):
            end = int(match[1])
            rows.append(dict(first=last + 1, last=end, iterations=end - last, row_s=float(match[3]),
                             data_s=float(match[4]), saved_before=saved,
                             evaluated_before=[i for i in evaluated if i > 0]))  # iteration 0: before training
            last, saved, evaluated = end, [], []
    if rows:
        # The first windows compile and capture: a typical row is the median of the rest.
        typical_row = statistics.median(r["row_s"] for r in rows[len(rows) // 3:])
        typical_data = statistics.median(r["data_s"] for r in rows[len(rows) // 3:])
        for r in rows:
            r["beyond_typical_s"] = round((r["row_s"] - typical_row) * r["iterations"], 3)
            r["waiting_beyond_typical_s"] = round((r["data_s"] - typical_data) * r["iterations"], 3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args()
    rows = windows(args.log.read_text(encoding="utf-8", errors="replace"))
    if not rows:
        raise SystemExit(f"{args.log}: no `Iter(train) [...] time: ... data_time: ...` lines")
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'rows':>9} {'s/row':>7} {'wait/row':>8} {'beyond typical':>14} {'waiting beyond':>14}  after")
    for r in rows:
        after = [f"saving iter_{i}" for i in r["saved_before"]] + [f"evaluating at {i}" for i in r["evaluated_before"]]
        print(f"{r['first']:>4}-{r['last']:<4} {r['row_s']:7.4f} {r['data_s']:8.4f} {r['beyond_typical_s']:13.2f}s "
              f"{r['waiting_beyond_typical_s']:13.2f}s  {', '.join(after)}")


if __name__ == "__main__":
    main()
