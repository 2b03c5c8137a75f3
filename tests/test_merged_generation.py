"""The evaluation hook generates through LoRA merged into the dequantized 4-bit weights (one matrix
product a layer instead of a 4-bit product and four adapter operations at every token): the answers
are the adapter's own, and the model is as before afterwards. A CPU has no 4-bit layers, so the tests
stand a plain linear layer in for one (its weight as the "dequantized" weight)."""
from __future__ import annotations

import pytest
import torch

from xtuner_assistant.models.generation import adapter_merged_for_generation, load_chat_model, replies


def as_if_4bit(base_layer):
    return base_layer.weight.detach().clone()


@pytest.fixture()
def adapted_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, tokenizer = load_chat_model(tiny_model_dir, device="cpu")
    # init_lora_weights=False: a non-zero update, as after training (a fresh adapter adds nothing).
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear",
                                             init_lora_weights=False, task_type="CAUSAL_LM")).eval()
    return model, tokenizer


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def test_merged_layers_answer_as_the_adapter_does_and_are_restored(adapted_model):
    model, tokenizer = adapted_model
    prompts = ["hello there", "who are you", "what is two and two"]
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        adapter_logits = model(ids).logits
    adapter_answers = replies(model, tokenizer, prompts, max_new_tokens=12)

    with adapter_merged_for_generation(model, dequantize=as_if_4bit) as merged:
        assert merged == len(lora_layers(model)) > 0
        forward = lora_layers(model)[0].forward
        weight = dict(zip(forward.__code__.co_freevars, (cell.cell_contents for cell in forward.__closure__)))["weight"]
        assert weight.grad_fn is None and not weight.requires_grad, "the merged copy keeps no autograd graph"
        with torch.no_grad():
            merged_logits = model(ids).logits
        merged_answers = replies(model, tokenizer, prompts, max_new_tokens=12)
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-5, atol=1e-5)
    assert merged_answers == adapter_answers

    assert not any("forward" in vars(layer) for layer in lora_layers(model)), "the class's forward is back"
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, adapter_logits, rtol=0, atol=0)


def test_nothing_is_merged_without_4bit_weights_or_with_the_adapter_off(adapted_model):
    model, _ = adapted_model
    with adapter_merged_for_generation(model) as merged:  # the real test for 4-bit: a CPU model has none
        assert merged == 0
    with model.disable_adapter(), adapter_merged_for_generation(model, dequantize=as_if_4bit) as merged:
        assert merged == 0


def test_a_failure_inside_the_block_still_restores_every_layer(adapted_model):
    model, _ = adapted_model
    with pytest.raises(RuntimeError, match="stop"):
        with adapter_merged_for_generation(model, dequantize=as_if_4bit):
            raise RuntimeError("stop")
    assert not any("forward" in vars(layer) for layer in lora_layers(model))
