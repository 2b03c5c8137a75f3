"""A tiny random chat model whose greedy replies are visible words: the random model alone mostly
emits newlines and byte fragments, which tells nothing on a web page or in a published app's reply."""
from __future__ import annotations

from pathlib import Path

from tiny_models import tiny_chat_model_dir


def talkative_tiny_model_dir(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny_chat_model_dir(folder, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    def is_word(text: str) -> bool:
        # Whole words with their leading space: streamers release text at word boundaries.
        return text.isascii() and text.startswith(" ") and text[1:].isalnum()

    silent = [i for i in range(len(tokenizer)) if not is_word(tokenizer.decode([i], skip_special_tokens=True))]
    with torch.no_grad():
        # Embeddings are tied, so this also pins these tokens' output logits at 0, below the best word's.
        model.get_input_embeddings().weight[silent] = 0.0
    model.save_pretrained(folder, safe_serialization=True)
    return folder
