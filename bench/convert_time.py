"""How long `convert` takes: the adapter written straight from a LoRA checkpoint (as shipped) against
XTuner's pth_to_hf, which builds the model first (as before 2026-12-01). Each round is a fresh process,
as a user's command is; both write the same adapter (tests/test_pipeline_tiny.py), which is checked here
too. Prints and writes one JSON object.

    python bench/convert_time.py WORK_DIR [--checkpoint iter_N.pth] [--rounds 3] [--out R.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = {
    "direct (shipped)": "checkpoint_to_adapter(work_dir, out, checkpoint)",
    "XTuner pth_to_hf": "pth_to_hf(work_dir, out, checkpoint)",
}


def convert_once(call: str, work_dir: Path, checkpoint: str | None, out: Path) -> float:
    code = ("from pathlib import Path; from xtuner_assistant.training.export import checkpoint_to_adapter, pth_to_hf; "
            f"work_dir, out, checkpoint = Path({str(work_dir)!r}), Path({str(out)!r}), {checkpoint!r}; {call}")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--checkpoint")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from safetensors.torch import load_file

    seconds = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(args.rounds):
            for way, call in WAYS.items():
                out = Path(scratch) / f"{index}_{way.split()[0]}"
                seconds[way].append(convert_once(call, args.work_dir, args.checkpoint, out))
        first = [load_file(Path(scratch) / f"0_{way.split()[0]}" / "adapter_model.safetensors") for way in WAYS]
        same = first[0].keys() == first[1].keys() and all(first[0][k].equal(first[1][k]) for k in first[0])
    result = dict(work_dir=str(args.work_dir), checkpoint=args.checkpoint or "the default",
                  median_s={way: round(statistics.median(values), 2) for way, values in seconds.items()},
                  seconds={way: [round(v, 2) for v in values] for way, values in seconds.items()},
                  same_adapter_weights=same, machine=f"{platform.node()} {os.cpu_count()} CPUs",
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), command="python " + " ".join(sys.argv))
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
