"""Random-weight model folders of the real shapes, for speed/memory runs and for starting configs
whose weights cannot be had here (InternLM2-Chat-1.8B). Throughput and memory do not depend on the
weight values; learning is judged on the real small models instead.

    python bench/random_models.py internlm2-chat-1.8b OUT_DIR --tokenizer TOKENIZER_DIR

The tokenizer is a stand-in (any tokenizer with a chat template whose ids fit the vocabulary).
"""
from __future__ import annotations

import argparse
import json
import lzma
import shutil
from pathlib import Path

from xtuner_assistant.models.stand_ins import INTERNLM2_1_8B, internlm2_architecture

# Shapes from the models' published config.json files.
SHAPES = {
    "internlm2-chat-1.8b": dict(family="internlm2", **INTERNLM2_1_8B),
    "qwen2.5-0.5b": dict(
        family="qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
        intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000,
        rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(
        family="qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000,
        rms_norm_eps=1e-6, tie_word_embeddings=True),
}

RANDOM_WEIGHTS_MARK = "RANDOM_WEIGHTS"  # written beside the weights, so no report calls them real


def copy_tokenizer(tokenizer_dir: Path, folder: Path) -> None:
    for file in Path(tokenizer_dir).iterdir():
        if file.suffix == ".xz":
            (folder / file.stem).write_bytes(lzma.decompress(file.read_bytes()))
        elif file.is_file():
            shutil.copyfile(file, folder / file.name)


def write_config(name: str, folder: Path, overrides: dict | None = None) -> dict:
    shape = {**SHAPES[name], **(overrides or {})}
    family = shape.pop("family")
    config = dict(shape, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2, pad_token_id=0, use_cache=True)
    if family == "internlm2":
        # The shape (and `overrides`) over the architecture's own fields, as given.
        config = {**internlm2_architecture(folder), **config}
    else:
        config.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                      use_sliding_window=False, sliding_window=shape["max_position_embeddings"], max_window_layers=21)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return config


def make_random_model(name: str, folder: Path, tokenizer_dir: Path, seed: int = 0, overrides: dict | None = None,
                      device: str | None = None) -> Path:
    """Random weights (bfloat16) of model `name`'s shape, saved with the stand-in tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    write_config(name, folder, overrides)
    copy_tokenizer(tokenizer_dir, folder)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True, torch_dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / RANDOM_WEIGHTS_MARK).write_text("random weights of the real shape, for speed and memory runs only\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=list(SHAPES))
    parser.add_argument("out")
    parser.add_argument("--tokenizer", required=True, help="folder with a stand-in tokenizer (tokenizer.json may be .xz)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(make_random_model(args.name, Path(args.out), Path(args.tokenizer), args.seed))


if __name__ == "__main__":
    main()
