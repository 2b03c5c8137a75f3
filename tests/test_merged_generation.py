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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="4-bit weights need a CUDA GPU (bitsandbytes)")
def test_on_a_gpu_real_4bit_layers_merge_answer_as_the_adapter_and_respect_the_memory_budget(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=nf4, torch_dtype=torch.bfloat16,
                                                 device_map={"": 0})
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                             task_type="CAUSAL_LM")).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]], device="cuda")
    with torch.no_grad():
        adapter_logits = model(ids).logits.float()
        with model.disable_adapter():
            base_logits = model(ids).logits.float()
    assert (adapter_logits - base_logits).abs().max() > 0.2, "the adapter changes the answer, so the check below can fail"

    with adapter_merged_for_generation(model) as merged:
        assert merged == len(lora_layers(model)) > 0
        with torch.no_grad():
            merged_logits = model(ids).logits.float()
    # bf16: W + BA rounded once against two products added
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=0.02, atol=0.05)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits.float(), adapter_logits, rtol=0, atol=0)

    with adapter_merged_for_generation(model, free_memory_share=1e-12) as merged:
        assert merged == 0, "no room on the card: every layer stays 4-bit"
