"""Every fix for upstream behaviour lives here, each saying what it fixes and for which versions.

`apply()` runs when `xtuner_assistant` is imported, which a config does through `custom_imports`,
so plain `xtuner train CONFIG` gets the fixes too. Drop a fix once its upstream is fixed.
"""
from __future__ import annotations

import importlib.util
import os
import site
import sys
import types
import warnings
from pathlib import Path

STARTUP_FILE_NAME = "xtuner_assistant_venv_path.pth"
# Lines that Python runs at start-up (site.py executes .pth lines beginning with `import`): the
# venv's bin first on PATH (install_startup_fix), and in the `xtuner` command only, the tools' real
# exit status (xtuner_command_exit_status).
STARTUP_LINE = (
    "import os, sys; "
    "d = os.path.dirname(sys.executable); "
    "p = os.environ.get('PATH', ''); "
    "os.environ['PATH'] = p if p.split(os.pathsep)[:1] == [d] else d + os.pathsep + p\n"
    "import os, sys; "
    "os.path.basename(sys.argv[0] if sys.argv else '') == 'xtuner' and "
    "__import__('xtuner_assistant.compat').compat.xtuner_command_exit_status()\n"
)

_applied = False


def quiet_bitsandbytes_without_gpu() -> None:
    """bitsandbytes 0.45.0 (pinned by xtuner 0.2.0) logs "compiled without GPU support" when it is
    imported on a machine without CUDA, and mmengine 0.10.6 imports it for its optimizer registry, so
    every command printed it, `--help` included. Without a GPU nothing can take bitsandbytes' GPU
    paths, so the message says nothing there and is dropped; with a GPU it stays (a wrong build)."""
    import logging

    import torch

    if not torch.cuda.is_available():
        logging.getLogger("bitsandbytes.cextension").addFilter(
            lambda record: "compiled without GPU support" not in record.getMessage())


def cpu_bf16_probe() -> None:
    """xtuner 0.2.0 + torch >= 2.4: `SupervisedFinetune` calls `torch.cpu.is_bf16_supported()`, which
    torch.cpu does not have, so every CPU run dies with AttributeError. We train on CPU in float32."""
    import torch

    if not hasattr(torch.cpu, "is_bf16_supported"):
        torch.cpu.is_bf16_supported = lambda *args, **kwargs: False


def bitsandbytes_without_triton_ops() -> None:
    """bitsandbytes 0.45.0 (pinned by xtuner 0.2.0) imports `triton.ops`, which triton >= 3.2 (the one
    torch 2.14 brings) no longer has, so `import bitsandbytes` fails, and peft imports it for every
    LoRA model. Its triton kernels are optional: tell it triton is unavailable when `triton.ops` is."""
    triton = importlib.util.find_spec("triton")
    if triton is None or "bitsandbytes" in sys.modules:
        return
    if any(os.path.isdir(os.path.join(p, "ops")) for p in triton.submodule_search_locations or ()):
        return
    utils = types.ModuleType("bitsandbytes.triton.triton_utils")
    utils.is_triton_available = lambda: False
    sys.modules[utils.__name__] = utils


def trusted_local_checkpoints() -> None:
    """torch >= 2.6 loads with `weights_only=True` by default; mmengine 0.10.6 checkpoints also hold
    the message hub (HistoryBuffer, numpy scalars), which that refuses, so resuming a run fails.
    A local checkpoint here is one the user's own training wrote into its work dir: load it as
    mmengine 0.10.6 was written to (`weights_only=False`). Remote schemes are left as they are.

    Applied where mmengine's runner is loaded (a training or conversion process: the launcher of
    training/xtuner_tools.py, or stock `xtuner train`, whose runner is imported before the config
    imports us). Importing the runner only for this would import DeepSpeed into every command."""
    import torch
    from mmengine.runner.checkpoint import CheckpointLoader

    if getattr(CheckpointLoader._schemes.get(""), "xtuner_assistant_fix", False):
        return

    def load_from_local(filename, map_location):
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"{filename} can not be found.")
        return torch.load(filename, map_location=map_location, weights_only=False)

    load_from_local.xtuner_assistant_fix = True
    CheckpointLoader.register_scheme(prefixes="", force=True)(load_from_local)


def atomic_checkpoint_writes() -> None:
    """mmengine 0.10.6: `Runner.save_checkpoint` (what CheckpointHook calls for every iter_N.pth) hands
    the bytes to `LocalBackend.put`, which opens the final file and writes into it. A full disk or a
    kill mid-write leaves a partial iter_N.pth beside the good ones, and `--resume` then picks it.
    Write to a temporary file beside it and rename it into place once complete. (DeepSpeed writes
    its checkpoint folders itself; `train --resume` skips one that does not load.)"""
    from mmengine.fileio.backends.local_backend import LocalBackend

    if getattr(LocalBackend.put, "xtuner_assistant_fix", False):
        return
    original = LocalBackend.put

    def put(self, obj: bytes, filepath) -> None:
        filepath = os.fspath(filepath)
        if os.path.exists(filepath) and not os.path.isfile(filepath):
            return original(self, obj, filepath)  # a device or a pipe: there is nothing to rename
        folder, name = os.path.split(os.path.abspath(filepath))
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as f:  # open(), not mkstemp: the file follows the user's umask
                f.write(obj)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, filepath)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise

    put.xtuner_assistant_fix = True
    LocalBackend.put = put


def xtuner_command_exit_status() -> None:
    """xtuner 0.2.0's `xtuner` command (entry_point.cli) runs each tool (tools/train.py, ...) with
    `subprocess.run` and ignores its exit status, so `xtuner train` exits 0 when training fails.
    Called at start-up in the `xtuner` command only (STARTUP_LINE): a tool that fails ends the
    command with the tool's status (128 + N when a signal N killed it). Other commands are untouched."""
    import subprocess

    if getattr(subprocess.run, "xtuner_assistant_fix", False):
        return
    original = subprocess.run
    tools = os.sep + os.path.join("xtuner", "tools") + os.sep

    def run(*args, **kwargs):
        result = original(*args, **kwargs)
        command = args[0] if args else kwargs.get("args", ())
        if result.returncode and isinstance(command, (list, tuple)) and any(tools in str(a) for a in command):
            raise SystemExit(result.returncode if result.returncode > 0 else 128 - result.returncode)
        return result

    run.xtuner_assistant_fix = True
    subprocess.run = run


def gguf_loaded_model_saveable(model) -> None:
    """transformers 4.48: a model loaded from GGUF keeps `hf_quantizer` and a `quantization_config`
    that describe the GGUF file, and `save_pretrained` then refuses or writes a config that cannot be
    loaded again. The weights are already dequantized to float, so both are dropped."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def install_startup_fix(site_packages: str | None = None) -> Path:
    """xtuner 0.2.0's `xtuner` command starts `python` *by name* (entry_point.cli), so
    `.venv/bin/xtuner train` without an activated venv runs whatever `python` is on PATH, which lacks
    xtuner, and still exits 0. This .pth puts the interpreter's own bin first on PATH at start-up,
    and makes the `xtuner` command return its tool's exit status (xtuner_command_exit_status)."""
    target = Path(site_packages or site.getsitepackages()[0]) / STARTUP_FILE_NAME
    target.write_text(STARTUP_LINE)
    return target


def quiet_deepspeed_jit_script() -> None:
    """deepspeed 0.17.6 decorates functions with `torch.jit.script` when it is imported, and torch 2.14
    warns that `torch.jit.script` is deprecated each time: mmengine's runner imports deepspeed, so every
    training run began with these warnings, and a bad setting found while the config loaded was no
    longer one line. Only that message is dropped."""
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


def apply() -> None:
    global _applied
    if _applied:
        return
    quiet_bitsandbytes_without_gpu()  # first: the others import mmengine, which imports bitsandbytes
    quiet_deepspeed_jit_script()  # before mmengine's runner imports deepspeed
    cpu_bf16_probe()
    bitsandbytes_without_triton_ops()
    if "mmengine.runner" in sys.modules:
        trusted_local_checkpoints()
    atomic_checkpoint_writes()
    _applied = True

