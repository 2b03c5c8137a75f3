"""Packing several conversations into one row must train exactly what they would train alone:
no attention across conversations, positions restarting per conversation, the same loss."""
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from xtuner_assistant.chat_template import IGNORE_INDEX
from xtuner_assistant.data.packing import (PADDING_DOCUMENT, PackedChatDataset, block_diagonal_causal_mask, pack_samples,
                                      packed_collate_fn, plan_packs, real_token_count)
from xtuner_assistant.training.packed_finetune import DocumentAttention, answer_token_loss, causal_lm_parts
from xtuner_assistant.training.settings import SettingError

CONVERSATIONS = [
    {"input_ids": [5, 6, 7, 8, 9, 10, 11], "labels": [IGNORE_INDEX] * 3 + [8, 9, 10, 11]},
    {"input_ids": [12, 13, 14, 15], "labels": [IGNORE_INDEX, IGNORE_INDEX, 14, 15]},
    {"input_ids": [16, 17, 18, 19, 20], "labels": [IGNORE_INDEX, 17, 18, 19, 20]},
]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()


def packed_batch(pad_to=32):
    return packed_collate_fn([pack_samples(CONVERSATIONS)], pad_index=0, pad_to_multiple_of=pad_to)["data"]


def alone_logits(model):
    with torch.no_grad():
        return [model(input_ids=torch.tensor([c["input_ids"]])).logits[0] for c in CONVERSATIONS]


def split(row_logits):
    pieces, start = [], 0
    for conversation in CONVERSATIONS:
        pieces.append(row_logits[start:start + len(conversation["input_ids"])])
        start += len(conversation["input_ids"])
    return pieces


def test_plan_packs_puts_every_sample_in_exactly_one_row_within_the_budget():
    lengths = [700, 300, 1024, 5, 5, 512, 512, 90, 1000, 24]
    packs = plan_packs(lengths, pack_tokens=1024, seed=3)
    assert sorted(i for pack in packs for i in pack) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in pack) <= 1024 for pack in packs)
    assert len(packs) == 5  # first-fit decreasing reaches the lower bound ceil(4172 / 1024) here


def test_a_sample_longer_than_a_row_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match="sample 1 has 2000 tokens.*set pack_tokens >= max_length"):
        plan_packs([10, 2000], pack_tokens=1024)


def test_collate_pads_with_its_own_document_and_no_labels():
    data = packed_batch(pad_to=32)
    assert data["input_ids"].shape == (1, 32)
    assert real_token_count(data) == 16
    assert (data["document_ids"][0, 16:] == PADDING_DOCUMENT).all()
    assert (data["labels"][0, 16:] == IGNORE_INDEX).all()
    assert data["position_ids"][0, :16].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 0, 1, 2, 3, 4]


def test_packed_conversations_do_not_attend_to_each_other(model):
    data = packed_batch()
    mask = block_diagonal_causal_mask(data["document_ids"], torch.float32)
    with torch.no_grad():
        packed = model(input_ids=data["input_ids"], attention_mask=mask, position_ids=data["position_ids"]).logits[0]
        concatenated = model(input_ids=data["input_ids"]).logits[0]  # stock packing: one long sequence
    for alone, ours, stock in zip(alone_logits(model), split(packed), split(concatenated)):
        assert torch.allclose(alone, ours, atol=1e-5)
    # The test can see the difference: without the mask the later conversations read the earlier ones.
    assert (split(concatenated)[2] - alone_logits(model)[2]).abs().max() > 1e-2


@pytest.mark.parametrize("flex", [True, False], ids=["flex_attention", "dense_fallback"])
def test_document_attention_computes_the_same_as_each_conversation_alone(model, monkeypatch, flex):
    from torch.nn.attention.flex_attention import flex_attention

    router = DocumentAttention()
    router.flex = flex_attention if flex else None  # eager flex: the compiled kernel needs a GPU
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", router.as_function())
    data = packed_batch(pad_to=128)
    router.set_documents(data["document_ids"])
    zero_stride_mask = torch.zeros(()).expand(1, 1, 128, 128)
    with torch.no_grad():
        packed = model(input_ids=data["input_ids"], attention_mask=zero_stride_mask,
                       position_ids=data["position_ids"]).logits[0]
    for alone, ours in zip(alone_logits(model), split(packed)):
        assert torch.allclose(alone, ours, atol=1e-5)


def test_chunked_answer_token_loss_equals_the_models_own_loss(model):
    conversation = CONVERSATIONS[0]
    ids, labels = torch.tensor([conversation["input_ids"]]), torch.tensor([conversation["labels"]])
    with torch.no_grad():
        expected = model(input_ids=ids, labels=labels).loss
        decoder, head = causal_lm_parts(model)
        hidden = decoder(input_ids=ids).last_hidden_state
        ours = answer_token_loss(hidden, labels, head, chunk_tokens=2)
    assert torch.allclose(ours, expected, atol=1e-6)


def packed_finetune(model_dir, **options):
    from mmengine.config import ConfigDict
    from peft import LoraConfig

    from xtuner_assistant.training.packed_finetune import PackedSupervisedFinetune

    torch.manual_seed(0)
    return PackedSupervisedFinetune(
        llm=ConfigDict(type=AutoModelForCausalLM.from_pretrained, pretrained_model_name_or_path=str(model_dir),
                       trust_remote_code=True, attn_implementation="sdpa", **options.pop("llm", {})),
        lora=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM"),
        use_activation_checkpointing=False, **options)


@pytest.mark.parametrize("frozen_in_bfloat16", [True, False])
def test_frozen_weights_loaded_in_bfloat16_stay_in_it_and_lora_trains_in_float32(tiny_model_dir, frozen_in_bfloat16):
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.bfloat16).state_dict()
    finetune = packed_finetune(tiny_model_dir, llm=dict(torch_dtype=torch.bfloat16), frozen_in_bfloat16=frozen_in_bfloat16)
    frozen = {name: p for name, p in finetune.llm.named_parameters() if not p.requires_grad}
    trained = {name: p for name, p in finetune.llm.named_parameters() if p.requires_grad}
    assert frozen and trained and all("lora_" in name for name in trained)
    assert {p.dtype for p in trained.values()} == {torch.float32}
    # PEFT's prepare_model_for_kbit_training upcasts them; we cast back, and the values are the loaded ones.
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16 if frozen_in_bfloat16 else torch.float32}
    for name, p in frozen.items():
        key = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(p.detach().to(torch.bfloat16), loaded[key]), name

    if frozen_in_bfloat16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = finetune(packed_batch(), mode="loss")["loss"]
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trained.values())


def test_adapter_in_bfloat16_trains_with_its_gradients_and_optimizer_state_in_it(tiny_model_dir):
    """`adapter_dtype=bfloat16` (TRL's and the QLoRA paper's choice): the LoRA weights start as the float32
    ones rounded, and a step as the GPU configs take it (autocast, a dynamic loss scale: AmpOptimWrapper,
    which mmengine allows on GPUs only, with torch's scaler here) keeps weights, gradients and Adam's
    moments in bfloat16 while it moves the weights."""
    reference = packed_finetune(tiny_model_dir, llm=dict(torch_dtype=torch.bfloat16))
    finetune = packed_finetune(tiny_model_dir, llm=dict(torch_dtype=torch.bfloat16), adapter_dtype="bfloat16")
    trained = {name: p for name, p in finetune.llm.named_parameters() if p.requires_grad}
    assert trained and {p.dtype for p in trained.values()} == {torch.bfloat16}
    for name, p in reference.llm.named_parameters():
        if p.requires_grad:
            assert torch.equal(trained[name].detach(), p.detach().to(torch.bfloat16)), name
    for name, p in trained.items():  # B starts at 0, and then A gets no gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    before = {name: p.detach().clone() for name, p in trained.items()}
    optimizer = torch.optim.AdamW(list(trained.values()), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = finetune(packed_batch(), mode="loss")["loss"]
    scaler.scale(loss).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in trained.values())
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(loss)
    state = optimizer.state
    assert all(state[p]["exp_avg"].dtype == torch.bfloat16 for p in trained.values())
    assert all(p.dtype == torch.bfloat16 for p in trained.values())
    assert any(not torch.equal(before[name], p.detach()) for name, p in trained.items() if "lora_A" in name)
    assert any(not torch.equal(before[name], p.detach()) for name, p in trained.items() if "lora_B" in name)


def test_an_adapter_dtype_outside_its_choices_is_refused_in_one_line(tiny_model_dir):
    from xtuner_assistant.training.settings import SettingError

    with pytest.raises(SettingError, match="model.adapter_dtype='float64': expected one of float32, bfloat16"):
        packed_finetune(tiny_model_dir, adapter_dtype="float64")


@pytest.fixture(scope="module")
def internlm2_dir(tiny_model_dir, tmp_path_factory):
    from xtuner_assistant.models.stand_ins import random_internlm2_chat

    return random_internlm2_chat(tmp_path_factory.mktemp("internlm2") / "model", tiny_model_dir, real_shape=False)


def test_internlm2_gets_sdpa_although_its_config_says_eager(internlm2_dir):
    finetune = packed_finetune(internlm2_dir)
    llm = finetune.llm.get_base_model()
    assert llm.config.attn_implementation == "sdpa"
    assert {type(layer.attention).__name__ for layer in llm.model.layers} == {"InternLM2SdpaAttention"}


@pytest.mark.parametrize("architecture", ["llama", "internlm2"])
def test_packed_finetune_trains_the_token_mean_of_the_conversations_losses(tiny_model_dir, internlm2_dir, architecture):
    finetune = packed_finetune(tiny_model_dir if architecture == "llama" else internlm2_dir)
    loss = finetune(packed_batch(), mode="loss")["loss"]

    total, answer_tokens = 0.0, 0
    for conversation in CONVERSATIONS:
        labels = torch.tensor([conversation["labels"]])
        with torch.no_grad():
            logits = finetune.llm(input_ids=torch.tensor([conversation["input_ids"]])).logits
        total += F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="sum").item()
        answer_tokens += int((labels[0, 1:] != IGNORE_INDEX).sum())
    assert loss.item() == pytest.approx(total / answer_tokens, abs=1e-5)

    loss.backward()
    lora_grads = [p.grad for name, p in finetune.named_parameters() if "lora_B" in name]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)


def test_packed_dataset_keeps_every_conversation_once():
    samples = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (30, 50, 20, 64, 1, 33)]
    dataset = PackedChatDataset(samples, pack_tokens=64, seed=0)
    rows = [dataset[i] for i in range(len(dataset))]
    assert all(len(row["input_ids"]) <= 64 for row in rows)
    assert sum(len(row["input_ids"]) for row in rows) == sum(len(s["input_ids"]) for s in samples)
    assert sum(max(row["document_ids"]) + 1 for row in rows) == len(samples)
    assert dataset.report["real_tokens"] == 198 and dataset.report["rows"] == len(rows)


def reference_varlen_kernel(query, key, value, offsets, longest, scale):
    """What a varlen flash kernel computes, one conversation at a time with causal SDPA: (tokens, heads, dim)."""
    pieces = []
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        q, k, v = (x[start:end].transpose(0, 1)[None] for x in (query, key, value))
        pieces.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)[0].transpose(0, 1))
    assert longest >= max(end - start for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()))
    return torch.cat(pieces)


def test_document_boundaries_split_runs_of_ids_and_every_row():
    from xtuner_assistant.training.document_attention import document_boundaries

    ids = torch.tensor([[0, 0, 0, 1, 1, -1], [0, 0, 1, 1, 1, 1]])
    offsets, longest = document_boundaries(ids)
    assert offsets.tolist() == [0, 3, 5, 6, 8, 12] and offsets.dtype == torch.int32
    assert longest == 6  # the row length: a bound on every conversation, the same for every row
    # Two rows ending and starting with the same id are still two documents.
    assert document_boundaries(torch.tensor([[0, 1, 1], [1, 1, 2]]))[0].tolist() == [0, 1, 3, 5, 6]


def varlen_router(kernel):
    router = DocumentAttention(varlen_kernel=kernel)
    router.varlen_dtypes = (torch.float32,)  # the test runs the CPU reference in float32
    return router


def test_varlen_route_computes_the_same_as_each_conversation_alone(model, monkeypatch):
    router = varlen_router(reference_varlen_kernel)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", router.as_function())
    data = packed_collate_fn([pack_samples(CONVERSATIONS), pack_samples(CONVERSATIONS[::-1])],
                             pad_index=0, pad_to_multiple_of=32)["data"]
    router.set_documents(data["document_ids"])
    zero_stride_mask = torch.zeros(()).expand(2, 1, 32, 32)
    with torch.no_grad():
        packed = model(input_ids=data["input_ids"], attention_mask=zero_stride_mask,
                       position_ids=data["position_ids"]).logits
    assert router.route_used == "varlen" and router.varlen is not None
    for alone, ours in zip(alone_logits(model), split(packed[0])):
        assert torch.allclose(alone, ours, atol=1e-5)
    reversed_alone = alone_logits(model)[::-1]
    start = 0
    for alone in reversed_alone:  # the second row holds the conversations in reverse order
        assert torch.allclose(alone, packed[1, start:start + len(alone)], atol=1e-5)
        start += len(alone)


def test_a_varlen_kernel_that_disagrees_is_dropped_for_the_dense_route(model, monkeypatch, caplog):
    def attends_across_conversations(query, key, value, offsets, longest, scale):
        q, k, v = (x.transpose(0, 1)[None] for x in (query, key, value))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)[0].transpose(0, 1)

    router = varlen_router(attends_across_conversations)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", router.as_function())
    data = packed_batch(pad_to=32)
    router.set_documents(data["document_ids"])
    with torch.no_grad():  # as under gradient checkpointing: the check must still take gradients
        packed = model(input_ids=data["input_ids"], attention_mask=torch.zeros(()).expand(1, 1, 32, 32),
                       position_ids=data["position_ids"]).logits[0]
    assert router.varlen is None and router.route_used == "dense"
    assert "varlen flash attention unusable here" in caplog.text
    for alone, ours in zip(alone_logits(model), split(packed)):
        assert torch.allclose(alone, ours, atol=1e-5)


def test_under_autocast_float32_attention_inputs_take_the_varlen_route_in_half_precision(model, monkeypatch):
    """Rotary embeddings kept in float32 promote q and k; SDPA would cast them under autocast, so must we."""
    seen = []

    def recording_kernel(query, key, value, offsets, longest, scale):
        seen.append(query.dtype)
        return reference_varlen_kernel(query, key, value, offsets, longest, scale)

    router = DocumentAttention(varlen_kernel=recording_kernel)  # default: half-precision dtypes only
    data = packed_batch(pad_to=32)
    router.set_documents(data["document_ids"])
    query = torch.randn(1, 2, 32, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = router(query, query, query, attn_mask=torch.zeros(()).expand(1, 1, 32, 32))
    assert router.route_used == "varlen" and set(seen) == {torch.bfloat16} and out.dtype == torch.bfloat16
    router.route_used = None
    router(query, query, query, attn_mask=torch.zeros(()).expand(1, 1, 32, 32))  # no autocast: float32 stays dense
    assert router.route_used == "dense"


def traceable_varlen_kernel(query, key, value, offsets, longest, scale):
    """reference_varlen_kernel without Python loops over the offsets, so torch.compile traces it whole."""
    tokens = torch.arange(query.shape[0])
    document = torch.searchsorted(offsets.long(), tokens, right=True)  # 1 + the conversation's index
    allowed = (document[:, None] == document[None, :]) & (tokens[:, None] >= tokens[None, :])
    q, k, v = (x.transpose(0, 1) for x in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale).transpose(0, 1)


def test_a_compiled_layer_calling_the_router_compiles_once_for_rows_of_any_conversations():
    """Compiled decoder layers call the router: nothing it reads may change from row to row but
    tensors, or every new row recompiles every layer (dynamo gives up after a few and runs slower
    than eager). The varlen check happens in prepare(), before the first layer runs."""
    import torch._dynamo

    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    router = varlen_router(traceable_varlen_kernel)
    layer = torch.compile(lambda q: router(q, q, q, attn_mask=torch.zeros(()).expand(1, 1, 32, 32)) * 2,
                          backend=counting_backend)
    layouts = [[0] * 10 + [1] * 22, [0] * 3 + [1] * 5 + [2] * 24, [0] * 32, [0] * 20 + [1] * 4 + [2] * 4 + [3] * 4]
    for ids in layouts:
        router.set_documents(torch.tensor([ids]))
        assert router.prepare(torch.float32, head_dim=8) == "varlen" and router.varlen_checked
        query = torch.randn(1, 2, 32, 8)
        out = layer(query)
        boundaries = router.boundaries
        assert torch.allclose(out, 2 * reference_varlen_kernel(*(query[0].transpose(0, 1),) * 3, *boundaries, None)
                              .transpose(0, 1)[None], atol=1e-5)
    assert len(graphs) == 1, f"{len(graphs)} graphs for {len(layouts)} rows"
    torch._dynamo.reset()


def test_prepare_checks_the_varlen_route_before_any_layer_runs(monkeypatch, caplog):
    def attends_across_conversations(query, key, value, offsets, longest, scale):
        q, k, v = (x.transpose(0, 1)[None] for x in (query, key, value))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)[0].transpose(0, 1)

    router = varlen_router(attends_across_conversations)
    router.set_documents(packed_batch(pad_to=32)["document_ids"])
    assert router.prepare(torch.float32, head_dim=8) == "dense"
    assert router.varlen is None and router.route_used == "dense"
    assert "varlen flash attention unusable here" in caplog.text
    good = varlen_router(reference_varlen_kernel)
    good.set_documents(packed_batch(pad_to=32)["document_ids"])
    assert good.prepare(torch.bfloat16, head_dim=8) == "dense"  # not a dtype it takes: nothing checked
    assert not good.varlen_checked
    assert good.prepare(torch.float32, head_dim=8) == "varlen" and good.varlen_checked


@pytest.mark.parametrize("inside", ["false", "true"])  # as `--set checkpoint_in_compiled_layers=...` gives it
def test_compiled_layers_take_the_checkpointing_the_config_asks_for(tiny_model_dir, inside):
    finetune = packed_finetune(tiny_model_dir, compile_layers=True, checkpoint_in_compiled_layers=inside)
    finetune.llm.enable_input_require_grads()
    finetune.llm.gradient_checkpointing_enable()  # what use_activation_checkpointing=True does
    decoder, _ = causal_lm_parts(finetune.llm)
    done = finetune._apply_speed_ups(on_cuda=True)  # compiling is lazy: nothing runs on a GPU here
    assert done["compiled_layers"] == len(decoder.layers)
    if inside == "true":  # the checkpoint moved into each compiled layer
        assert not decoder.gradient_checkpointing
    else:
        assert decoder.gradient_checkpointing and decoder._gradient_checkpointing_func.keywords == {"use_reentrant": False}
    with pytest.raises(Exception, match="checkpoint_in_compiled_layers"):
        packed_finetune(tiny_model_dir, checkpoint_in_compiled_layers="sometimes")


def test_checkpointing_inside_compiled_layers_without_them_says_it_does_nothing(tiny_model_dir, monkeypatch):
    from xtuner_assistant.training import packed_finetune as module

    said = []
    monkeypatch.setattr(module, "print_log", lambda message, *args, **kwargs: said.append(message))
    finetune = packed_finetune(tiny_model_dir, checkpoint_in_compiled_layers=True)  # compile_layers auto: off on a CPU
    assert torch.isfinite(finetune(packed_batch(), mode="loss")["loss"])
    assert any("checkpoint_in_compiled_layers has no effect" in message for message in said)

def test_speed_ups_are_off_on_the_cpu_unless_required_and_then_say_why(tiny_model_dir):
    finetune = packed_finetune(tiny_model_dir, fused_kernels="auto", compile_layers="auto")
    assert torch.isfinite(finetune(packed_batch(), mode="loss")["loss"])
    assert finetune.speed_ups == {"fused_kernels": None, "compiled_layers": 0, "layers_without_checkpointing": 0}
    for field in ("fused_kernels", "compile_layers"):
        required = packed_finetune(tiny_model_dir, **{field: "true"})  # as `--set fused_kernels=true` gives it
        with pytest.raises(SettingError, match=f"model.{field}=True needs training on a CUDA GPU"):
            required(packed_batch(), mode="loss")
    with pytest.raises(SettingError, match="expected auto, true or false"):
        packed_finetune(tiny_model_dir, compile_layers="fast")
