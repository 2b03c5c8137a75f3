"""Run XTuner's own tools (train, pth_to_hf, ...) with this interpreter and return their real exit
status. Stock `xtuner` starts `python` by name and drops the child's status (xtuner 0.2.0)."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from xtuner_assistant.training.settings import settings_env


def tool_path(name: str) -> str:
    import xtuner

    root = Path(xtuner.__file__).parent / "tools"
    path = root / f"{name}.py"
    return str(path if path.is_file() else root / "model_converters" / f"{name}.py")


def run_tool(name: str, args: list[str], settings: dict[str, str] | None = None) -> int:
    nproc = int(os.environ.get("NPROC_PER_NODE", "1"))
    if nproc > 1 and name == "train":
        port = os.environ.get("PORT", str(random.randint(20000, 29999)))
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={port}", tool_path(name), *args, "--launcher", "pytorch"]
    else:
        command = [sys.executable, tool_path(name), *args]
    return subprocess.run(command, env=settings_env(settings or {})).returncode
