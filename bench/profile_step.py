"""Where does a training step's time go? One recipe (stock XTuner's tutorial config, or ours) built as
`bench/speed.py` builds it, a few warm-up steps, then:
  - phases timed with CUDA events over several steps: forward+loss, backward, optimizer update;
  - torch.profiler over two steps: the top operators by GPU time and by CPU time, GPU busy share of the
    step (kernel time / wall time), kernel launches per step; a Chrome trace (gzip) for a person to open.

    python bench/profile_step.py {ours|stock} --data DATA.json --tokenizer TOK --model-dir M --out DIR
        [--set NAME=VALUE ...]   (ours: XA_ settings, e.g. --set pack_tokens=3072)
    python bench/profile_step.py busy TRACE.json.gz    # GPU time in a kept trace
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import speed  # noqa: E402
from random_models import make_random_model  # noqa: E402


def batches(dataset, collate, batch_size, device):
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(0))
    while True:
        for batch in loader:
            yield {k: v.to(device) if hasattr(v, "to") else v for k, v in batch["data"].items()}


def step(model, optim_wrapper, data):
    if hasattr(model, "graphed_step"):  # ours: its train_step, which replays one CUDA graph a row once captured
        return model.train_step({"data": data, "data_samples": None}, optim_wrapper)["loss"]
    with optim_wrapper.optim_context(model):
        loss = model(data, mode="loss")["loss"]
    optim_wrapper.update_params(loss)
    return loss


def phase_times(model, optim_wrapper, source, steps: int) -> dict:
    """Median milliseconds of forward+loss, backward and update over `steps` steps (CUDA events); a
    step replayed from a CUDA graph has no phases to split, only its wall time."""
    import torch

    if getattr(model, "graphed_step", None) is not None:
        wall = []
        for _ in range(steps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            step(model, optim_wrapper, next(source))
            torch.cuda.synchronize()
            wall.append(1000 * (time.perf_counter() - start))
        return {"wall_ms": round(sorted(wall)[len(wall) // 2], 1), "steps": steps}

    forward, backward, update, wall = [], [], [], []
    for _ in range(steps):
        data = next(source)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        torch.cuda.synchronize()
        start = time.perf_counter()
        events[0].record()
        with optim_wrapper.optim_context(model):
            loss = model(data, mode="loss")["loss"]
        events[1].record()
        optim_wrapper.backward(loss)
        events[2].record()
        if optim_wrapper.should_update():
            optim_wrapper.step()
            optim_wrapper.zero_grad()
        events[3].record()
        torch.cuda.synchronize()
        wall.append(1000 * (time.perf_counter() - start))
        forward.append(events[0].elapsed_time(events[1]))
        backward.append(events[1].elapsed_time(events[2]))
        update.append(events[2].elapsed_time(events[3]))

    def median(values):
        return round(sorted(values)[len(values) // 2], 1)

    return {"forward_ms": median(forward), "backward_ms": median(backward), "update_ms": median(update),
            "wall_ms": median(wall), "tokens_per_row": int(data["input_ids"].numel())}


def profile(model, optim_wrapper, source, steps: int, out: Path, label: str) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(model, optim_wrapper, next(source))
        torch.cuda.synchronize()
    wall_ms = 1000 * (time.perf_counter() - start) / steps
    averages = prof.key_averages()
    launches = sum(e.count for e in averages if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    try:
        by_gpu = averages.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70)
    except (KeyError, AttributeError, ValueError):  # older torch names it after CUDA
        by_gpu = averages.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)
    by_cpu = averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=70)
    (out / f"profile_{label}.txt").write_text(f"# {label}: {wall_ms:.1f} ms a step (profiled)\n\n## by GPU time\n{by_gpu}\n\n"
                                              f"## by CPU time\n{by_cpu}\n")
    trace = out / f"trace_{label}.json"
    prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as raw, gzip.open(f"{trace}.gz", "wb", compresslevel=6) as packed:
        shutil.copyfileobj(raw, packed)
    trace.unlink()
    busy_ms = gpu_busy_ms(Path(f"{trace}.gz")) / steps
    kernels = kernel_totals(Path(f"{trace}.gz"))
    with open(out / f"profile_{label}.txt", "a") as text:
        text.write("\n## kernels by GPU time, from the trace (graph replays included), ms a step\n")
        for name, total in kernels[:40]:
            text.write(f"{total / 1000 / steps:9.2f}  {name[:150]}\n")
    return {"profiled_wall_ms": round(wall_ms, 1), "gpu_busy_ms": round(busy_ms, 1),
            "gpu_busy_share": round(busy_ms / wall_ms, 3), "kernel_launches_per_step": launches // steps,
            "top_kernels_ms": {name[:80]: round(total / 1000 / steps, 2) for name, total in kernels[:12]}}


def gpu_events(trace: Path) -> list:
    """What ran on the GPU in a Chrome trace (kernels, copies, memsets), each with its duration."""
    opener = gzip.open if trace.suffix == ".gz" else open
    with opener(trace, "rt") as handle:
        events = json.load(handle)
    events = events["traceEvents"] if isinstance(events, dict) else events
    return [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]


def kernel_totals(trace: Path) -> list:
    """GPU time of each kernel name in a kept trace, largest first: kernels replayed from a CUDA graph
    have no operator above them, so the profiler's operator table misses them."""
    totals: dict = {}
    for e in gpu_events(trace):
        totals[e.get("name", "?")] = totals.get(e.get("name", "?"), 0.0) + e["dur"]
    return sorted(totals.items(), key=lambda item: -item[1])


def gpu_busy_ms(trace: Path) -> float:
    """Time the GPU ran anything (kernels, copies, memsets), from a Chrome trace: the union of their
    intervals. The profiler's own totals count a kernel's time twice, once for the kernel and once
    for the operator that launched it (a 100 ms step read as 205 ms busy before 2026-11-30)."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in gpu_events(trace))
    busy, start, end = 0.0, None, None
    for low, high in spans:
        if end is None or low > end:
            busy += 0 if end is None else end - start
            start, end = low, high
        else:
            end = max(end, high)
    return (busy + (end - start if end is not None else 0)) / 1000



def main() -> int:
    if sys.argv[1:2] == ["busy"]:  # python bench/profile_step.py busy TRACE.json.gz: the GPU time a kept trace holds
        print(f"{gpu_busy_ms(Path(sys.argv[2])):.1f} ms of GPU work in {sys.argv[2]}, by kernel:")
        for name, total in kernel_totals(Path(sys.argv[2]))[:25]:
            print(f"{total / 1000:9.2f} ms  {name[:150]}")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", choices=["ours", "stock"])
    parser.add_argument("--data", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--model-dir", required=True, help="model folder; random InternLM2-shape weights are made there if empty")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--cfg", dest="cfg_options", action="append", default=[], metavar="KEY=VALUE",
                        help="like xtuner's --cfg-options, e.g. model.lora.lora_dropout=0.0 (VALUE read as Python)")
    parser.add_argument("--patch", action="append", default=[], choices=["frozen_in_bf16", "fuse_elementwise", "compile_layers", "loss_before"],
                        help="a speed variant of bench/speed_patches.py, applied after the model is built")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--timed", type=int, default=10)
    parser.add_argument("--profiled", type=int, default=2)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        make_random_model("internlm2-chat-1.8b", model_dir, Path(args.tokenizer))
    data = Path(args.data).resolve()
    if args.recipe == "stock":
        config, env = speed.tutorial_stock_config(model_dir, data, out / "stock_tutorial_config.py"), {}
    else:
        config = speed.OUR_CONFIG
        env = {"XA_MODEL": str(model_dir), "XA_IDENTITY_FILE": str(data), "XA_GENERAL": "", "XA_GENERAL_RATIO": "0", "XA_REPLAY_RATIO": "0",
               "XA_MAX_LENGTH": "1024", "XA_EVALUATION_FREQ": "0"}
        for pair in args.settings:
            key, _, value = pair.partition("=")
            env["XA_" + key.upper()] = value
    import ast

    import speed_patches

    cfg_options = {}
    for pair in args.cfg_options:
        key, _, value = pair.partition("=")
        try:
            cfg_options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            cfg_options[key] = value
    torch.manual_seed(0)
    model, dataset, collate, optim_wrapper, batch_size = speed.build(config, env, smoke=False, cfg_options=cfg_options)
    patched = {name: getattr(speed_patches, name)(model) for name in args.patch}
    # from_pretrained returns a model in eval mode; mmengine's train loop (and speed.py) switch to
    # training, which is what turns on LoRA dropout and the compiled layers (training only).
    model.train()
    modes = [m.training for m in model.modules()]
    print(f"modules in training mode: {sum(modes)} of {len(modes)}", flush=True)
    source = batches(dataset, collate, batch_size, "cuda")
    for _ in range(args.warmup):
        step(model, optim_wrapper, next(source))
    label = args.label or args.recipe
    result = {"recipe": label, "settings": args.settings, "cfg": args.cfg_options, "patched": patched,
              "cuda_graph": getattr(getattr(model, "graphed_step", None), "state", None),
              **phase_times(model, optim_wrapper, source, args.timed)}
    result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(result), flush=True)  # the timed numbers, even if the profiler fails below
    if args.profiled:
        try:
            result.update(profile(model, optim_wrapper, source, args.profiled, out, label))
        except Exception as error:  # noqa: BLE001 - a profiler failure must not lose the timing
            result["profile_error"] = f"{type(error).__name__}: {error}"[:300]
    print(json.dumps(result), flush=True)
    with open(out / "profile_results.jsonl", "a") as results:
        results.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
