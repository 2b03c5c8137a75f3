"""The user's story on a tiny random model, through the real tools: make identity data -> `xtuner train`
-> convert -> merge (checked) -> chat. Mechanics only; learning is tested on the real model elsewhere."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2_135m_lora_cpu_assistant.py"
CLI = [sys.executable, "-m", "xtuner_assistant.cli"]


def cli(*args, env=None, check=True):
    result = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("pipeline")
    cli("data", "identity", "--name", "Zorblat", "--samples", "16", "--out", root / "data")
    work_dir = root / "train"
    cli("train", CONFIG, "--work-dir", work_dir, "--model", tiny_model_dir,
        "--set", f"identity_file={root / 'data' / 'identity.jsonl'}", "--set", "max_epochs=1",
        "--set", "batch_size=4", "--set", "save_steps=4", "--set", "general_ratio=0.5")
    return root, work_dir


def test_train_leaves_checkpoints_and_a_resolved_config(trained):
    _, work_dir = trained
    assert sorted(p.name for p in work_dir.glob("iter_*.pth")) == ["iter_4.pth", "iter_6.pth"]
    dumped = (work_dir / CONFIG.name).read_text()
    assert "identity.jsonl" in dumped and "MixedChatDataset" in dumped
    assert list(work_dir.glob("*/vis_data/scalars.json"))


def test_convert_merge_and_chat(trained, tiny_model_dir):
    root, work_dir = trained
    cli("convert", work_dir, "--out", root / "adapter")
    assert (root / "adapter" / "adapter_config.json").is_file()
    merged = cli("merge", root / "adapter", "--base", tiny_model_dir, "--out", root / "merged")
    assert merged.stdout.strip().splitlines()[-1] == f"merged model: {root / 'merged'}"
    check = json.loads((root / "merged" / "xtuner_assistant_merge.json").read_text())
    assert check["largest_logit_difference"] <= check["tolerance"]
    assert not [p for p in root.iterdir() if ".staging-" in p.name], "no staging folders left behind"
    streamed = cli("chat", root / "merged", "--prompt", "Who are you?", "--max-new-tokens", "8").stdout

    from xtuner_assistant.models.generation import load_chat_model, reply

    model, tokenizer = load_chat_model(root / "merged", device="cpu")
    expected = reply(model, tokenizer, [{"role": "user", "content": "Who are you?"}], max_new_tokens=8)
    assert streamed.strip() == expected, "the terminal streams exactly the library's greedy reply"


def test_the_adapter_written_from_the_checkpoint_is_the_one_pth_to_hf_writes(trained, tmp_path, monkeypatch):
    """`convert` writes a LoRA checkpoint's adapter itself, without building the model: the same
    float32 weights under the same names and the same adapter_config.json as XTuner's pth_to_hf; a
    checkpoint holding anything but LoRA's A and B weights goes to pth_to_hf."""
    import torch
    from safetensors.torch import load_file

    from xtuner_assistant.training.export import checkpoint_to_adapter, lora_adapter_from_checkpoint, pth_to_hf
    from xtuner_assistant.training.work_dir import resolved_config

    _, work_dir = trained
    direct = checkpoint_to_adapter(work_dir, tmp_path / "direct", "iter_6.pth")
    stock = pth_to_hf(work_dir, tmp_path / "stock", "iter_6.pth")
    weights, expected = load_file(direct / "adapter_model.safetensors"), load_file(stock / "adapter_model.safetensors")
    assert sorted(weights) == sorted(expected) and len(weights) == 2 * 7 * 2  # A and B, 7 linears, 2 layers
    for key, value in expected.items():
        assert weights[key].dtype == value.dtype == torch.float32 and torch.equal(weights[key], value), key

    def settings(folder):
        config = json.loads((folder / "adapter_config.json").read_text())
        return {**config, "target_modules": sorted(config["target_modules"])}

    assert settings(direct) == settings(stock)
    assert settings(direct)["r"] == 16 and len(settings(direct)["target_modules"]) == 7

    # A QLoRA run (4-bit base, trained on a GPU) converts on a machine without one: no model is built.
    import shutil

    import transformers

    qlora = tmp_path / "qlora_work"
    shutil.copytree(work_dir, qlora)
    config = resolved_config(qlora)
    text = config.read_text()
    assert text.count("llm=dict(") == 1
    config.write_text(text.replace("llm=dict(", "llm=dict(quantization_config=dict(type='transformers.BitsAndBytesConfig', "
                                   "load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True, "
                                   "bnb_4bit_compute_dtype='torch.bfloat16'), "))
    def no_model(*args, **kwargs):
        raise AssertionError("convert built a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    from_qlora = load_file(checkpoint_to_adapter(qlora, tmp_path / "from_qlora", "iter_6.pth") / "adapter_model.safetensors")
    assert from_qlora.keys() == expected.keys() and all(torch.equal(from_qlora[k], v) for k, v in expected.items())

    state = torch.load(work_dir / "iter_6.pth", map_location="cpu", weights_only=False)
    state["state_dict"]["llm.base_model.model.lm_head.weight"] = torch.zeros(2, 2)  # a weight that is not LoRA's
    torch.save(state, tmp_path / "iter_99.pth")
    assert not lora_adapter_from_checkpoint(resolved_config(work_dir), tmp_path / "iter_99.pth", tmp_path / "no")
    assert not (tmp_path / "no").exists()


def test_resume_continues_from_the_last_checkpoint(trained, tiny_model_dir):
    root, work_dir = trained
    result = cli("train", CONFIG, "--work-dir", work_dir, "--model", tiny_model_dir, "--resume",
                 "--set", f"identity_file={root / 'data' / 'identity.jsonl'}", "--set", "max_epochs=2",
                 "--set", "batch_size=4", "--set", "save_steps=4", "--set", "general_ratio=0.5")
    assert "resumed" in (result.stdout + result.stderr).lower()
    assert (work_dir / "iter_12.pth").is_file()


def test_training_failure_returns_a_nonzero_status(tmp_path, tiny_model_dir):
    result = cli("train", CONFIG, "--work-dir", tmp_path / "w", "--model", tmp_path / "no-such-model",
                 "--set", "max_epochs=1", check=False)
    assert result.returncode != 0


def test_missing_config_is_a_clear_error(tmp_path):
    result = cli("train", tmp_path / "nope.py", check=False)
    assert result.returncode == 2 and "no such config file" in result.stderr and "Traceback" not in result.stderr


def test_bad_setting_is_a_clear_error():
    result = cli("train", CONFIG, "--set", "lr", check=False)
    assert result.returncode == 2 and "expected NAME=VALUE" in result.stderr


def test_stock_xtuner_from_the_venv_bin_works_without_activation(tmp_path, tiny_model_dir):
    """Stock `xtuner` starts `python` by name and exits 0 even when training fails, so the proof that it
    ran in our environment (with our components and fixes) is the checkpoint it leaves."""
    xtuner = Path(sys.executable).parent / "xtuner"
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "OMP_NUM_THREADS": "2",
           "XA_MODEL": str(tiny_model_dir), "XA_IDENTITY_SAMPLES": "8", "XA_GENERAL_RATIO": "0.5",
           "XA_BATCH_SIZE": "4", "XA_MAX_EPOCHS": "1", "XA_REPLAY_RATIO": "0"}  # a bare env: conftest's setting does not reach it
    subprocess.run([str(xtuner), "train", str(CONFIG), "--work-dir", str(tmp_path / "w")], env=env,
                   capture_output=True, text=True, cwd=tmp_path)
    assert (tmp_path / "w" / "iter_3.pth").is_file()
