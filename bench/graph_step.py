"""How fast could a training step of the packed QLoRA config be if the CPU did not launch its kernels
one by one? The step of `configs/internlm2_chat_1_8b_qlora_assistant.py` (InternLM2-Chat-1.8B's
shape, random weights, fused kernels and compiled layers as shipped) keeps the GPU busy about 100 ms
of a 250-320 ms row (bench/profile_step.py): the rest is the CPU launching ~3,800 kernels. Here
the forward and backward pass of one row is captured once as a CUDA graph and replayed for every row:

  - every row has the same shape (rows are padded to pack_tokens) and the conversations' offsets are
    padded to a fixed count with empty conversations, so one graph fits every row;
  - the loss is the same token-mean cross-entropy over answer tokens, computed over every position with
    the others ignored (the shipped loss selects answer tokens first, a data-dependent shape);
  - LoRA dropout is 0 in both arms and checkpointing does not save the RNG state (nothing random runs);
  - the optimizer step (gradient clipping, AdamW) runs eagerly after each replay, on the gradients the
    graph leaves in place.

Both arms train the same rows in turn on one model: first the eager step (`model(data, mode="loss")`
and the optimizer wrapper), then the model's own `train_step`, which captures the graph
(`xtuner_assistant/training/graphed_step.py`), after a check that one replay gives the eager loss and
gradients on one row. Prints and writes one JSON object. (Until 2026-11-30 17:00 UTC this script held
its own copy of the capture, from which the package's step was made.)

    python bench/graph_step.py --data DATA.json --tokenizer TOK --model-dir M --out R.json [--steps 24]
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402
from flops import H200_BF16_DENSE_FLOPS, useful_flops  # noqa: E402
from profile_step import batches  # noqa: E402
from random_models import SHAPES, make_random_model  # noqa: E402

def timed(label: str, run_step, rows, steps: int, shape: dict) -> dict:
    import torch

    from xtuner_assistant.data.packing import real_token_count

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    tokens = pairs = 0
    start = time.perf_counter()
    losses = []
    for _ in range(steps):
        data = next(rows)
        tokens += real_token_count(data)
        pairs += speed.attention_pairs(data)
        losses.append(run_step(data))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"recipe": label, "steps": steps, "real_tokens": tokens, "ms_per_row": round(1000 * seconds / steps, 1),
            "real_tokens_per_s": round(tokens / seconds, 1),
            "mfu": round(useful_flops(shape, tokens, pairs) / seconds / H200_BF16_DENSE_FLOPS, 4),
            "peak_gpu_mib": torch.cuda.max_memory_allocated() // 2**20,
            "losses": [round(float(x), 4) for x in losses]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="bench/speed.py's conversations")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--model-dir", required=True, help="made here with random weights if it holds no model")
    parser.add_argument("--out", required=True)
    parser.add_argument("--pack-tokens", type=int, default=3072)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()

    import torch

    name = "internlm2-chat-1.8b"
    model_dir = make_random_model(name, Path(args.model_dir), Path(args.tokenizer))
    env = {"XA_MODEL": str(model_dir), "XA_IDENTITY_FILE": str(Path(args.data).resolve()), "XA_GENERAL": "",
           "XA_GENERAL_RATIO": "0", "XA_REPLAY_RATIO": "0", "XA_PACK_TOKENS": str(args.pack_tokens),
           "XA_ACCUMULATIVE_COUNTS": "1", "XA_MAX_LENGTH": "1024", "XA_DTYPE": "bfloat16"}
    torch.manual_seed(0)
    model, dataset, collate, optim_wrapper, batch_size = speed.build(speed.OUR_CONFIG, env, False,
                                                                      {"model.lora.lora_dropout": 0.0})
    model.train()
    rows = batches(dataset, collate, 1, "cuda")
    shape = SHAPES[name]
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "model_shape": name,
              "weights": "random", "pack_tokens": args.pack_tokens, "lora_dropout": 0.0}

    shipped_step = functools.partial(step_loss, model, optim_wrapper)
    for _ in range(args.warmup_steps):  # compiles the layers, checks the attention route
        shipped_step(next(rows))
    result["shipped"] = timed("eager step: model(data, mode='loss'), optimizer wrapper", shipped_step, rows,
                              args.steps, shape)

    # One row through both: the loss and the gradients of a replay must be the eager step's.
    from xtuner_assistant.training.graphed_step import padded_boundaries

    graphed = model.graphed_step
    probe = next(rows)
    for p in model.parameters():
        p.grad = None
    with optim_wrapper.optim_context(model):
        eager_loss = model(dict(probe), mode="loss")["loss"]
    eager_loss.backward()
    eager_loss = eager_loss.detach()  # no live graph: its gradient accumulators would run on the default stream
    eager_grads = [p.grad.detach().clone() for p in model.parameters() if p.requires_grad]
    offsets = padded_boundaries(probe["document_ids"], graphed.slots)
    graphed._capture(probe, offsets, optim_wrapper)
    graphed._fill(probe, offsets)
    graphed.graph.replay()
    torch.cuda.synchronize()
    worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                for a, b in zip(graphed.gradients, eager_grads))
    result["agreement"] = {"eager_loss": round(eager_loss.item(), 5), "graphed_loss": round(graphed.loss.item(), 5),
                           "worst_relative_gradient_difference": round(worst, 5)}
    print(json.dumps(result["agreement"]), flush=True)

    def graphed_step(data):
        return model.train_step({"data": data, "data_samples": None}, optim_wrapper)["loss"]

    for _ in range(2):
        graphed_step(next(rows))
    result["graphed"] = timed("the same step replayed from a CUDA graph (train_step), optimizer eager", graphed_step,
                              rows, args.steps, shape)
    result["speed_up"] = round(result["shipped"]["ms_per_row"] / result["graphed"]["ms_per_row"], 2)
    print(json.dumps({k: v for k, v in result.items() if k not in ("shipped", "graphed")}), flush=True)
    for arm in ("shipped", "graphed"):
        print(json.dumps({k: v for k, v in result[arm].items() if k != "losses"}), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


def step_loss(model, optim_wrapper, data):
    with optim_wrapper.optim_context(model):
        loss = model(data, mode="loss")["loss"]
    optim_wrapper.update_params(loss)
    return loss.detach()


if __name__ == "__main__":
    main()
