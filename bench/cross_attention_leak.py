"""Why stock XTuner's training loss and ours cannot be compared directly.

XTuner packs samples into `max_length` rows (`pack_to_max_length=True`) and, without flash-attn's
varlen kernels, lets every sample attend to the ones before it in its row. When the data repeats
(an identity answer in hundreds of paraphrases), the model copies the answer from earlier in the
row, and the loss drops before anything is learned. This scores an untrained model's answer tokens
on the same conversations two ways, in XTuner's internlm2_chat template:
  - each conversation alone (what the model must do at chat time; ours trains this way);
  - concatenated into rows of `--row-tokens` that attend across conversations (stock's rows).

    python bench/cross_attention_leak.py --model ~/.cache/xtuner-assistant/models/smollm2-135m \
        --data DATA.json   # DATA.json from `bench/speed.py data`
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import STOCK_CHAT_TEMPLATE, mean_answer_loss  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="OpenAI-format conversations (bench/speed.py data)")
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--row-tokens", type=int, default=1024, help="stock's max_length")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xtuner_assistant.chat_template import encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.chat_template = STOCK_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    records = json.loads(Path(args.data).read_text())
    random.Random(args.seed).shuffle(records)
    samples = [encode_conversation(tokenizer, r["messages"], args.row_tokens) for r in records[:args.conversations]]
    alone = mean_answer_loss(model, [(s["input_ids"], s["labels"]) for s in samples])
    ids = [t for s in samples for t in s["input_ids"]]
    labels = [t for s in samples for t in s["labels"]]
    n = args.row_tokens
    rows = [(ids[i:i + n], labels[i:i + n]) for i in range(0, len(ids) - n + 1, n)]
    packed = mean_answer_loss(model, rows)
    report = {"model": args.model, "conversations": len(samples),
              "each_alone": {"loss": round(alone[0], 4), "answer_tokens": alone[1]},
              f"rows_of_{n}_attending_across": {"loss": round(packed[0], 4), "answer_tokens": packed[1], "rows": len(rows)}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
