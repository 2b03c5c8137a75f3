"""`train --deepspeed` on the CPU machine, with the DeepSpeed that `make install` pins: XTuner's own
`deepspeed_zero2` builds its config (it turns fp16 on, which DeepSpeed refuses on a CPU without
oneDNN's float16 kernels, AMX-FP16 or AVX512-FP16, and trains with on one that has them), and a ZeRO-2
config without fp16/bf16 trains, and its checkpoint converts."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2_135m_lora_cpu_assistant.py"
CLI = [sys.executable, "-m", "xtuner_assistant.cli"]


def train(tmp_path, tiny_model_dir, work_dir, deepspeed):
    (tmp_path / "data").mkdir(exist_ok=True)
    identity = tmp_path / "data" / "identity.jsonl"
    if not identity.is_file():
        subprocess.run([*CLI, "data", "identity", "--name", "Zorblat", "-n", "8", "--out", identity.parent], check=True,
                       capture_output=True)
    return subprocess.run([*CLI, "train", CONFIG, "--model", tiny_model_dir, "--work-dir", work_dir, "--deepspeed",
                           deepspeed, "--set", f"identity_file={identity}", "--set", "general_ratio=0", "--set",
                           "batch_size=4", "--set", "max_epochs=1", "--set", "save_steps=2"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=600)


@pytest.mark.slow
def test_deepspeed_zero2_builds_its_config_on_a_cpu(tmp_path, tiny_model_dir):
    work_dir = tmp_path / "zero2"
    result = train(tmp_path, tiny_model_dir, work_dir, "deepspeed_zero2")
    from mmengine.config import Config

    dumped = Config.fromfile(str(work_dir / CONFIG.name))  # what `xtuner train` resolved and wrote
    assert dumped.strategy.type.endswith("DeepSpeedStrategy") and dumped.strategy.config.zero_optimization.stage == 2
    assert dumped.optim_wrapper.type == "DeepSpeedOptimWrapper"
    output = result.stdout + result.stderr
    import torch

    if torch.ops.mkldnn._is_mkldnn_fp16_supported():  # what DeepSpeed's CPU accelerator asks
        assert result.returncode == 0, output[-3000:]
        assert (work_dir / "iter_2.pth").is_dir(), "a DeepSpeed checkpoint is a folder"
    else:
        assert result.returncode != 0 and "Type fp16 is not supported on your device" in output, output[-3000:]


@pytest.mark.slow
def test_zero2_without_half_precision_trains_on_a_cpu_and_converts(tmp_path, tiny_model_dir):
    zero2 = tmp_path / "zero2_cpu.json"
    zero2.write_text(json.dumps({
        "gradient_accumulation_steps": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
        "zero_optimization": {"stage": 2, "overlap_comm": True}, "fp16": {"enabled": False}, "bf16": {"enabled": False}}))
    work_dir = tmp_path / "zero2_cpu"
    result = train(tmp_path, tiny_model_dir, work_dir, zero2)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (work_dir / "iter_2.pth").is_dir(), "a DeepSpeed checkpoint is a folder"
    converted = subprocess.run([*CLI, "convert", work_dir, "--out", tmp_path / "adapter"], capture_output=True, text=True)
    assert converted.returncode == 0, converted.stderr[-3000:]
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
