"""Stock XTuner vs ours on the tutorial's task, one card, one call: real tokens/s, step time, peak
GPU memory, MFU and the loss curve, for the same model shape, the same data and the same number of
real (non-padding) tokens.

(a) stock: XTuner's own `internlm2_chat_1_8b_qlora_alpaca_e3.py` with the tutorial's edits applied
    to its text (local model and data, max_length 1024, openai_map_fn, load_dataset('json'), ...),
    model, data and optimizer built by XTuner's builders from that config;
(b) ours: configs/internlm2_chat_1_8b_qlora_assistant.py (packed rows, per-conversation attention,
    chunked answer-token loss), built the same way.
Both are stepped by the same loop (mmengine's optim wrapper: forward, backward, gradient
accumulation, clipping, AdamW), so the difference is the recipe, not the harness.

    python bench/speed.py data --out DATA.json              # on a machine with the data packages
    python bench/speed.py run --data DATA.json --tokenizer TOK --work /tmp/bench [--real-tokens N]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import H200_BF16_DENSE_FLOPS, useful_flops  # noqa: E402
from random_models import RANDOM_WEIGHTS_MARK, SHAPES, make_random_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUR_CONFIG = REPO / "configs" / "internlm2_chat_1_8b_qlora_assistant.py"
TUTORIAL_INPUTS = ["请你介绍一下你自己", "你是谁", "你是我的小助手吗"]


# ---------------------------------------------------------------- data (run where the packages are)
def write_data(out: Path, identity_samples: int, seed: int) -> dict:
    """The tutorial's task with our data: identity conversations + as many general ones, as one
    OpenAI-format JSON file both recipes read."""
    import random

    from xtuner_assistant.data.general import load_source
    from xtuner_assistant.data.identity import IdentityConversations
    from xtuner_assistant.paths import write_json_atomic

    identity = list(IdentityConversations("小菜鸡", "", "书生·浦语 InternLM2-Chat-1.8B", n=identity_samples, seed=seed))
    general = []
    for source in ("packaged:chatterbot", "packaged:chitchat"):
        general += load_source(source)[0]
    rng = random.Random(seed)
    rng.shuffle(general)
    records = [{"messages": c["messages"]} for c in identity + general[:identity_samples]]
    rng.shuffle(records)
    write_json_atomic(out, records)
    return {"conversations": len(records), "file": str(out)}


# ---------------------------------------------------------------- the two recipes
def tutorial_stock_config(model_dir: Path, data: Path, out: Path) -> Path:
    """XTuner's stock config with the tutorial's edits (MISSION.md step 4), made to its text."""
    import xtuner

    source = Path(xtuner.__file__).parent / "configs/internlm/internlm2_chat_1_8b/internlm2_chat_1_8b_qlora_alpaca_e3.py"
    text = source.read_text()
    edits = [
        (r'pretrained_model_name_or_path = "[^"]*"', f'pretrained_model_name_or_path = "{model_dir}"'),
        (r'alpaca_en_path = "[^"]*"', f'alpaca_en_path = "{data}"'),
        (r"max_length = 2048", "max_length = 1024"),
        (r"max_epochs = 3", "max_epochs = 2"),
        (r"save_total_limit = 2 ", "save_total_limit = 3 "),
        (r"evaluation_freq = 500", "evaluation_freq = 300"),
        (r"evaluation_inputs = \[[^\]]*\]", f"evaluation_inputs = {TUTORIAL_INPUTS!r}"),
        (r"import alpaca_map_fn, template_map_fn_factory", "import openai_map_fn, template_map_fn_factory"),
        (r"dataset_map_fn=alpaca_map_fn", "dataset_map_fn=openai_map_fn"),
        (r"dataset=dict\(type=load_dataset, path=alpaca_en_path\)",
         'dataset=dict(type=load_dataset, path="json", data_files=dict(train=alpaca_en_path))'),
    ]
    for pattern, replacement in edits:
        text, count = re.subn(pattern, replacement, text)
        if count != 1:
            raise RuntimeError(f"{source}: the tutorial's edit {pattern!r} matched {count} times, not once")
    out.write_text(text)
    return out


def build(config_path: Path, env: dict, smoke: bool, cfg_options: dict | None = None):
    """(model, dataset, collate_fn, optim_wrapper, accumulative_counts) from a config, as
    `xtuner train` would build them (no runner, no hooks); `cfg_options` as `--cfg-options`. The config
    reads `env` (XA_ settings) while it is built; the environment is restored after, so one recipe's
    settings do not reach the next one's."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return _build(config_path, smoke, cfg_options)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _build(config_path: Path, smoke: bool, cfg_options: dict | None):
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import DATASETS
    from xtuner.registry import BUILDER

    import xtuner_assistant  # noqa: F401  (registers our components, applies compat fixes)

    cfg = Config.fromfile(str(config_path))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if smoke:  # CPU: no 4-bit, no mixed precision, no 32 tokenizing processes on a small machine
        if "map_num_proc" in cfg.train_dataloader.dataset or "dataset_map_fn" in cfg.train_dataloader.dataset:
            cfg.train_dataloader.dataset.map_num_proc = 1
        cfg.model.llm.pop("quantization_config", None)
        cfg.model.llm.torch_dtype = "torch.float32"
        cfg.optim_wrapper = dict(type="OptimWrapper", optimizer=cfg.optim_wrapper.optimizer,
                                 clip_grad=cfg.optim_wrapper.clip_grad,
                                 accumulative_counts=cfg.optim_wrapper.accumulative_counts)
    model = BUILDER.build(cfg.model)
    device = "cuda" if not smoke else "cpu"
    model.to(device)
    loader_cfg = cfg.train_dataloader
    dataset = DATASETS.build(loader_cfg.dataset)  # as mmengine's Runner does
    collate = loader_cfg.collate_fn
    collate = dict(collate)
    collate_fn = BUILDER.get(collate.pop("type")) if isinstance(collate.get("type"), str) else collate.pop("type")
    if any(hook.get("type") == "GraphShapeFromDataHook" for hook in cfg.get("custom_hooks", [])):
        from xtuner_assistant.training.graphed_step import fit_graph_to_data

        print(f"graph shape: {fit_graph_to_data(model, dataset)}", flush=True)  # as the hook does before training
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    return model, dataset, (lambda rows: collate_fn(rows, **collate)), optim_wrapper, loader_cfg.batch_size


# ---------------------------------------------------------------- measuring
def attention_pairs(data: dict) -> int:
    """Query-key pairs a causal model needs: within each conversation (the useful attention)."""
    if "document_ids" in data:
        total = 0
        for row in data["document_ids"]:
            _, counts = row[row >= 0].unique_consecutive(return_counts=True)
            total += int((counts * (counts + 1) // 2).sum())
        return total
    n = data["input_ids"].shape[-1]
    return data["input_ids"].shape[0] * n * (n + 1) // 2


def real_tokens(data: dict) -> int:
    from xtuner_assistant.data.packing import real_token_count

    if "document_ids" in data:
        return real_token_count(data)
    mask = data.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(data["input_ids"].numel())


# XTuner's internlm2_chat template (no system prompt), as a chat template: stock's own text for the
# held-out loss, so each recipe is scored in the template it trained with.
STOCK_CHAT_TEMPLATE = ("{% for m in messages %}{% if m.role == 'assistant' %}{{ m.content + '<|im_end|>' }}{% else %}"
                       "{% if not loop.first %}{{ '\\n' }}{% endif %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>' }}"
                       "{% if m.role == 'user' %}{{ '\\n<|im_start|>assistant\\n' }}{% endif %}{% endif %}{% endfor %}")


def mean_answer_loss(llm, rows: list[tuple[list[int], list[int]]], device: str = "cpu") -> tuple[float, int]:
    """(mean next-token loss over answer tokens, their count) of (input_ids, labels) rows, each row
    one forward pass."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        for input_ids, labels in rows:
            answer_tokens = sum(label != -100 for label in labels[1:])
            if answer_tokens:
                out = llm(input_ids=torch.tensor([input_ids], device=device),
                          labels=torch.tensor([labels], device=device), use_cache=False)
                total += out.loss.float().item() * answer_tokens
                count += answer_tokens
    return total / count, count


def heldout_scorer(tokenizer_dir: Path, conversations: list[dict], stock: bool, device: str):
    """f(model) -> mean answer-token loss over conversations the run never trains on, each scored
    alone: packed rows that attend across conversations (stock's) make the training loss
    incomparable, because repeated identity answers can be copied from the row."""
    from transformers import AutoTokenizer

    from xtuner_assistant.chat_template import encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=True)
    if stock:
        tokenizer.chat_template = STOCK_CHAT_TEMPLATE
    encoded = [encode_conversation(tokenizer, c["messages"], 1024) for c in conversations]
    rows = [(sample["input_ids"], sample["labels"]) for sample in encoded]

    def score(model) -> float:
        llm = model.llm
        was_training = llm.training
        llm.eval()
        loss, _ = mean_answer_loss(llm, rows, device)
        llm.train(was_training)
        return round(loss, 4)

    return score


def train_for(name: str, model, dataset, collate, optim_wrapper, batch_size: int, real_token_budget: int,
              warmup_steps: int, shape: dict, device: str, log_every_tokens: int, seed: int = 0,
              heldout=None, heldout_points: int = 0) -> dict:
    """Step until `real_token_budget` real tokens have been trained after `warmup_steps` steps;
    `heldout(model)` is scored before training and at `heldout_points` even marks (not timed)."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(seed), num_workers=1 if device == "cuda" else 0)
    cuda = device == "cuda"
    model.train()
    steps, tokens, pairs, seconds, warmup_tokens = 0, 0, 0, 0.0, 0
    curve, window_tokens = [], 0
    losses_since_log = []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    batches = iter(loader)
    step_index = 0
    heldout_curve = [{"real_tokens": 0, "loss": heldout(model)}] if heldout else []
    marks = [real_token_budget * (i + 1) // heldout_points for i in range(heldout_points)] if heldout else []
    while tokens < real_token_budget:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        data = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch["data"].items()}
        step_real = real_tokens(batch["data"])
        step_pairs = attention_pairs(batch["data"])
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        if hasattr(model, "graphed_step"):  # ours: its train_step, which may replay a captured CUDA graph
            loss = model.train_step({"data": data, "data_samples": None}, optim_wrapper)["loss"]
        else:
            with optim_wrapper.optim_context(model):
                loss = model(data, mode="loss")["loss"]
            optim_wrapper.update_params(loss)
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        step_index += 1
        if step_index <= warmup_steps:
            warmup_tokens += step_real  # trained on, so the loss curve counts them; the timing does not
            continue
        steps += 1
        tokens += step_real
        pairs += step_pairs
        seconds += elapsed
        losses_since_log.append((loss.item(), step_real))
        window_tokens += step_real
        if window_tokens >= log_every_tokens or tokens >= real_token_budget:
            mean = sum(l * n for l, n in losses_since_log) / sum(n for _, n in losses_since_log)
            curve.append({"real_tokens": warmup_tokens + tokens, "loss": round(mean, 4)})
            losses_since_log, window_tokens = [], 0
        if marks and tokens >= marks[0]:
            marks = [mark for mark in marks if mark > tokens]
            heldout_curve.append({"real_tokens": warmup_tokens + tokens, "loss": heldout(model)})
    result = {
        "recipe": name, "steps": steps, "real_tokens": tokens, "seconds": round(seconds, 3),
        "real_tokens_per_s": round(tokens / seconds, 1), "step_ms": round(1000 * seconds / steps, 1),
        "real_tokens_per_step": round(tokens / steps, 1), "warmup_real_tokens": warmup_tokens,
        "mfu": round(useful_flops(shape, tokens, pairs) / seconds / H200_BF16_DENSE_FLOPS, 4) if cuda else None,
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        "peak_gpu_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20) if cuda else None,
        "loss_curve": curve,
    }
    if heldout_curve:
        result["heldout_loss_curve"] = heldout_curve
    print(json.dumps(result), flush=True)  # loss curve included: a run cut short keeps what it measured
    return result


def evaluation_seconds(model, tokenizer_dir: Path, max_new_tokens: int, merge_adapter: bool = True,
                       trace: Path | None = None) -> dict:
    """Wall time and peak memory of one pass of the evaluation hook's generation (IdentityEvalHook: the
    held-out identity questions and the general prompts in one batch, greedy, `max_new_tokens`), the way
    the hook runs it, and its phases (merging LoRA, answering, restoring the model); `merge_adapter=False`:
    through the 4-bit layers and the adapter, as before. `trace`: the pass under torch.profiler, its
    Chrome trace kept there and its GPU time by kernel returned."""
    import contextlib

    import torch
    from transformers import AutoTokenizer

    from xtuner_assistant.evaluation.hook import _inference
    from xtuner_assistant.evaluation.identity_evaluation import IdentityEvaluation

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=True)
    evaluation = IdentityEvaluation("小菜鸡", base_model="InternLM2-Chat-1.8B", max_new_tokens=max_new_tokens)
    prompts = evaluation.identity_prompts + evaluation.general_prompts
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) \
        if trace else contextlib.nullcontext()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with profiler:
        start = time.perf_counter()
        with _inference(model, merge_adapter=merge_adapter) as merged_layers:
            torch.cuda.synchronize()
            merged = time.perf_counter()
            answers = evaluation.generator(model.llm, tokenizer)(prompts, max_new_tokens)
            torch.cuda.synchronize()
            answered = time.perf_counter()
        torch.cuda.synchronize()
        end = time.perf_counter()
    result = {"seconds": round(end - start, 2), "prompts": len(prompts), "merged_layers": merged_layers,
              "phases_seconds": {"merge": round(merged - start, 3), "answer": round(answered - merged, 3),
                                 "restore": round(end - answered, 3)},
              "peak_gpu_mib": torch.cuda.max_memory_allocated() // 2**20, "answers": answers}
    if trace:
        from profile_step import gpu_busy_ms, kernel_totals

        profiler.export_chrome_trace(str(trace))
        result["gpu_busy_ms"] = round(gpu_busy_ms(trace), 1)
        result["top_kernels_ms"] = {name[:90]: round(us / 1000, 2) for name, us in kernel_totals(trace)[:15]}
        result["top_cpu_ops"] = [f"{e.key}: self {e.self_cpu_time_total / 1000:.1f} ms, total {e.cpu_time_total / 1000:.1f} ms,"
                                 f" {e.count} calls" for e in sorted(profiler.key_averages(),
                                                                     key=lambda e: -e.cpu_time_total)[:25]]
    return result


def compile_counters() -> dict:
    """torch.compile's counts so far: graphs made and recompilations (a recompiling layer is slow)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return {}
    return {"unique_graphs": counters["stats"].get("unique_graphs", 0),
            "calls_captured": counters["stats"].get("calls_captured", 0),
            "recompiles": sum(counters["recompiles"].values()) if "recompiles" in counters else None,
            "graph_breaks": sum(counters["graph_break"].values())}


def release() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


LOSS_BEFORE = ", the loss as before: every position, logits recomputed in the backward pass"


def our_arms(args) -> list[tuple[int, int, str, str]]:
    """(pack tokens, loss chunk, dtype, variant) of each run of ours: `--ours` names them one by one, else
    every pack size with every loss chunk, in bfloat16. Variant "upcast" is the model before the frozen
    weights were kept in bfloat16 (PEFT's float32 upcast), "eager" the model before fused kernels and
    compiled layers, "fused" / "compiled" fused kernels without / with compiled layers, "compiled_inside" compiled
    layers with activation checkpointing inside them, "keepN" the last N layers without checkpointing, "foreach"
    AdamW's foreach step (before the configs took the fused one), "loss_before" the loss before its
    gradient was made in the forward pass (bench/speed_patches.py), "" the config as shipped."""
    if not args.ours:
        return [(pack, chunk, "bfloat16", "") for pack in args.pack_tokens for chunk in args.loss_chunk_tokens]
    arms = []
    for spec in args.ours:
        fields = spec.split(":")
        variant = fields[-1] if fields[-1] in ("upcast", "eager", "fused", "compiled", "compiled_inside", "adapter_bf16", "nodropout",
                                       "nodropout_nograph", "foreach", "loss_before") \
            or re.fullmatch(r"keep\d+", fields[-1]) else ""
        fields = fields[:-1] if variant else fields
        if not 1 <= len(fields) <= 3 or not all(f.isdigit() for f in fields[:2]) or \
                (len(fields) == 3 and fields[2] not in ("bfloat16", "float16")):
            raise SystemExit(f"--ours {spec!r}: expected PACK[:CHUNK[:bfloat16|float16]][:upcast|:eager|:fused|:compiled|:compiled_inside|:adapter_bf16|:nodropout[_nograph]|:foreach|:loss_before|:keepN], e.g. 4096:256:float16")
        arms.append((int(fields[0]), int(fields[1]) if len(fields) > 1 else 0,
                     fields[2] if len(fields) > 2 else "bfloat16", variant))
    return arms


def run(args) -> dict:
    import torch

    from xtuner_assistant.training import document_attention

    smoke = args.smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else "cuda"
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    name = "internlm2-chat-1.8b"
    overrides = json.loads(args.shape_overrides) if args.shape_overrides else None
    model_dir = Path(args.model_dir or work / "model")
    real_model = (model_dir / "config.json").is_file() and not (model_dir / RANDOM_WEIGHTS_MARK).exists()
    if real_model:  # a real model's folder: its own shape, its own tokenizer
        shape = {**json.loads((model_dir / "config.json").read_text()), **(overrides or {})}
        name = shape.get("model_type", "model")
    else:  # random weights of InternLM2's shape, made once (an existing folder is used as it is)
        shape = {**SHAPES[name], **(overrides or {})}
        model_dir = make_random_model(name, model_dir, Path(args.tokenizer), overrides=overrides)
    data = Path(args.data).resolve()
    heldout_conversations = []
    if args.heldout:
        records = json.loads(data.read_text())
        heldout_conversations = records[-args.heldout:]
        data = work / f"train_without_last_{args.heldout}.json"
        data.write_text(json.dumps(records[:-args.heldout], ensure_ascii=False))
    results = {"device": torch.cuda.get_device_name() if not smoke else "cpu", "model_shape": name,
               "weights": f"real ({model_dir})" if real_model else "random (throughput does not depend on the values)",
               "data": str(data), "real_token_budget": args.real_tokens, "torch": torch.__version__, "runs": []}
    stock_config = tutorial_stock_config(model_dir, data, work / "internlm2_chat_1_8b_qlora_alpaca_e3_tutorial.py")
    recipes = [(f"stock XTuner (tutorial config){' seed ' + str(seed) if seed else ''}", stock_config, {}, seed, None, {})
               for seed in args.stock_seeds]
    variants = {"": ({}, ""), "upcast": ({"model.frozen_in_bfloat16": False, "model.fused_kernels": False,
                                          "model.compile_layers": False}, ", frozen weights upcast, eager"),
                "eager": ({"model.fused_kernels": False, "model.compile_layers": False}, ", eager: no fused kernels, no compile"),
                "fused": ({"model.fused_kernels": True, "model.compile_layers": False}, ", fused kernels, no compile"),
                "compiled": ({"model.fused_kernels": True, "model.compile_layers": True}, ", fused kernels, compiled layers"),
                "compiled_inside": ({"model.fused_kernels": True, "model.compile_layers": True,
                                     "model.checkpoint_in_compiled_layers": True},
                                    ", fused kernels, compiled layers, checkpointing inside them"),
                "adapter_bf16": ({}, ", LoRA weights and optimizer state in bfloat16 (XA_ADAPTER_DTYPE)"),
                "nodropout": ({}, ", LoRA dropout 0: each step one replayed CUDA graph"),
                "nodropout_nograph": ({}, ", LoRA dropout 0, no CUDA graph"),
                "foreach": ({"optim_wrapper.optimizer.fused": False}, ", AdamW's foreach step instead of the fused one"),
                "loss_before": ({}, LOSS_BEFORE)}
    variant_env = {"adapter_bf16": {"XA_ADAPTER_DTYPE": "bfloat16"}, "nodropout": {"XA_LORA_DROPOUT": "0"},
                   "nodropout_nograph": {"XA_LORA_DROPOUT": "0", "XA_CUDA_GRAPH": "false"}}
    for pack, chunk, dtype, variant in our_arms(args):
        if variant.startswith("keep"):
            variants[variant] = ({"model.layers_without_checkpointing": int(variant[4:])},
                                 f", the last {variant[4:]} layers without activation checkpointing")
        cfg_options, described = variants[variant]
        recipes.append((f"ours (pack_tokens={pack}, loss chunk {chunk}{', ' + dtype if dtype != 'bfloat16' else ''}"
                        f"{described})", OUR_CONFIG, {
            "XA_MODEL": str(model_dir), "XA_IDENTITY_FILE": str(data), "XA_GENERAL": "", "XA_GENERAL_RATIO": "0", "XA_REPLAY_RATIO": "0",
            "XA_PACK_TOKENS": str(pack), "XA_ACCUMULATIVE_COUNTS": str(max(1, args.tokens_per_step // pack)),
            "XA_MAX_LENGTH": "1024", "XA_DTYPE": dtype,
            **variant_env.get(variant, {})}, 0, chunk, cfg_options))
    for label, config, env, seed, chunk, cfg_options in recipes:
        torch.manual_seed(seed)
        model, dataset, collate, optim_wrapper, batch_size = build(config, env, smoke, cfg_options)
        if chunk:
            model.loss_chunk_tokens = chunk
        from xtuner_assistant.training import answer_loss

        shipped_loss = answer_loss._head_parts
        if label.endswith(LOSS_BEFORE + ")"):
            import speed_patches

            speed_patches.loss_before(model)
        if label.startswith("stock"):  # the tutorial's 16 x 1024 tokens a step, unless told otherwise
            optim_wrapper._accumulative_counts = max(1, args.tokens_per_step // 1024)
        if args.lr:  # one constant rate for every recipe (both configs say 2e-4)
            for group in optim_wrapper.optimizer.param_groups:
                group["lr"] = args.lr
        heldout = heldout_scorer(model_dir, heldout_conversations, label.startswith("stock"), device) \
            if heldout_conversations else None
        result = train_for(label, model, dataset, collate, optim_wrapper, batch_size, args.real_tokens,
                           args.warmup_steps, shape, device, args.log_every_tokens, seed, heldout, args.heldout_points)
        answer_loss._head_parts = shipped_loss  # loss_before's patch ends with its run
        result["accumulative_counts"] = optim_wrapper._accumulative_counts
        router = document_attention._document_attention  # installed by our model's first packed step on CUDA
        if "ours" in label and router is not None and router.route_used:
            result["attention_route"] = router.route_used
        if label.startswith("ours") and device == "cuda":
            result["torch_compile"] = compile_counters()
        last_of_ours = label == [r[0] for r in recipes if r[0].startswith("ours")][-1]
        if args.eval_new_tokens and not smoke and last_of_ours:  # generation runs eagerly in every variant: once is enough
            # The config evaluates every `evaluation_freq` optimizer steps (50): that much training per pass.
            train_seconds = args.evaluation_freq * optim_wrapper._accumulative_counts * result["step_ms"] / 1000
            result["evaluation"] = {"new_tokens_per_answer": args.eval_new_tokens, "every_n_steps": args.evaluation_freq,
                                    "training_seconds_between": round(train_seconds, 2)}
            # One batch of every prompt, LoRA merged into the dequantized weights, decoded by generate() (before)
            # and with a static cache, each token a CUDA graph's replay (now); XA_STATIC_DECODING picks.
            paths = {"one_batch_merged_generate": "0", "one_batch_merged_static_graph": "1"}
            answers = {}
            for static in paths.values():  # warm-up: each path's first kernels load here, not in a timed pass
                os.environ["XA_STATIC_DECODING"] = static
                evaluation_seconds(model, model_dir, 8)
            for path, static in paths.items():
                os.environ["XA_STATIC_DECODING"] = static
                one = evaluation_seconds(model, model_dir, args.eval_new_tokens)
                answers[path] = one.pop("answers")
                one["share_of_wall_time"] = round(one["seconds"] / (one["seconds"] + train_seconds), 4)
                result["evaluation"][path] = one
            if args.eval_trace:  # one more pass of the shipped path, under the profiler (slower: not the timed one)
                os.environ["XA_STATIC_DECODING"] = "1"
                profiled = evaluation_seconds(model, model_dir, args.eval_new_tokens, trace=Path(args.eval_trace))
                profiled.pop("answers")
                result["evaluation"]["profiled_static_graph_pass"] = profiled
            os.environ.pop("XA_STATIC_DECODING")
            first, second = answers.values()
            result["evaluation"]["same_answers"] = f"{sum(a == b for a, b in zip(first, second))}/{len(second)}"
            result["evaluation"]["answers"] = answers
        results["runs"].append(result)
        del model, dataset, optim_wrapper
        release()
    stock = results["runs"][0] if results["runs"][0]["recipe"].startswith("stock") else None
    for result in results["runs"]:
        if result["recipe"].startswith("stock") or stock is None:
            continue
        result["speedup_vs_stock"] = round(result["real_tokens_per_s"] / stock["real_tokens_per_s"], 2)
        if stock["peak_gpu_mib"]:
            result["peak_memory_vs_stock"] = round(result["peak_gpu_mib"] / stock["peak_gpu_mib"], 3)
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    print_table(results)
    return results


def print_table(results: dict) -> None:
    print(f"\n{results['device']}  {results['model_shape']}  {results['real_token_budget']} real tokens each")
    print(f"{'recipe':<48} {'tok/s':>9} {'step ms':>8} {'tok/step':>9} {'peak MiB':>9} {'MFU':>6} {'speed-up':>8}")
    for r in results["runs"]:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{r['recipe']:<48} {r['real_tokens_per_s']:>9} {r['step_ms']:>8} {r['real_tokens_per_step']:>9} "
              f"{str(r['peak_gpu_mib']):>9} {mfu:>6} {str(r.get('speedup_vs_stock', '1.0')):>8}")
    print("loss at equal real tokens:")
    for r in results["runs"]:
        print(f"  {r['recipe']:<48} " + " ".join(f"{p['loss']:.3f}" for p in r["loss_curve"]))


def plot(results_path: Path, out: Path, warmup_steps: int = 0) -> Path:
    """The loss curves of every recipe against real tokens trained, one PNG. Results written before
    the curves counted the warm-up steps' tokens are shifted by `warmup_steps` steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(results_path).read_text())
    heldout = any("heldout_loss_curve" in run for run in results["runs"])
    figure, axes = plt.subplots(1, 2 if heldout else 1, figsize=(13 if heldout else 7, 4.2), squeeze=False)
    axis = axes[0][0]
    for run in results["runs"]:
        points = run["loss_curve"]
        shift = 0 if "warmup_real_tokens" in run else warmup_steps * run["real_tokens_per_step"]
        points = [dict(p, real_tokens=p["real_tokens"] + shift) for p in points]
        style = "--" if run["recipe"].startswith("stock") else "-"
        axis.plot([p["real_tokens"] for p in points], [p["loss"] for p in points], style, marker=".",
                  label=f"{run['recipe']}: {run['real_tokens_per_s']:,.0f} tok/s")
    axis.set_xlabel("real (non-padding) tokens trained")
    axis.set_ylabel("training loss (answer tokens)")
    axis.set_title(f"{results['model_shape']}, {results['weights'].split(' (')[0]} weights, {results['device']}; "
                   "x counts warm-up steps too", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    if heldout:
        right = axes[0][1]
        for run in results["runs"]:
            points = run.get("heldout_loss_curve", [])
            right.plot([p["real_tokens"] for p in points], [p["loss"] for p in points],
                       "--" if run["recipe"].startswith("stock") else "-", marker="o", label=run["recipe"])
        right.set_xlabel("real (non-padding) tokens trained")
        right.set_ylabel("held-out loss, each conversation alone")
        right.set_title("the comparable loss: conversations never trained on, scored one at a time", fontsize=9)
        right.grid(alpha=0.3)
        right.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    data = verbs.add_parser("data", help="write the benchmark's conversations (needs the data packages)")
    data.add_argument("--out", required=True)
    data.add_argument("--identity-samples", type=int, default=2000)
    data.add_argument("--seed", type=int, default=0)
    bench = verbs.add_parser("run", help="train stock and ours, print the comparison")
    bench.add_argument("--data", required=True)
    bench.add_argument("--tokenizer", required=True, help="stand-in tokenizer folder")
    bench.add_argument("--work", default="/tmp/xtuner-assistant-bench")
    bench.add_argument("--out", default="bench_results.json")
    bench.add_argument("--model-dir", help="a real model folder (used as is, with its own tokenizer), or where random "
                       "weights of InternLM2-Chat-1.8B's shape are made (default WORK/model)")
    bench.add_argument("--real-tokens", type=int, default=262144, help="real tokens trained by each recipe")
    bench.add_argument("--warmup-steps", type=int, default=3)
    bench.add_argument("--pack-tokens", type=int, nargs="+", default=[8192])
    bench.add_argument("--loss-chunk-tokens", type=int, nargs="+", default=[0],
                       help="answer tokens per logits chunk of our loss (0: the shipped default)")
    bench.add_argument("--ours", nargs="+", default=[], metavar="PACK[:CHUNK[:DTYPE]][:upcast]",
                       help="our runs one by one, e.g. 4096:256 4096:256:float16 (float16: stock's precision); "
                       "replaces --pack-tokens x --loss-chunk-tokens")
    bench.add_argument("--stock-seeds", type=int, nargs="*", default=[0],
                       help="data orders for stock XTuner; two or more show the loss curve's noise")
    bench.add_argument("--log-every-tokens", type=int, default=16384)
    bench.add_argument("--tokens-per-step", type=int, default=16384,
                       help="tokens per optimizer step for every recipe (the tutorial's 16 x 1024)")
    bench.add_argument("--lr", type=float, default=0.0, help="learning rate for every recipe (default: the configs' 2e-4)")
    bench.add_argument("--heldout", type=int, default=0,
                       help="keep the data file's last N conversations out of training and score each recipe "
                       "on them, one conversation at a time (the comparable loss; see heldout_scorer)")
    bench.add_argument("--heldout-points", type=int, default=4, help="held-out scores during training, besides the start")
    bench.add_argument("--eval-new-tokens", type=int, default=96, help="the hook's max_new_tokens (the config's 96)")
    bench.add_argument("--evaluation-freq", type=int, default=50, help="optimizer steps between evaluations (the config's)")
    bench.add_argument("--eval-trace", help="a Chrome trace (.json.gz) of one more evaluation pass under torch.profiler")
    bench.add_argument("--shape-overrides", default="", help="JSON, e.g. a tiny shape for a CPU smoke run")
    bench.add_argument("--smoke", action="store_true", help="CPU, float32, no 4-bit: checks the harness only")
    drawing = verbs.add_parser("plot", help="draw the loss curves of a results file")
    drawing.add_argument("results")
    drawing.add_argument("--out", required=True)
    drawing.add_argument("--warmup-steps", type=int, default=0, help="for results from before warm-up tokens were counted")
    args = parser.parse_args()
    if args.verb == "plot":
        print(plot(Path(args.results), Path(args.out), args.warmup_steps))
    elif args.verb == "data":
        print(json.dumps(write_data(Path(args.out), args.identity_samples, args.seed)))
    else:
        run(args)


if __name__ == "__main__":
    main()
