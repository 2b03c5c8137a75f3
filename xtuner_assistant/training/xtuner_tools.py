"""Run XTuner's own tools (train, pth_to_hf, ...) with this interpreter and return their real exit
status. Stock `xtuner` starts `python` by name and drops the child's status (xtuner 0.2.0)."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from xtuner_assistant.training.settings import settings_env

LAUNCH = [sys.executable, "-m", "xtuner_assistant.training.launch"]


def tool_path(name: str) -> str:
    import xtuner

    root = Path(xtuner.__file__).parent / "tools"
    path = root / f"{name}.py"
    return str(path if path.is_file() else root / "model_converters" / f"{name}.py")


def run_tool(name: str, args: list[str], settings: dict[str, str] | None = None) -> int:
    env = settings_env(settings or {})
    nproc = int(os.environ.get("NPROC_PER_NODE", "1"))
    port = os.environ.get("PORT", str(random.randint(20000, 29999)))
    if nproc > 1 and name == "train":
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={port}", *LAUNCH[1:], tool_path(name), *args, "--launcher", "pytorch"]
    else:
        command = [*LAUNCH, tool_path(name), *args]
        if "--deepspeed" in args:
            # DeepSpeed initialises torch.distributed even for one process; without these it looks
            # for MPI (mpi4py) and stops. One process is rank 0 of a world of 1.
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                               ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", port)):
                env.setdefault(key, value)
    return subprocess.run(command, env=env).returncode


def train_run(config: Path, work_dir: Path, settings: dict[str, str], resume: bool = False,
              extra_args: list[str] = ()) -> int:
    """`xtuner train CONFIG` into `work_dir`, the one place a training run starts: with `resume`, from the
    work dir's newest checkpoint that loads; without, after setting aside an earlier run found there
    (`work_dir.set_aside_earlier_run`), so the new run's checkpoints and records are never mixed with it."""
    from xtuner_assistant import progress
    from xtuner_assistant.paths import write_text_atomic
    from xtuner_assistant.training.work_dir import newest_loadable_checkpoint, set_aside_earlier_run

    args = [str(config), "--work-dir", str(work_dir), *extra_args]
    if resume:
        checkpoint, skipped = newest_loadable_checkpoint(work_dir)
        for line in skipped:
            progress.log(f"skipping {line}")
        if skipped:
            progress.log(f"resuming from {checkpoint.name}, the newest checkpoint that loads")
        # mmengine's own resume (resume=True reads work_dir/last_checkpoint), pointed at that checkpoint;
        # not xtuner's `--resume PATH`, which reads the seed with a bare torch.load that torch >= 2.6
        # refuses, nor `load_from=PATH`, which --cfg-options would cut at commas and strip of spaces.
        write_text_atomic(Path(work_dir) / "last_checkpoint", str(checkpoint))
        args += ["--cfg-options", "resume=True"]
    else:
        moved = set_aside_earlier_run(work_dir)
        if moved:
            progress.log(f"{work_dir} held an earlier run: its checkpoints and evaluation records are now in {moved}, "
                         "so this run's are not mixed with them (--resume continues a run instead)")
    return run_tool("train", args, settings)
