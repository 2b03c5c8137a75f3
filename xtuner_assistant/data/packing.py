"""Packing: several whole conversations share one training row, and each attends only to itself.

Short conversations (an identity answer is ~40 tokens) padded to a batch waste most of the GPU,
and XTuner's own packing (`pack_to_max_length`) concatenates samples that then attend to each
other unless flash-attn's varlen kernels are installed. Here each row carries `document_ids`;
`block_diagonal_causal_mask` turns them into the additive 4-D mask that transformers' SDPA path
accepts, and `position_ids` restart at 0 for every conversation, so a packed row computes exactly
what the conversations would compute one at a time (tests/test_packing.py checks this).
Registered as `PackedChatDataset`; rows are batched by `packed_collate_fn`.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from mmengine.registry import DATASETS
from torch.utils.data import Dataset

from xtuner_assistant.chat_template import IGNORE_INDEX


class PackingError(ValueError):
    """Settings that cannot pack the data (a conversation longer than a row): one line, no traceback."""


PADDING_DOCUMENT = -1


def plan_packs(lengths: list[int], pack_tokens: int, seed: int = 0) -> list[list[int]]:
    """Indices grouped so that each group's lengths sum to at most `pack_tokens`.

    First-fit over lengths sorted longest first leaves little room unused; the packs are then
    shuffled so a row does not hold only long (or only short) conversations in every epoch."""
    too_long = [(i, n) for i, n in enumerate(lengths) if n > pack_tokens]
    if too_long:
        index, length = too_long[0]
        raise PackingError(f"sample {index} has {length} tokens, more than pack_tokens={pack_tokens}; "
                           f"set pack_tokens >= max_length")
    packs: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for slot, free in enumerate(room):
            if lengths[index] <= free:
                packs[slot].append(index)
                room[slot] -= lengths[index]
                break
        else:
            packs.append([index])
            room.append(pack_tokens - lengths[index])
    random.Random(f"pack-{seed}").shuffle(packs)
    return packs


def pack_samples(samples: list[dict]) -> dict:
    """One row from several {input_ids, labels} samples."""
    row = {"input_ids": [], "labels": [], "position_ids": [], "document_ids": []}
    for document, sample in enumerate(samples):
        n = len(sample["input_ids"])
        row["input_ids"] += list(sample["input_ids"])
        row["labels"] += list(sample["labels"])
        row["position_ids"] += list(range(n))
        row["document_ids"] += [document] * n
    return row


def captured_row_shape(packs: list[list[int]], lengths: list[int], pack_tokens: int,
                       answer_tokens: list[int]) -> dict:
    """What a captured CUDA graph must hold for every row of these packs (graphed_step.fit_graph_to_data):
    the longest conversation, the most attention runs in a row, counting the padding to pack_tokens
    as runs of at most that length (graphed_step.padded_boundaries cuts it so), and the most labelled
    tokens in a row (the loss's answer slots; a row scores at most that many positions)."""
    longest = max(lengths, default=0)
    runs = [len(pack) + -(-(pack_tokens - sum(lengths[i] for i in pack)) // max(1, longest)) for pack in packs]
    return {"most_conversations_in_a_row": max((len(pack) for pack in packs), default=0),
            "longest_conversation": longest, "attention_runs_in_a_row": max(runs, default=0),
            "most_answer_tokens_in_a_row": max((sum(answer_tokens[i] for i in pack) for pack in packs), default=0)}


@DATASETS.register_module()
class PackedChatDataset(Dataset):
    """Rows of up to `pack_tokens` tokens, packed from a dataset of {input_ids, labels} samples
    (a `MixedChatDataset` config, or any such dataset)."""

    def __init__(self, dataset, pack_tokens: int, seed: int = 0):
        from xtuner_assistant.data.mixed import build_component

        samples = build_component(dataset, "dataset")
        self.samples = [samples[i] for i in range(len(samples))]
        lengths = [len(s["input_ids"]) for s in self.samples]
        answer_tokens = [sum(label != IGNORE_INDEX for label in s["labels"]) for s in self.samples]
        self.packs = plan_packs(lengths, pack_tokens, seed)
        self.pack_tokens = pack_tokens
        self.report = {"samples": len(lengths), "rows": len(self.packs), "real_tokens": sum(lengths),
                       "fill": sum(lengths) / max(1, len(self.packs) * pack_tokens),
                       **captured_row_shape(self.packs, lengths, pack_tokens, answer_tokens)}

    def __len__(self):
        return len(self.packs)

    def __getitem__(self, index):
        return pack_samples([self.samples[i] for i in self.packs[index]])


def packed_collate_fn(instances, pad_index: int = 0, pad_to_multiple_of: int = 64) -> dict:
    """Rows -> padded tensors in the {data, data_samples} form XTuner's models take. Padding
    gets its own document id, so no real token attends to it and it carries no label."""
    longest = max(len(row["input_ids"]) for row in instances)
    width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of

    def padded(key, fill):  # through numpy: 3-4x faster than torch.tensor of Python lists, on the step's path
        out = np.full((len(instances), width), fill, dtype=np.int64)
        for out_row, row in zip(out, instances):
            out_row[:len(row[key])] = row[key]
        return torch.from_numpy(out)

    data = {"input_ids": padded("input_ids", pad_index), "labels": padded("labels", IGNORE_INDEX),
            "position_ids": padded("position_ids", 0), "document_ids": padded("document_ids", PADDING_DOCUMENT)}
    return {"data": data, "data_samples": None}


def allowed_pairs(document_ids: torch.Tensor) -> torch.Tensor:
    """(batch, 1, n, n) boolean: query i may see key j (same document, j <= i)."""
    return (document_ids[:, :, None] == document_ids[:, None, :]).tril()[:, None]


def block_diagonal_causal_mask(document_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`allowed_pairs` as the additive mask transformers passes to SDPA as is ("inverted" 4-D form):
    0 where attention is allowed, the dtype's minimum elsewhere."""
    allowed = allowed_pairs(document_ids)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=document_ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def real_token_count(data: dict) -> int:
    return int((data["document_ids"] != PADDING_DOCUMENT).sum()) if "document_ids" in data else int(data["input_ids"].numel())
