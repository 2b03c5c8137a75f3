"""Random-weight stand-ins for the tutorial's LLaVA parts, whose real weights no package ships here:
InternLM2-Chat-1.8B (the modeling code ships inside xtuner) and CLIP ViT-L/14-336 (transformers).

With `real_shape=True` they have the published shapes, which is what speed and memory depend on; the
small shape keeps the same architecture for tests. Neither can say anything sensible: they exist so
the InternLM2 + CLIP configs can be built and trained end to end where the real weights are missing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

# InternLM2's own chat template (ChatML turns), so the one chat-template contract holds for it too.
INTERNLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# InternLM2-Chat-1.8B's published shape (also bench/random_models.py's, for speed and memory runs).
INTERNLM2_1_8B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16,
                      num_key_value_heads=8, vocab_size=92544, max_position_embeddings=32768, rope_theta=1_000_000)
CLIP_VIT_L_14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                         image_size=336, patch_size=14, projection_dim=768)


def random_clip_vision(folder: Path, real_shape: bool = True, seed: int = 0) -> Path:
    """A CLIPVisionModel + CLIPImageProcessor folder (ViT-L/14-336 shape, or 2 layers at 32 px)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    shape = CLIP_VIT_L_14_336 if real_shape else dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                      num_attention_heads=4, image_size=32, patch_size=8,
                                                      projection_dim=32)
    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(**shape))
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    size = shape["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def internlm2_architecture(folder: Path) -> dict:
    """Copies InternLM2's remote code (it ships inside xtuner) into `folder` and returns the config.json
    fields that make a folder InternLM2-Chat-1.8B's architecture, shape aside."""
    import xtuner

    code = Path(xtuner.__file__).parent / "_lite" / "modelings" / "internlm2"
    for name in ("configuration_internlm2.py", "modeling_internlm2.py"):
        shutil.copyfile(code / name, Path(folder) / name)
    return dict(architectures=["InternLM2ForCausalLM"], model_type="internlm2",
                auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config",
                          "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                          "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
                hidden_act="silu", initializer_range=0.02, rms_norm_eps=1e-5, bias=False, tie_word_embeddings=False,
                # As published: InternLM2's own code reads this field, and without flash-attn stock XTuner
                # leaves it alone, so the tutorial's run uses eager attention.
                attn_implementation="eager", rope_scaling=None)


def random_internlm2_chat(folder: Path, tokenizer_dir: Path, real_shape: bool = True, seed: int = 0,
                          dtype: str = "float32") -> Path:
    """An InternLM2ForCausalLM folder (remote code copied from xtuner) with random weights.

    InternLM2's tokenizer is not available either; the tokenizer of `tokenizer_dir` stands in, with
    InternLM2's chat template. The vocabulary is the real one's size when `real_shape`."""
    import torch
    from transformers import AutoTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = INTERNLM2_CHAT_TEMPLATE
    shape = INTERNLM2_1_8B if real_shape else dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2,
                                                   vocab_size=len(tokenizer), max_position_embeddings=2048,
                                                   rope_theta=1_000_000)
    config = dict(internlm2_architecture(folder), torch_dtype=dtype, use_cache=True,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0, **shape)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder, trust_remote_code=True),
                                             trust_remote_code=True, torch_dtype=getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "STAND_IN.txt").write_text("Random weights of InternLM2-Chat-1.8B's architecture"
                                         f"{' and shape' if real_shape else ' (small shape)'}; the tokenizer "
                                         f"is {tokenizer_dir}'s with InternLM2's chat template. Not a real model.\n")
    return folder
