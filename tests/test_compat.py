"""Each upstream fix in compat.py, tested against the behaviour it fixes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import xtuner_assistant  # noqa: F401  (applies the fixes)
from xtuner_assistant import compat


def test_cpu_bf16_probe_exists_and_says_no():
    assert torch.cpu.is_bf16_supported() is False


def test_xtuner_sft_dtype_probe_runs_on_cpu():
    from xtuner.utils.device import get_torch_device

    device = get_torch_device()
    assert device.is_available() is not None and device.is_bf16_supported() in (True, False)


def test_lora_model_builds_although_bitsandbytes_imports_triton_ops(tiny_model_dir):
    """peft imports bitsandbytes for every LoRA model; bitsandbytes 0.45.0 imports triton.ops."""
    code = ("import xtuner_assistant, bitsandbytes; from peft import LoraConfig, get_peft_model; "
            "from transformers import AutoModelForCausalLM; "
            f"m = AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r}); "
            "m = get_peft_model(m, LoraConfig(r=2, target_modules=['q_proj'])); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_startup_line_puts_the_interpreter_first_on_path(tmp_path):
    """Stock `xtuner` runs `python` by name: without the fix a bare PATH finds the wrong python."""
    code = compat.STARTUP_LINE + "print(os.environ['PATH'].split(os.pathsep)[0])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.stdout.strip() == os.path.dirname(sys.executable)


def test_startup_fix_is_installed_in_this_environment():
    installed = [Path(p) / compat.STARTUP_FILE_NAME for p in sys.path if (Path(p) / compat.STARTUP_FILE_NAME).is_file()]
    assert installed, "make install writes the .pth; run `make install`"
    assert installed[0].read_text() == compat.STARTUP_LINE


def test_gguf_loaded_model_saveable_drops_quantizer_state(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.hf_quantizer = object()
    model.config.quantization_config = {"quant_method": "gguf"}
    compat.gguf_loaded_model_saveable(model)
    model.save_pretrained(tmp_path / "saved")
    assert "quantization_config" not in (tmp_path / "saved" / "config.json").read_text()


LOAD_A_CHECKPOINT = """
import sys
from mmengine.runner.checkpoint import CheckpointLoader
from mmengine.logging import HistoryBuffer
loaded = CheckpointLoader.load_checkpoint(sys.argv[1], map_location="cpu")
assert isinstance(loaded["message_hub"]["loss"], HistoryBuffer)
print("loaded", loaded["state_dict"]["w"].sum().item())
"""


def test_mmengine_checkpoints_with_a_message_hub_load_for_resume(tmp_path):
    """torch >= 2.6 refuses the numpy scalars and HistoryBuffer that mmengine 0.10.6 checkpoints hold.
    Fixed in the processes that load checkpoints: XTuner's tools under our launcher, and stock
    `xtuner train`, which imports mmengine's runner before its config imports us."""
    import numpy as np
    from mmengine.logging import HistoryBuffer

    path = tmp_path / "iter_1.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "message_hub": {"loss": HistoryBuffer([np.float64(1.5)], [np.int64(1)])}}, path)
    tool = tmp_path / "tool.py"
    tool.write_text(LOAD_A_CHECKPOINT)
    stock = "import mmengine.runner, xtuner_assistant, runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0])"
    for command in ([sys.executable, "-m", "xtuner_assistant.training.launch", str(tool), str(path)],
                    [sys.executable, "-c", stock, str(tool), str(path)]):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0 and result.stdout.splitlines()[-1] == "loaded 2.0", result.stderr[-2000:]


def test_commands_that_use_no_gpu_are_quick_and_quiet(tmp_path):
    """No GPU here: bitsandbytes' "compiled without GPU support" is not printed, and neither mmengine's
    runner nor DeepSpeed is imported just to start a command."""
    code = ("import sys, xtuner_assistant; print(sorted(m for m in ('deepspeed', 'mmengine.runner') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]" and "compiled without GPU support" not in result.stderr
    for argv in (["--help"], ["model", "list"], ["config", "list"]):
        result = subprocess.run([sys.executable, "-m", "xtuner_assistant.cli", *argv], capture_output=True, text=True,
                                cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "compiled without GPU support" not in result.stdout + result.stderr, argv


def test_importing_deepspeed_after_us_prints_no_jit_script_deprecation():
    """mmengine's runner imports deepspeed in every training run; its torch.jit.script calls made torch
    warn twice before the run's first line (and before a bad setting's one line)."""
    code = "import xtuner_assistant, mmengine.runner, deepspeed"
    result = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.jit.script" not in result.stderr
    without_us = subprocess.run([sys.executable, "-W", "default", "-c", "import deepspeed"], capture_output=True, text=True)
    assert "torch.jit.script` is deprecated" in without_us.stderr, "the warning this fix drops is gone upstream"


def test_the_top_help_is_written_for_people(capsys):
    from xtuner_assistant.cli.main import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "Give a small chat model its own identity" in text and "xtuner-assistant demo --name Alice" in text
    assert "xtuner-assistant train CONFIG --set name=Alice" in text and "`xtuner-assistant VERB --help`" in text


def test_a_checkpoint_write_that_fails_leaves_no_partial_file(tmp_path):
    """mmengine's LocalBackend.put writes iter_N.pth in place; with the fix a write that fails (here: a
    file size limit, as a full disk would) leaves the earlier checkpoints and no partial new one."""
    code = f"""
import resource, signal, torch, xtuner_assistant
from mmengine.runner.checkpoint import save_checkpoint
folder = {str(tmp_path)!r}
save_checkpoint({{"state_dict": {{"w": torch.ones(4)}}}}, folder + "/iter_1.pth")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    save_checkpoint({{"state_dict": {{"w": torch.ones(1_000_000)}}}}, folder + "/iter_2.pth")
except OSError as error:
    print("failed:", error.strerror)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "failed: File too large" in result.stdout, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_1.pth"]
    assert torch.load(tmp_path / "iter_1.pth", weights_only=False)["state_dict"]["w"].sum() == 4
    assert (tmp_path / "iter_1.pth").stat().st_mode & 0o777 == 0o666 & ~_umask(), "follows the umask"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_stock_xtuner_train_returns_the_real_exit_status(tmp_path):
    """xtuner 0.2.0's `xtuner` drops its tool's status; the start-up fix in this venv passes it on."""
    xtuner = Path(sys.executable).parent / "xtuner"
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "OMP_NUM_THREADS": "2",
           "XA_MODEL": str(tmp_path / "no-such-model"), "XA_REPLAY_RATIO": "0"}
    config = Path(__file__).resolve().parent.parent / "configs" / "smollm2_135m_lora_cpu_assistant.py"
    result = subprocess.run([str(xtuner), "train", str(config), "--work-dir", str(tmp_path / "w")], env=env,
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert not list((tmp_path / "w").glob("iter_*.pth"))


def test_the_exit_status_fix_touches_only_xtuner_tools():
    code = ("import subprocess, sys; from xtuner_assistant import compat; compat.xtuner_command_exit_status(); "
            "r = subprocess.run([sys.executable, '-c', 'raise SystemExit(3)']); print('still here', r.returncode)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "still here 3"
    tool = ("import subprocess, sys, os; from xtuner_assistant import compat; compat.xtuner_command_exit_status(); "
            "subprocess.run([sys.executable, '-c', 'raise SystemExit(3)', os.sep + 'xtuner' + os.sep + 'tools' + os.sep]); "
            "print('not reached')")
    result = subprocess.run([sys.executable, "-c", tool], capture_output=True, text=True)
    assert result.returncode == 3 and "not reached" not in result.stdout
