"""NEFTune (EmbeddingNoiseHook): noise on the input embeddings while training, none while answering."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmengine.config import Config

from xtuner_assistant.training.embedding_noise import EmbeddingNoiseHook, add_embedding_noise

CPU_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smollm2_135m_lora_cpu_assistant.py"


def test_the_noise_is_bounded_by_alpha_over_the_square_root_of_length_times_width():
    torch.manual_seed(0)
    embeddings = torch.randn(2, 50, 64)
    noisy = add_embedding_noise(embeddings, alpha=5.0)
    bound = 5.0 / math.sqrt(50 * 64)
    difference = (noisy - embeddings).abs()
    assert difference.max() <= bound + 1e-7
    assert difference.mean() == pytest.approx(bound / 2, rel=0.05)  # uniform on (-bound, bound)
    assert not torch.equal(noisy, add_embedding_noise(embeddings, alpha=5.0))  # drawn anew each call


def test_the_hook_blurs_training_forwards_only_and_is_removed_after_training(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    runner = SimpleNamespace(model=SimpleNamespace(llm=llm), logger=SimpleNamespace(info=lambda message: None))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    llm.eval()
    with torch.no_grad():
        clean = llm(input_ids=ids).logits
    hook = EmbeddingNoiseHook(alpha=15.0)
    hook.before_train(runner)
    with torch.no_grad():
        assert torch.equal(llm(input_ids=ids).logits, clean)  # answering (eval mode): no noise
        llm.train()
        first, second = llm(input_ids=ids).logits, llm(input_ids=ids).logits
    assert not torch.allclose(first, clean) and not torch.allclose(first, second)
    hook.after_train(runner)
    with torch.no_grad():
        assert torch.allclose(llm(input_ids=ids).logits, llm(input_ids=ids).logits)  # the hook is gone


def test_a_negative_alpha_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        EmbeddingNoiseHook(alpha=-1)


def test_the_cpu_config_trains_with_the_measured_noise_and_zero_turns_it_off(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("XA_MODEL", str(tiny_model_dir))
    hooks = Config.fromfile(str(CPU_CONFIG)).custom_hooks
    assert [(hook["type"], hook["alpha"]) for hook in hooks] == [("EmbeddingNoiseHook", 15.0)]  # docs/BENCHMARKS.md
    monkeypatch.setenv("XA_EVALUATION_FREQ", "40")
    assert [hook["type"] for hook in Config.fromfile(str(CPU_CONFIG)).custom_hooks] == ["EmbeddingNoiseHook",
                                                                                      "IdentityEvalHook"]
    monkeypatch.setenv("XA_NEFTUNE_ALPHA", "0")
    assert [hook["type"] for hook in Config.fromfile(str(CPU_CONFIG)).custom_hooks] == ["IdentityEvalHook"]
