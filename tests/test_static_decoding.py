"""The evaluation hook, replay and the demo answer many prompts at once. On a GPU they decode with a
static KV cache, each token one replay of a CUDA graph (models/static_decoding.py): the answers must
be `generate()`'s greedy answers, token for token, for each architecture the configs train. A CPU has
no CUDA graphs; the same decoding loop runs there without one, against `generate()`."""
from __future__ import annotations

import pytest
import torch

from xtuner_assistant.chat_template import generation_prompt_ids
from xtuner_assistant.models.generation import generation_kwargs, left_padded, load_chat_model
from xtuner_assistant.models.static_decoding import greedy_decode, usable

PROMPTS = ["hello there", "你好，你是谁？请你介绍一下你自己。", "Tell me a joke about cats and dogs, and one about the fox."]


def prompt_batch(tokenizer, prompts, pad_id):
    return left_padded([generation_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts], pad_id)


def assert_as_generate(model, tokenizer, max_new_tokens=24):
    kwargs = generation_kwargs(tokenizer, max_new_tokens=max_new_tokens)
    ids, mask = prompt_batch(tokenizer, PROMPTS, kwargs["pad_token_id"])
    with torch.inference_mode():
        expected = model.generate(ids, attention_mask=mask, **kwargs)
    # A stop token that the second answer reaches early, so rows end at different steps and the rest pad.
    early_stop = int(expected[1, ids.shape[1] + 2])
    stops = kwargs["eos_token_id"] + [early_stop]
    with torch.inference_mode():
        expected = model.generate(ids, attention_mask=mask, **dict(kwargs, eos_token_id=stops))
    got = greedy_decode(model, ids, mask, max_new_tokens, stops, kwargs["pad_token_id"], cuda_graph=False)
    assert got.shape == expected.shape
    assert torch.equal(got, expected)
    assert (got[:, ids.shape[1]:] == early_stop).any()  # the test did stop a row early


def test_llama_answers_as_generate(tiny_model_dir):
    model, tokenizer = load_chat_model(tiny_model_dir, device="cpu")
    assert_as_generate(model, tokenizer)


def test_qwen2_answers_as_generate(tmp_path, tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(1)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id)).eval()
    assert_as_generate(model, tokenizer)


def test_internlm2_answers_as_generate(tmp_path, tiny_model_dir):
    from xtuner_assistant.models.stand_ins import random_internlm2_chat

    model, tokenizer = load_chat_model(random_internlm2_chat(tmp_path / "internlm2", tiny_model_dir, real_shape=False),
                                       device="cpu")
    assert_as_generate(model, tokenizer)


def test_lora_adapter_answers_as_generate(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model, tokenizer = load_chat_model(tiny_model_dir, device="cpu")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                             task_type="CAUSAL_LM")).eval()
    assert_as_generate(model, tokenizer)


def test_answers_that_never_stop_run_to_the_limit(tiny_model_dir):
    model, tokenizer = load_chat_model(tiny_model_dir, device="cpu")
    kwargs = generation_kwargs(tokenizer, max_new_tokens=13)
    ids, mask = prompt_batch(tokenizer, PROMPTS[:2], kwargs["pad_token_id"])
    unused = len(tokenizer) + 5  # a stop id no row can produce
    got = greedy_decode(model, ids, mask, 13, [unused], kwargs["pad_token_id"], cuda_graph=False)
    with torch.inference_mode():
        expected = model.generate(ids, attention_mask=mask, **dict(kwargs, eos_token_id=[unused]))
    assert got.shape == (2, ids.shape[1] + 13)
    assert torch.equal(got, expected)


def test_only_greedy_cuda_models_with_a_static_cache_decode_this_way(tiny_model_dir):
    model, tokenizer = load_chat_model(tiny_model_dir, device="cpu")
    greedy = generation_kwargs(tokenizer)
    assert not usable(model, greedy)  # a CPU model: generate()
    if not torch.cuda.is_available():
        pytest.skip("the rest needs a CUDA model")
    model.cuda()
    assert usable(model, greedy)
    assert not usable(model, generation_kwargs(tokenizer, temperature=0.7))
    assert not usable(model, generation_kwargs(tokenizer, repetition_penalty=1.2))
    model.config._attn_implementation = "flash_attention_2"
    assert not usable(model, greedy)


def test_grouped_query_attention_reads_the_cache_without_copying_it(tmp_path, tokenizer, tiny_model_dir, monkeypatch):
    """While decoding, the query heads sharing a key/value head are folded together instead of the cache
    being repeated to every query head (static_decoding.grouped_attention_without_copies): the same
    answers as generate(), for the grouped architectures the configs train, and everything restored after."""
    import torch.nn.functional as F
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from xtuner_assistant.models import static_decoding
    from xtuner_assistant.models.stand_ins import random_internlm2_chat

    folded = []
    own_fold = static_decoding._grouped_sdpa

    def counting(sdpa, query, key, *args, **kwargs):
        folded.append(query.shape[-3] != key.shape[-3])
        return own_fold(sdpa, query, key, *args, **kwargs)

    monkeypatch.setattr(static_decoding, "_grouped_sdpa", counting)
    torch.manual_seed(1)
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")).eval()
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = random_internlm2_chat(tmp_path / "internlm2", tiny_model_dir, real_shape=False)
    _, internlm2_tokenizer = load_chat_model(folder, device="cpu")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    config.attn_implementation = "sdpa"  # as training sets it (PackedSupervisedFinetune)
    internlm2 = AutoModelForCausalLM.from_pretrained(folder, config=config, trust_remote_code=True).eval()
    attention = next(m for m in internlm2.modules() if hasattr(m, "num_key_value_groups"))
    assert type(attention).__name__ == "InternLM2SdpaAttention"
    sdpa = F.scaled_dot_product_attention
    for model, its_tokenizer in ((qwen, tokenizer), (internlm2, internlm2_tokenizer)):
        groups = {m.num_key_value_groups for m in model.modules() if hasattr(m, "num_key_value_groups")}
        assert max(groups) > 1, "a grouped model"
        folded.clear()
        assert_as_generate(model, its_tokenizer)
        assert folded and all(folded), "every decoding attention call took the folded path"
        assert F.scaled_dot_product_attention is sdpa
    # An eager attention's repeat_kv feeds a matmul: left alone.
    eager = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                         attn_implementation="eager")).eval()
    with static_decoding.grouped_attention_without_copies(eager):
        assert F.scaled_dot_product_attention is sdpa
