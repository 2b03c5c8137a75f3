"""What MFU is measured against in bench/speed.py and bench/peer_trl.py. Imports nothing of ours, so a
peer's stack (bench/peer_trl.py runs on another transformers) counts the same way."""
from __future__ import annotations

H200_BF16_DENSE_FLOPS = 989.4e12  # the card's datasheet peak


def linear_parameters(shape: dict) -> int:
    """Weights that take part in a matrix product per token (all linear layers and the output head)."""
    d, layers, ff, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"], shape["vocab_size"]
    head_dim = d // shape["num_attention_heads"]
    attention = d * d + 2 * d * shape["num_key_value_heads"] * head_dim + d * d
    return layers * (attention + 3 * d * ff) + d * vocab


def useful_flops(shape: dict, tokens: int, attention_pairs: int) -> float:
    """A LoRA step's useful work on `tokens` real tokens with `attention_pairs` query-key pairs within
    conversations. Frozen base: forward 2 FLOPs per weight per token and attention 2*2*d per pair a
    layer; backward computes input gradients only (about as much again). Recomputation by gradient
    checkpointing and work on padding or across conversations count as overhead."""
    return 2 * (2 * linear_parameters(shape) * tokens
                + 4 * shape["num_hidden_layers"] * shape["hidden_size"] * attention_pairs)
