"""The CUDA-graph training step (training/graphed_step.py) on the CPU: its fixed-shape pieces compute
what the shipped step computes, it says why it stays eager, and its replay bookkeeping trains the same
weights as eager steps. The capture itself needs a GPU (bench/graph_step.py, docs/BENCHMARKS.md)."""
from __future__ import annotations

import contextlib
import uuid

import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper

from test_packing import CONVERSATIONS, packed_batch, packed_finetune
from xtuner_assistant.chat_template import IGNORE_INDEX
from xtuner_assistant.data.packing import PackedChatDataset, pack_samples, packed_collate_fn
from xtuner_assistant.training import answer_loss, graphed_step
from xtuner_assistant.training.document_attention import document_boundaries
from xtuner_assistant.training.answer_loss import answer_targets_in_row, answer_token_loss, fixed_shape_answer_loss
from xtuner_assistant.training.graphed_step import fit_graph_to_data, padded_boundaries, reason_not_to_graph
from xtuner_assistant.training.settings import SettingError


def test_padded_boundaries_end_with_empty_conversations_and_refuse_a_row_with_more():
    documents = packed_batch()["document_ids"]  # three conversations and the padding, 32 tokens
    offsets, n = document_boundaries(documents)
    padded = padded_boundaries(documents, slots=8)
    assert padded.shape == (9,) and padded.dtype == torch.int32
    assert padded[:offsets.numel()].tolist() == offsets.tolist() and set(padded[offsets.numel():].tolist()) == {n}
    assert padded_boundaries(documents, slots=offsets.numel() - 1).tolist() == offsets.tolist()
    assert padded_boundaries(documents, slots=offsets.numel() - 2) is None
    longest = int((offsets[1:] - offsets[:-1]).max())
    assert padded_boundaries(documents, slots=8, longest=longest).tolist() == padded.tolist()
    assert padded_boundaries(documents, slots=8, longest=6) is None  # a conversation of 7 tokens: eager
    # The padding (16 tokens) attends only to itself: cut into runs the bound holds, each a slot.
    assert padded_boundaries(documents, slots=8, longest=7).tolist() == [0, 7, 11, 16, 23, 30, 32, 32, 32]
    assert padded_boundaries(documents, slots=5, longest=7) is None


def test_the_graph_holds_what_the_packed_data_holds_and_no_row_runs_eagerly(tiny_model_dir):
    """GraphShapeFromDataHook's work: the captured row gets as many slots and as long a bound as the
    packed data needs, every row of that data fits them, and one conversation more does not."""
    import random

    rng = random.Random(0)
    samples = []
    for _ in range(60):
        n = rng.randint(3, 30)
        prompt = max(2, n // 2)  # answers about half of a conversation, as chat data has
        samples.append({"input_ids": list(range(5, 5 + n)),
                        "labels": [IGNORE_INDEX] * prompt + list(range(5 + prompt, 5 + n))})
    dataset = PackedChatDataset(samples, pack_tokens=64, seed=0)
    shape = dataset.report
    assert shape["longest_conversation"] == max(len(s["input_ids"]) for s in samples)
    assert shape["most_conversations_in_a_row"] == max(len(pack) for pack in dataset.packs) > 2
    finetune = packed_finetune(tiny_model_dir, longest_conversation=1024)
    finetune.loss_chunk_tokens = 8
    assert finetune.graphed_step.slots == graphed_step.DOCUMENT_SLOTS
    said = fit_graph_to_data(finetune, dataset)
    step = finetune.graphed_step
    assert step.slots == shape["attention_runs_in_a_row"] and step.longest == shape["longest_conversation"]
    # whole chunks of the loss
    assert step.answer_slots % 8 == 0 and 0 <= step.answer_slots - shape["most_answer_tokens_in_a_row"] < 8
    assert f"up to {shape['most_conversations_in_a_row']} conversations of up to {step.longest} tokens" in said
    assert f"up to {shape['most_answer_tokens_in_a_row']} answer tokens ({step.answer_slots} slots)" in said
    used, scored = [], []
    for index in range(len(dataset)):
        row = packed_collate_fn([dataset[index]], pad_to_multiple_of=64)["data"]
        documents = row["document_ids"]
        offsets = padded_boundaries(documents, step.slots, step.longest)
        assert offsets is not None, f"row {index} would run eagerly"
        assert step._answers_fit(row["labels"], documents, row), f"row {index}'s answers would run eagerly"
        runs = offsets[1:] - offsets[:-1]
        assert int(runs.max()) <= step.longest and int(offsets[-1]) == 64
        used.append(int((runs > 0).sum()))
        scored.append(answer_targets_in_row(row["labels"], documents))
    assert max(used) == step.slots, "the slots are as many as the fullest row needs, not more"
    # labels on each conversation's first token are never scored: the slots hold every row, with 2 to spare
    assert max(scored) <= shape["most_answer_tokens_in_a_row"] <= max(scored) + 2 * max(len(pack) for pack in dataset.packs)
    assert step.answer_slots < 64 - 1, "fewer slots than positions: the loss does less work than before"
    fullest = max(range(len(dataset)), key=lambda i: len(dataset.packs[i]))
    crowded = packed_collate_fn([dataset[fullest]], pad_to_multiple_of=64)["data"]["document_ids"]
    assert padded_boundaries(crowded, len(dataset.packs[fullest]) - 1, step.longest) is None
    # Off by the setting, and never after the capture (its buffers have their shape).
    kept = packed_finetune(tiny_model_dir, longest_conversation=1024, graph_shape_from_data=False)
    assert fit_graph_to_data(kept, dataset) is None
    assert (kept.graphed_step.slots, kept.graphed_step.longest) == (graphed_step.DOCUMENT_SLOTS, 1024)
    step.state, step.slots = "captured", 99
    assert fit_graph_to_data(finetune, dataset) is None and step.slots == 99
    with pytest.raises(SettingError, match="graph_shape_from_data"):
        packed_finetune(tiny_model_dir, graph_shape_from_data="sometimes")


def test_fixed_shape_loss_is_the_shipped_answer_token_loss_with_its_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 40)
    data = packed_batch()
    labels, documents = data["labels"].clone(), data["document_ids"]
    starts = torch.nonzero(documents[0, 1:] != documents[0, :-1]).flatten() + 1
    labels[0, starts] = data["input_ids"][0, starts]  # a label on each conversation's first token
    hidden = torch.randn(1, labels.shape[1], 8, requires_grad=True)
    shipped = answer_token_loss(hidden, labels, head, documents, chunk_tokens=5)
    fixed = fixed_shape_answer_loss(hidden, labels, head, documents, chunk_tokens=5)
    assert fixed.item() == pytest.approx(shipped.item(), rel=1e-6)
    for a, b in zip(torch.autograd.grad(shipped, (hidden, head.weight)), torch.autograd.grad(fixed, (hidden, head.weight))):
        assert torch.allclose(a, b, atol=1e-6)
    # Both leave out the last token of one conversation predicting the next one's first.
    answers = int((labels[:, 1:] != IGNORE_INDEX).sum())
    crossing = int(((documents[:, 1:] != documents[:, :-1]) & (labels[:, 1:] != IGNORE_INDEX)).sum())
    assert crossing > 0 and answers > crossing
    # The answer positions gathered into slots: as many as the row's, more, or every position.
    scored = answer_targets_in_row(labels, documents)
    assert scored == answers - crossing
    shipped = answer_token_loss(hidden, labels, head, documents, chunk_tokens=5)
    hidden_gradient = torch.autograd.grad(shipped, hidden)[0]
    for slots in (scored, scored + 4, labels.shape[1] - 1, labels.shape[1] + 5):
        gathered = fixed_shape_answer_loss(hidden, labels, head, documents, chunk_tokens=5, answer_slots=slots)
        assert gathered.item() == pytest.approx(shipped.item(), rel=1e-6), slots
        assert torch.allclose(torch.autograd.grad(gathered, hidden)[0], hidden_gradient, atol=1e-6), slots


def test_a_frozen_heads_gradient_made_in_the_forward_pass_is_autograds():
    """With a frozen linear head (LoRA training) the loss makes the hidden states' gradient in its forward
    pass; the same loss and gradient as autograd through checkpointed chunks (a trained head's path)."""
    torch.manual_seed(0)
    trained = torch.nn.Linear(8, 40)
    frozen = torch.nn.Linear(8, 40).requires_grad_(False)
    frozen.load_state_dict(trained.state_dict())
    data = packed_batch()
    for bias in (True, False):
        if not bias:
            trained.bias = frozen.bias = None
        hidden = torch.randn(1, data["labels"].shape[1], 8, requires_grad=True)
        losses = {}
        for name, head in (("autograd", trained), ("in forward", frozen)):
            for form in ("selected", "fixed shape"):
                if form == "selected":
                    loss = answer_token_loss(hidden, data["labels"], head, data["document_ids"], chunk_tokens=3)
                else:
                    loss = fixed_shape_answer_loss(hidden, data["labels"], head, data["document_ids"], chunk_tokens=7)
                grad_fn = type(loss.grad_fn).__name__
                (gradient,) = torch.autograd.grad(loss * 3.0, hidden)  # an upstream factor, as a loss scale is
                losses[name, form] = (loss.item(), gradient, grad_fn)
        reference, reference_gradient, _ = losses["autograd", "selected"]
        for key, (value, gradient, _) in losses.items():
            assert value == pytest.approx(reference, rel=1e-6), key
            assert torch.allclose(gradient, reference_gradient, atol=1e-6), key
        assert gradient.abs().sum() > 0
    # a LoRA adapter on the frozen head (XTuner puts one on InternLM2's `output`): its gradients too
    from peft import LoraConfig, get_peft_model

    class Headed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.output = torch.nn.Linear(8, 40, bias=False)

    with_lora = get_peft_model(Headed(), LoraConfig(r=4, lora_alpha=8, target_modules=["output"])).base_model.model.output
    torch.nn.init.normal_(with_lora.lora_B["default"].weight)  # B starts at 0: give A a gradient
    adapter = (with_lora.lora_A["default"].weight, with_lora.lora_B["default"].weight)
    hidden = torch.randn(1, data["labels"].shape[1], 8, requires_grad=True)
    targets = answer_loss._next_token_targets(data["labels"], data["document_ids"])[0]
    keep = targets != IGNORE_INDEX
    reference = torch.nn.functional.cross_entropy(with_lora(hidden[0, :-1][keep]).float(), targets[keep]) * 2.0
    expected = torch.autograd.grad(reference, (hidden, *adapter))
    for loss in (answer_token_loss(hidden, data["labels"], with_lora, data["document_ids"], chunk_tokens=3),
                 fixed_shape_answer_loss(hidden, data["labels"], with_lora, data["document_ids"], chunk_tokens=7,
                                         answer_slots=int(keep.sum()) + 2)):
        assert "LossWithGradientInForward" in str(loss.grad_fn.next_functions)
        assert loss.item() * 2.0 == pytest.approx(reference.item(), rel=1e-6)
        for got, want in zip(torch.autograd.grad(loss * 2.0, (hidden, *adapter)), expected):
            assert torch.allclose(got, want, atol=1e-6) and want.abs().sum() > 0
    with_lora.lora_dropout["default"] = torch.nn.Dropout(0.1)  # random: autograd's own path
    assert answer_loss._head_parts(with_lora) is None
    # the frozen head took the path that makes the gradient in the forward pass, the trained one did not
    assert "LossWithGradientInForward" in str(answer_token_loss(hidden, data["labels"], frozen,
                                                                data["document_ids"]).grad_fn.next_functions)
    assert "LossWithGradientInForward" not in str(answer_token_loss(hidden, data["labels"], trained,
                                                                    data["document_ids"]).grad_fn.next_functions)


def test_the_attention_bound_is_the_datas_max_length_and_a_bad_one_is_one_line(tiny_model_dir):
    assert packed_finetune(tiny_model_dir, longest_conversation=1024).graphed_step._attention_bound(3072) == 1024
    assert packed_finetune(tiny_model_dir).graphed_step._attention_bound(3072) == 3072  # None: the row length
    assert packed_finetune(tiny_model_dir, longest_conversation=4096).graphed_step._attention_bound(3072) == 3072
    for bad in (0, "many"):
        with pytest.raises(SettingError, match="longest_conversation"):
            packed_finetune(tiny_model_dir, longest_conversation=bad)


def test_the_step_stays_eager_and_says_why(tiny_model_dir, monkeypatch):
    finetune = packed_finetune(tiny_model_dir)
    wrapper = OptimWrapper(torch.optim.AdamW([p for p in finetune.parameters() if p.requires_grad], lr=1e-3))
    finetune.llm.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout["default"] = torch.nn.Dropout(0.05)
    assert reason_not_to_graph(finetune, wrapper) == "the model is not on a CUDA GPU"
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # the checks after that one
    assert "lora_dropout=0" in reason_not_to_graph(finetune, wrapper)
    finetune.llm.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout["default"] = torch.nn.Identity()
    accumulating = OptimWrapper(wrapper.optimizer, accumulative_counts=2)
    assert "accumulated over 2 rows" in reason_not_to_graph(finetune, accumulating)

    class DeepSpeedLike(OptimWrapper):
        pass

    assert "DeepSpeedLike" in reason_not_to_graph(finetune, DeepSpeedLike(wrapper.optimizer))


def test_on_the_cpu_auto_trains_eagerly_and_true_is_refused_on_the_first_step(tiny_model_dir, caplog):
    finetune = packed_finetune(tiny_model_dir)
    assert finetune.cuda_graph == "auto" and finetune.graphed_step is not None
    wrapper = OptimWrapper(torch.optim.AdamW([p for p in finetune.parameters() if p.requires_grad], lr=1e-3))
    batch = {"data": packed_batch(), "data_samples": None}
    for _ in range(graphed_step.EAGER_STEPS_BEFORE_CAPTURE + 2):
        log_vars = finetune.train_step(batch, wrapper)
        # no graph left alive: it would keep gradient accumulators bound to the default stream
        assert torch.isfinite(log_vars["loss"]) and log_vars["loss"].grad_fn is None
    assert finetune.graphed_step.state == "off" and "CUDA" in finetune.graphed_step.why

    required = packed_finetune(tiny_model_dir, cuda_graph=True)
    with pytest.raises(SettingError, match="model.cuda_graph=True needs training on a CUDA GPU"):
        required.train_step(batch, OptimWrapper(torch.optim.AdamW(
            [p for p in required.parameters() if p.requires_grad], lr=1e-3)))


class _ReplayedEagerly:
    """A CUDA graph's stand-in: replay() runs the captured step again, writing (not adding to) the
    gradients the capture left, as a replay does."""

    def __init__(self, step, optim_wrapper):
        self.step, self.optim_wrapper = step, optim_wrapper

    def replay(self):
        for parameter, gradient in zip(self.step.parameters, self.step.gradients):
            parameter.grad = gradient.zero_()  # a replay writes the captured buffers, whatever .grad holds
        self.step.loss.copy_(self.step._forward_backward(self.optim_wrapper))
        for parameter in self.step.parameters:
            parameter.grad = None  # ... and leaves .grad as it was: the step must restore it


@pytest.fixture(scope="module", params=["llama", "qwen2", "internlm2"])
def architecture_dir(request, tiny_model_dir, tmp_path_factory):
    """A tiny model of each architecture the packed configs train (SmolLM2, Qwen2.5, InternLM2)."""
    if request.param == "llama":
        return tiny_model_dir
    folder = tmp_path_factory.mktemp(request.param) / "model"
    if request.param == "internlm2":
        from xtuner_assistant.models.stand_ins import random_internlm2_chat

        return random_internlm2_chat(folder, tiny_model_dir, real_shape=False)
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
                     ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_replays_train_the_same_weights_as_eager_steps(architecture_dir, monkeypatch):
    """Everything around the graph on the CPU, for each architecture's own forward (its mask handling
    patched as on the GPU): inputs copied into the captured buffers, the optimizer stepping on the
    gradients the replay wrote, no zero_grad in between, the loss on the answer positions gathered into
    slots, a row with too many conversations (or answer tokens) trained eagerly in between and the
    gradients restored after it."""
    rows = [packed_collate_fn([pack_samples(CONVERSATIONS[i:] + CONVERSATIONS[:i])], pad_to_multiple_of=32)["data"]
            for i in range(3)]
    crowded = packed_collate_fn([pack_samples(CONVERSATIONS * 2)], pad_to_multiple_of=32)["data"]
    order = [rows[0], rows[1], rows[2], rows[0], rows[1], crowded, rows[2], rows[0]]

    scored = answer_targets_in_row(rows[0]["labels"], rows[0]["document_ids"])

    def train(graphed: bool, slots: int = 4):
        finetune = packed_finetune(architecture_dir, cuda_graph="auto" if graphed else False)
        for p in finetune.parameters():  # B starts at 0: give every LoRA weight a gradient
            if p.requires_grad and p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)
        # as the packed configs step; a max_norm that clips, so the replays' clipping is checked too
        wrapper = OptimWrapper(torch.optim.AdamW([p for p in finetune.parameters() if p.requires_grad], lr=1e-2,
                                                 fused=True), clip_grad=dict(max_norm=0.05))
        wrapper.message_hub = MessageHub.get_instance(f"replays-{uuid.uuid4()}")  # this run's norms only
        if graphed:
            step = finetune.graphed_step
            # slots=4: the crowded row's six conversations do not fit; more: its answer tokens do not
            step.slots, step.answer_slots = slots, scored + 3
            monkeypatch.setattr(graphed_step, "reason_not_to_graph", lambda model, optim_wrapper: None)
            monkeypatch.setattr(step, "_fits", lambda inputs: True)

            def record(optim_wrapper):  # what capturing leaves, without a GPU
                for p in step.parameters:
                    p.grad = None
                step.loss = step._forward_backward(optim_wrapper).clone()
                step.gradients = [p.grad for p in step.parameters]
                step.graph = _ReplayedEagerly(step, optim_wrapper)

            monkeypatch.setattr(step, "_record", record)
        losses = [finetune.train_step({"data": row, "data_samples": None}, wrapper)["loss"].item() for row in order]
        norms = list(wrapper.message_hub.get_scalar("train/grad_norm").data[0])
        return losses, norms, {n: p.detach().clone() for n, p in finetune.named_parameters() if p.requires_grad}

    eager_losses, eager_norms, eager_weights = train(graphed=False)
    assert len(eager_norms) == len(order) and min(eager_norms) > 0.05, "every step clipped"
    for slots in (4, 16):
        graphed_losses, graphed_norms, graphed_weights = train(graphed=True, slots=slots)
        assert graphed_losses == pytest.approx(eager_losses, rel=1e-5), slots
        assert graphed_norms == pytest.approx(eager_norms, rel=1e-4), "each step's norm logged, as the eager step does"
        for name, weight in eager_weights.items():
            assert torch.allclose(graphed_weights[name], weight, atol=1e-6), (slots, name)
