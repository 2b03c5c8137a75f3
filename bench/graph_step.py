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

Both arms train the same rows in turn on one model: first the shipped step (`model(data, mode="loss")`
and the optimizer wrapper), then the graphed one, after a check that the two give the same loss and
gradients on one row. Prints and writes one JSON object.

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

IGNORE_INDEX = -100


def _chunk_loss_sum(hidden, targets, head):
    import torch.nn.functional as F

    return F.cross_entropy(head(hidden).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def fixed_shape_loss(hidden, labels, head, document_ids, chunk_tokens: int = 256):
    """`answer_token_loss` without a data-dependent shape: every position, non-answers ignored."""
    import torch
    from torch.utils.checkpoint import checkpoint

    targets = labels[:, 1:]
    targets = torch.where(document_ids[:, 1:] != document_ids[:, :-1], IGNORE_INDEX, targets).flatten()
    hidden = hidden[:, :-1].flatten(0, 1)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, targets.numel(), chunk_tokens):
        piece = slice(start, start + chunk_tokens)
        total = total + checkpoint(_chunk_loss_sum, hidden[piece], targets[piece], head, use_reentrant=False,
                                   preserve_rng_state=False)
    return total / (targets != IGNORE_INDEX).sum().clamp_min(1)


class GraphedStep:
    """One row's forward and backward as a CUDA graph over static input buffers."""

    def __init__(self, model, pack_tokens: int, max_documents: int):
        import torch

        from xtuner_assistant.training.document_attention import DocumentAttention
        from xtuner_assistant.training.packed_finetune import causal_lm_parts

        self.model, self.n, self.max_documents = model, pack_tokens, max_documents
        self.decoder, self.head = causal_lm_parts(model.llm)
        self.router = DocumentAttention.installed(False)
        device = next(model.parameters()).device
        self.inputs = {key: torch.zeros((1, pack_tokens), dtype=torch.long, device=device)
                       for key in ("input_ids", "labels", "position_ids", "document_ids")}
        self.offsets = torch.full((max_documents + 1,), pack_tokens, dtype=torch.int32, device=device)
        self.mask = torch.zeros((), dtype=torch.bfloat16, device=device).expand(1, 1, pack_tokens, pack_tokens)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # InternLM2's own code reads a 4-D mask's maximum back to the host (a sync, which no graph may
        # hold) only to check it is 0: ours is zeros by construction, and the router ignores its values.
        own_update = self.decoder._update_causal_mask

        def update_causal_mask(attention_mask, *args, **kwargs):
            return attention_mask if attention_mask is self.mask else own_update(attention_mask, *args, **kwargs)

        self.decoder._update_causal_mask = update_causal_mask
        self.graph = None
        self.loss = None

    def fill(self, data: dict) -> None:
        from xtuner_assistant.training.document_attention import document_boundaries

        for key, buffer in self.inputs.items():
            buffer.copy_(data[key])
        offsets, _ = document_boundaries(data["document_ids"])
        if offsets.numel() > self.offsets.numel():
            raise SystemExit(f"a row holds {offsets.numel() - 1} conversations, over --max-documents {self.max_documents}")
        self.offsets.fill_(self.n)
        self.offsets[:offsets.numel()].copy_(offsets)

    def forward_backward(self):
        import torch

        self.router.documents = self.inputs["document_ids"]
        self.router.boundaries = (self.offsets, self.n)
        self.router.block_mask = self.router.allowed = None
        # The autocast the compiled layers were compiled under (its cache too: a change recompiles them);
        # its cached casts live within this one region, so the graph holds them.
        with torch.autocast("cuda", dtype=torch.bfloat16):
            hidden = self.decoder(input_ids=self.inputs["input_ids"], position_ids=self.inputs["position_ids"],
                                  attention_mask=self.mask, use_cache=False).last_hidden_state
            loss = fixed_shape_loss(hidden, self.inputs["labels"], self.head, self.inputs["document_ids"])
        loss.backward()
        return loss.detach()

    def capture(self, warmup: int = 3) -> None:
        import torch

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                for p in self.params:
                    p.grad = None
                self.forward_backward()
        torch.cuda.current_stream().wait_stream(side)
        for p in self.params:
            p.grad = None  # allocated by the captured backward, in the graph's pool, and written by each replay
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.loss = self.forward_backward()

    def __call__(self, data: dict):
        self.fill(data)
        self.graph.replay()
        return self.loss


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
    parser.add_argument("--max-documents", type=int, default=256, help="conversations a row may hold")
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
    result["shipped"] = timed("shipped step: model(data, mode='loss'), optimizer wrapper", shipped_step, rows,
                              args.steps, shape)

    # The same rows through both: the loss and the gradients of one row must agree.
    graphed = GraphedStep(model, args.pack_tokens, args.max_documents)
    model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
                                                                           "preserve_rng_state": False})
    probe = next(rows)
    for p in graphed.params:
        p.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager_loss = model(dict(probe), mode="loss")["loss"]
    eager_loss.backward()
    # Let that graph go: its nodes would keep the parameters' gradient accumulators, which remember
    # the stream they were made on (the default one) and would run on it inside the capture.
    eager_loss = eager_loss.detach()
    eager_grads = [p.grad.detach().clone() for p in graphed.params]
    graphed.fill(probe)
    graphed.capture()
    loss = graphed(probe)
    torch.cuda.synchronize()
    worst = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
                for a, b in zip((p.grad for p in graphed.params), eager_grads))
    result["agreement"] = {"eager_loss": round(eager_loss.item(), 5), "graphed_loss": round(loss.item(), 5),
                           "worst_relative_gradient_difference": round(worst, 5)}
    print(json.dumps(result["agreement"]), flush=True)

    optimizer = optim_wrapper.optimizer

    def graphed_step(data):
        loss = graphed(data).clone()  # the graph's output tensor is the same one every replay
        torch.nn.utils.clip_grad_norm_(graphed.params, 1.0)
        optimizer.step()
        return loss

    for _ in range(2):
        graphed_step(next(rows))
    result["graphed"] = timed("the same step replayed from a CUDA graph, optimizer eager", graphed_step, rows,
                              args.steps, shape)
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
