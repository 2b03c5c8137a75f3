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
