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
