"""A merged model is only written after it has been checked against the adapter applied to the
base, and a merge that does not match fails loudly and leaves nothing behind."""
import pytest
import torch

from xtuner_assistant.training.export import ConversionError, merge_adapter  # first: applies the bitsandbytes fix
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # init_lora_weights=False: a non-zero adapter, so the merge really changes the weights.
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(folder)
    return folder


def test_merge_is_checked_against_base_plus_adapter_and_recorded(adapter, tiny_model_dir, tmp_path):
    out = tmp_path / "merged"
    check = merge_adapter(adapter, out, tiny_model_dir)
    assert 0 < check["largest_logit_difference"] <= check["tolerance"] == 1e-3
    assert (out / "xtuner_assistant_merge.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        assert (merged(ids).logits - base(ids).logits).abs().max() > 1e-3  # the adapter is in the weights


def test_a_merge_beyond_the_tolerance_fails_loudly_and_writes_nothing(adapter, tiny_model_dir, tmp_path):
    out = tmp_path / "merged"
    with pytest.raises(ConversionError, match=r"differs from base\+adapter by .* was not written"):
        merge_adapter(adapter, out, tiny_model_dir, tolerance=1e-12)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]


def test_a_model_with_its_own_modeling_code_merges_answers_and_replays(tiny_model_dir, tmp_path):
    """InternLM2 (the tutorial's model) ships its modeling code in its folder: merge, chat, eval and the
    replay a config builds at load time must load it as training does, not stop at a trust prompt."""
    from xtuner_assistant.data.replay import base_model_answers
    from xtuner_assistant.models.generation import load_chat_model, replies
    from xtuner_assistant.models.stand_ins import random_internlm2_chat

    internlm2 = random_internlm2_chat(tmp_path / "internlm2", tiny_model_dir, real_shape=False)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(internlm2, trust_remote_code=True)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["wqkv", "w2"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")

    check = merge_adapter(tmp_path / "adapter", tmp_path / "merged", internlm2)
    assert check["largest_logit_difference"] <= check["tolerance"]
    model, tokenizer = load_chat_model(tmp_path / "merged", device="cpu")
    assert type(model).__name__ == "InternLM2ForCausalLM"
    assert len(replies(model, tokenizer, ["Who are you?"], max_new_tokens=4)) == 1
    assert len(base_model_answers(internlm2, ["Who are you?", "你是谁？"], 4)) == 2
