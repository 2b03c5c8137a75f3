"""The GPU speed-ups' logic, on the CPU: fused kernels go only where they give the module's own
answer, and compiled layers serve training but never generation. Liger's Triton kernels need a GPU,
so the CPU tests swap in the same math written in torch (`REFERENCE`); the GPU run that measures the
real ones is in docs/BENCHMARKS.md."""
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from xtuner_assistant.training.fused_kernels import (Kernels, compile_decoder_layers, fuse_decoder,
                                                      keep_activations_of_last_layers, liger_kernels)
from xtuner_assistant.training.graphed_step import checkpoint_without_rng_state


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def reference_rms_norm(hidden, weight, eps):
    variance = hidden.float().pow(2).mean(-1, keepdim=True)
    return weight * (hidden.float() * torch.rsqrt(variance + eps)).to(hidden.dtype)


def reference_rope(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


REFERENCE = Kernels(rms_norm=reference_rms_norm, silu_mul=lambda gate, up: F.silu(gate) * up, rope=reference_rope)


@pytest.fixture
def restore_rope():
    """fuse_decoder replaces the modeling module's apply_rotary_pos_emb; put every one back."""
    saved = {name: module.apply_rotary_pos_emb for name, module in list(sys.modules.items())
             if callable(getattr(module, "apply_rotary_pos_emb", None))}
    yield
    for name, function in saved.items():
        sys.modules[name].apply_rotary_pos_emb = function


@pytest.fixture(scope="module")
def internlm2_dir(tiny_model_dir, tmp_path_factory):
    from xtuner_assistant.models.stand_ins import random_internlm2_chat

    return random_internlm2_chat(tmp_path_factory.mktemp("internlm2") / "model", tiny_model_dir, real_shape=False)


def load(model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, attn_implementation="sdpa").eval()


def logits(model, ids=torch.tensor([[3, 17, 42, 7, 99, 5, 64, 12]])):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("architecture", ["llama", "internlm2"])
def test_fused_kernels_replace_every_norm_mlp_and_rope_and_keep_the_answers(tiny_model_dir, internlm2_dir,
                                                                           architecture, restore_rope):
    model = load(tiny_model_dir if architecture == "llama" else internlm2_dir)
    layers = model.config.num_hidden_layers
    before = logits(model)
    counts = fuse_decoder(model, REFERENCE)
    assert counts == {"rms_norm": 2 * layers + 1, "swiglu": layers, "rope_modules": 1, "kept_own": []}
    modeling = sys.modules[type(model.model.layers[0]).__module__]
    assert getattr(modeling.apply_rotary_pos_emb, "fused_by_xtuner_assistant", False)
    assert torch.allclose(logits(model), before, atol=1e-5)


def test_a_kernel_that_disagrees_with_the_module_is_not_used(tiny_model_dir, restore_rope):
    model = load(tiny_model_dir)
    before = logits(model)
    wrong = Kernels(rms_norm=lambda hidden, weight, eps: reference_rms_norm(hidden, weight, 1.0),  # another eps
                    silu_mul=lambda gate, up: torch.relu(gate) * up,
                    rope=lambda q, k, cos, sin: reference_rope(q, k, cos, -sin))  # the other direction
    counts = fuse_decoder(model, wrong)
    assert counts["rms_norm"] == counts["swiglu"] == counts["rope_modules"] == 0
    assert len(counts["kept_own"]) == 2 * 2 + 1 + 2 + 1
    assert torch.equal(logits(model), before)


def test_a_rope_of_another_convention_keeps_its_own_code(tiny_model_dir, restore_rope, monkeypatch):
    """Some InternLM2 releases gather cos[position_ids] inside apply_rotary_pos_emb; Liger's kernel
    takes cos per position. Same name, other contract: it must not be replaced."""
    model = load(tiny_model_dir)
    modeling = sys.modules[type(model.model.layers[0]).__module__]

    def gathering_rope(q, k, cos, sin, position_ids, unsqueeze_dim=1):
        cos, sin = cos[position_ids].unsqueeze(unsqueeze_dim), sin[position_ids].unsqueeze(unsqueeze_dim)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

    monkeypatch.setattr(modeling, "apply_rotary_pos_emb", gathering_rope)
    counts = fuse_decoder(model, REFERENCE)
    assert counts["rope_modules"] == 0 and any("apply_rotary_pos_emb" in kept for kept in counts["kept_own"])
    assert modeling.apply_rotary_pos_emb is gathering_rope


def test_liger_kernels_that_cannot_run_here_leave_the_model_as_it_was(tiny_model_dir, restore_rope):
    """On the CPU Triton has no device: each check fails, nothing is swapped, the model still answers."""
    model = load(tiny_model_dir)
    before = logits(model)
    counts = fuse_decoder(model, liger_kernels())
    assert counts["rms_norm"] == counts["swiglu"] == counts["rope_modules"] == 0
    assert torch.equal(logits(model), before)


def counting_backend(graphs: list, calls: list):
    """A torch.compile backend that runs each graph as traced and records compilations and calls."""
    def backend(graph, example_inputs):
        graphs.append(graph)

        def run(*args):
            calls.append(1)
            return graph.forward(*args)

        return run

    return backend


def test_compiled_layers_train_and_generation_runs_them_eagerly(tiny_model_dir):
    import torch._dynamo

    torch._dynamo.reset()
    model = load(tiny_model_dir)
    before = logits(model)
    graphs, calls = [], []
    assert compile_decoder_layers(model, backend=counting_backend(graphs, calls)) == model.config.num_hidden_layers
    assert compile_decoder_layers(model, backend="eager") == 0  # twice is once
    model.eval()
    assert torch.allclose(logits(model), before, atol=1e-6) and calls == []
    model.generate(torch.tensor([[3, 17, 42]]), max_new_tokens=3, do_sample=False)
    assert calls == []
    model.train()
    for ids in ([[3, 17, 42, 7]], [[5, 11, 2, 8]]):  # packed rows all have one length
        loss = model(input_ids=torch.tensor(ids), labels=torch.tensor(ids), use_cache=False).loss
        loss.backward()
        assert torch.isfinite(loss)
    assert len(calls) == 2 * model.config.num_hidden_layers
    assert len(graphs) == 1, "one graph serves every layer and row"
    torch._dynamo.reset()


def lora_gradients(model, ids):
    model.zero_grad()
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("checkpoint_inside", [True, False])
def test_compiled_layers_with_activation_checkpointing_train_as_the_eager_model(tiny_model_dir, checkpoint_inside):
    """Checkpointing moves inside the compiled layer (the model's own is turned off), or stays outside
    in its non-reentrant kind; either way the LoRA gradients are the eager model's."""
    import torch._dynamo
    from peft import LoraConfig, get_peft_model

    def lora_model():
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa"),
                               LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "down_proj"]))
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # non-zero, so that every LoRA weight gets a gradient
                torch.nn.init.normal_(parameter, std=0.02)
        model.enable_input_require_grads()  # as PEFT's prepare_model_for_kbit_training does for XTuner
        model.gradient_checkpointing_enable()  # transformers' default: reentrant
        return model.train()

    ids = torch.tensor([[3, 17, 42, 7, 99, 5, 64, 12]])
    expected = lora_gradients(lora_model(), ids)
    torch._dynamo.reset()
    model = lora_model()
    compile_decoder_layers(model, backend="aot_eager", checkpoint_inside=checkpoint_inside)
    decoder = model.get_base_model().model
    if checkpoint_inside:
        assert not model.is_gradient_checkpointing and not decoder.gradient_checkpointing
    else:
        assert decoder.gradient_checkpointing and decoder._gradient_checkpointing_func.keywords == {"use_reentrant": False}
    got = lora_gradients(model, ids)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6), name
    torch._dynamo.reset()


def test_the_last_layers_keep_their_activations_and_train_as_before(tiny_model_dir):
    """`layers_without_checkpointing`: the last layers run once in a step (no recomputation in the
    backward pass), the others twice, and the LoRA gradients are those of checkpointing every layer.
    The choice survives an evaluation, which turns checkpointing off and on (IdentityEvalHook)."""
    from peft import LoraConfig, get_peft_model

    from xtuner_assistant.evaluation.hook import _inference

    def lora_model():
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa"),
                               LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "down_proj"]))
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.02)
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model.train()

    ids = torch.tensor([[3, 17, 42, 7, 99, 5, 64, 12]])
    expected = lora_gradients(lora_model(), ids)
    model = lora_model()
    layers = model.get_base_model().model.layers
    assert keep_activations_of_last_layers(model, 1) == 1
    checkpoint_function = model.get_base_model().model._gradient_checkpointing_func

    class Wrapped(torch.nn.Module):  # what the hook sees: xtuner's model, the LLM as .llm
        def __init__(self, llm):
            super().__init__()
            self.llm = llm

    with _inference(Wrapped(model)):
        assert not model.is_gradient_checkpointing
    model.train()
    assert model.get_base_model().model._gradient_checkpointing_func is checkpoint_function
    calls = [0] * len(layers)  # forward starts: a recomputation stops early, before a forward hook would run
    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    got = lora_gradients(model, ids)
    assert calls == [2] * (len(layers) - 1) + [1]
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6), name
    # The CUDA-graph step passes checkpoint options through the same function; a kept layer must not
    # get them (InternLM2DecoderLayer.forward() got an unexpected keyword argument, on the GPU)
    checkpoint_without_rng_state(model)
    got = lora_gradients(model, ids)
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6), name
    assert keep_activations_of_last_layers(model, 0) == 0


@pytest.mark.parametrize("required, failure", [(False, RuntimeError), (True, RuntimeError), (False, torch.OutOfMemoryError)])
def test_a_compiler_that_fails_leaves_the_layers_eager_unless_compiling_was_required(tiny_model_dir, required, failure,
                                                                                    caplog):
    """compile_layers=auto means on where it works: a GPU whose compiler fails still trains. Running
    out of memory is not a compiler's failure: it stops the run, whatever was asked."""
    import torch._dynamo

    attempts = []

    def failing_backend(graph, example_inputs):
        attempts.append(1)
        raise failure("no compiler for this device")

    torch._dynamo.reset()
    model = load(tiny_model_dir).train()
    compile_decoder_layers(model, backend=failing_backend, required=required)
    ids = torch.tensor([[3, 17, 42, 7]])
    if required or failure is torch.OutOfMemoryError:
        with pytest.raises(Exception, match="no compiler for this device"):
            model(input_ids=ids, labels=ids, use_cache=False)
    else:
        for _ in range(2):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
            loss.backward()
            assert torch.isfinite(loss)
        assert len(attempts) == 1, "tried once, not on every layer and step"
        assert "compiling the decoder layers failed" in caplog.text and "no compiler for this device" in caplog.text
    torch._dynamo.reset()
