"""How long does training wait for a checkpoint, written as mmengine writes it and by
BackgroundCheckpointHook's thread? (xtuner_assistant/training/checkpoint_writer.py)

The checkpoint is the one the packed QLoRA configs save every `save_steps` rows: LoRA's float32
weights (r=64 on every linear layer of the model's shape, as configs/*_qlora_assistant.py) and AdamW's
state after one step (exp_avg, exp_avg_sq), in mmengine's layout. Each round saves it to --out-dir:

  - synchronous: `mmengine.runner.runner.save_checkpoint` as the Runner calls it (with
    compat.atomic_checkpoint_writes: temporary file, fsync, rename); training waits for all of it;
  - background: the same call through the hook's wrapper; training waits for the serialization only,
    and the write goes on in the thread (its time to disk is reported too).

Then `--work-seconds` of matrix products stand in for the rows that follow: timed alone, and while the
background write runs, which shows what the writing thread takes from the training thread on this
machine (on a GPU machine the training thread mostly waits for the GPU). Prints and writes one JSON object.

    python bench/checkpoint_stall.py --shape internlm2-chat-1.8b --out-dir /tmp/stall --out R.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from random_models import SHAPES  # noqa: E402

LORA_RANK = 64  # configs/*_qlora_assistant.py: lora_r


def lora_shapes(shape: dict, rank: int) -> list[tuple[int, int]]:
    """(rank, in) and (out, rank) for LoRA's A and B on every linear layer of a decoder layer."""
    hidden, inner = shape["hidden_size"], shape["intermediate_size"]
    head = hidden // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * head
    if shape["family"] == "internlm2":  # one wqkv projection
        attention = [(hidden, hidden + 2 * kv), (hidden, hidden)]
    else:  # q, k, v, o
        attention = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden)]
    linears = attention + [(hidden, inner), (hidden, inner), (inner, hidden)]  # gate, up, down
    per_layer = [pair for n_in, n_out in linears for pair in ((rank, n_in), (n_out, rank))]
    return per_layer * shape["num_hidden_layers"]


def make_checkpoint(shape: dict, rank: int) -> dict:
    import torch
    from mmengine.runner.checkpoint import weights_to_cpu

    parameters = [torch.nn.Parameter(torch.randn(*size) * 0.01) for size in lora_shapes(shape, rank)]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter)
    optimizer.step()
    state_dict = OrderedDict((f"lora.{index}", parameter.detach()) for index, parameter in enumerate(parameters))
    return {"meta": {"epoch": 0, "iter": 50}, "state_dict": weights_to_cpu(state_dict),
            "optimizer": optimizer.state_dict()}


def size_bytes(checkpoint: dict) -> int:
    tensors = list(checkpoint["state_dict"].values())
    tensors += [t for state in checkpoint["optimizer"]["state"].values() for t in state.values() if t.dim()]
    return sum(t.numel() * t.element_size() for t in tensors)


def work(seconds_per_round: float, calibrated: int | None = None) -> tuple[float, int]:
    """Matrix products for about `seconds_per_round` (the count is calibrated once, then fixed)."""
    import torch

    a = torch.randn(512, 512)
    count = calibrated or 1
    if calibrated is None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds_per_round:
            a @ a
            count += 1
    start = time.perf_counter()
    for _ in range(count):
        a @ a
    return time.perf_counter() - start, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="internlm2-chat-1.8b", choices=sorted(SHAPES))
    parser.add_argument("--rank", type=int, default=LORA_RANK)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-seconds", type=float, default=2.0)
    parser.add_argument("--out-dir", type=Path, required=True, help="where the checkpoints are written (and removed)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import mmengine.runner.runner as runner_module
    import torch

    import xtuner_assistant  # noqa: F401 -- compat's atomic writes, as in a run
    from xtuner_assistant.training import checkpoint_writer

    args.out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint(SHAPES[args.shape], args.rank)
    synchronous = runner_module.save_checkpoint
    background = checkpoint_writer._in_background(synchronous)
    _, count = work(args.work_seconds)
    rounds = []
    for index in range(args.rounds):
        path = args.out_dir / f"iter_{index}.pth"
        start = time.perf_counter()
        synchronous(checkpoint, str(path))
        sync_wait = time.perf_counter() - start
        path.unlink()
        alone, _ = work(args.work_seconds, count)

        start = time.perf_counter()
        background(checkpoint, str(path))
        background_wait = time.perf_counter() - start
        beside_write, _ = work(args.work_seconds, count)
        checkpoint_writer._writer.wait()
        on_disk = time.perf_counter() - start
        assert torch.load(path, map_location="cpu", weights_only=False)["state_dict"].keys() == checkpoint["state_dict"].keys()
        path.unlink()
        rounds.append(dict(synchronous_wait_s=sync_wait, background_wait_s=background_wait,
                           background_on_disk_s=on_disk, work_alone_s=alone, work_beside_write_s=beside_write))
        print(json.dumps({"round": index, **{k: round(v, 3) for k, v in rounds[-1].items()}}), flush=True)

    median = {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]}
    result = dict(shape=args.shape, lora_rank=args.rank, checkpoint_gb=round(size_bytes(checkpoint) / 1e9, 3),
                  rounds=args.rounds, median=median,
                  training_wait_saved_s=round(median["synchronous_wait_s"] - median["background_wait_s"], 3),
                  work_slowdown_beside_write=round(median["work_beside_write_s"] / median["work_alone_s"], 3),
                  machine=f"{platform.node()} {os.cpu_count()} CPUs", torch_threads=torch.get_num_threads(),
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  command="python " + " ".join(sys.argv))
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(dict(result, per_round=rounds), indent=2) + "\n")


if __name__ == "__main__":
    main()
