"""Does a packed row compute, on this device, what each of its conversations computes alone?

Builds the packed fine-tune model (PackedSupervisedFinetune, LoRA with non-zero B so the adapter
matters) on a real model, packs real conversations (identity + general chat, the model's own chat
template) into one row, and compares per answer token:
  packed  the training path: one row, document ids, the attention router on CUDA (varlen or dense),
          the additive mask elsewhere, the chunked answer-token loss;
  alone   each conversation through the plain PEFT model, one at a time, plain causal attention.
A packed row that lets a conversation see another one (or its own future) gives different losses;
rounding alone gives differences at the dtype's precision. Also compares the LoRA gradients.

    python bench/packed_equivalence.py MODEL_DIR [--routes float32 bfloat16 nf4] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from xtuner_assistant.chat_template import IGNORE_INDEX  # noqa: E402


def conversations(model_dir: str, count: int, max_length: int):
    from xtuner_assistant.data.mixed import MixedChatDataset

    tokenizer = dict(type="transformers.AutoTokenizer.from_pretrained", pretrained_model_name_or_path=model_dir,
                     trust_remote_code=True, padding_side="right")
    identity = dict(type="IdentityConversations", name="星河小蜜蜂", author="林舟", base_model="SmolLM2", n=count // 2)
    dataset = MixedChatDataset(tokenizer, identity, ["packaged:chatterbot"], 1.0, max_length=max_length, seed=1)
    return [dataset[i] for i in range(len(dataset))]


def build_model(model_dir: str, route: str):
    from mmengine.config import ConfigDict

    from xtuner_assistant.training.packed_finetune import PackedSupervisedFinetune
    from xtuner_assistant.training.recipe import nf4_quantization

    dtype = "torch.float32" if route == "float32" else "torch.bfloat16"
    llm = dict(type="transformers.AutoModelForCausalLM.from_pretrained", pretrained_model_name_or_path=model_dir,
               trust_remote_code=True, torch_dtype=dtype, attn_implementation="sdpa")
    if route == "nf4":
        llm["quantization_config"] = nf4_quantization(dtype)
    lora = dict(type="peft.LoraConfig", r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    model = PackedSupervisedFinetune(llm=ConfigDict(llm), lora=ConfigDict(lora), use_activation_checkpointing=True)
    generator = torch.Generator().manual_seed(0)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if route != "nf4":
        model.to(device)
    model.train()
    return model, device


def lora_gradients(model) -> torch.Tensor:
    grads = [p.grad.detach().float().flatten() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    return torch.cat(grads)


def packed_token_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss as training computes it, per-position losses of the row) through compute_loss."""
    import xtuner_assistant.training.packed_finetune as packed

    captured = {}
    original = packed.answer_token_loss

    def capture(hidden, labels, head, document_ids=None, chunk_tokens=packed.LOSS_CHUNK_TOKENS):
        captured["hidden"], captured["head"] = hidden, head
        return original(hidden, labels, head, document_ids, chunk_tokens)

    packed.answer_token_loss = capture
    try:
        loss = model.compute_loss(dict(batch))["loss"]
    finally:
        packed.answer_token_loss = original
    with torch.no_grad():
        logits = captured["head"](captured["hidden"][0, :-1]).float()
        targets = batch["labels"][0, 1:].clone()
        targets[batch["document_ids"][0, 1:] != batch["document_ids"][0, :-1]] = IGNORE_INDEX
        per_token = F.cross_entropy(logits, targets, reduction="none", ignore_index=IGNORE_INDEX)
    return loss, per_token


def alone_token_losses(model, samples, device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    total, count, per_sample = 0.0, 0, []
    for sample in samples:
        ids = torch.tensor([sample["input_ids"]], device=device)
        labels = torch.tensor(sample["labels"][1:], device=device)
        logits = model.llm(input_ids=ids, use_cache=False).logits[0, :-1].float()
        losses = F.cross_entropy(logits, labels, reduction="none", ignore_index=IGNORE_INDEX)
        total = total + losses.sum()
        count += int((labels != IGNORE_INDEX).sum())
        per_sample.append(losses.detach())
    return total / count, per_sample


def compare(model_dir: str, route: str, samples, pack_tokens: int, force_dense: bool = False) -> dict:
    from xtuner_assistant.data.packing import pack_samples, packed_collate_fn
    from xtuner_assistant.training.document_attention import DocumentAttention

    model, device = build_model(model_dir, route)
    row, used = [], 0
    for sample in samples:
        if used + len(sample["input_ids"]) > pack_tokens:
            break
        row.append(sample)
        used += len(sample["input_ids"])
    batch = {k: v.to(device) for k, v in packed_collate_fn([pack_samples(row)], pad_to_multiple_of=pack_tokens)["data"].items()}
    if device == "cuda":
        router = DocumentAttention.installed()
        if force_dense:
            router.varlen = None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda" and route != "float32")
    with autocast:
        packed_loss, packed_per_token = packed_token_losses(model, batch)
    packed_loss.backward()
    packed_grads = lora_gradients(model)
    model.zero_grad(set_to_none=True)
    with autocast:
        alone_loss, alone_per_sample = alone_token_losses(model, row, device)
    alone_loss.backward()
    alone_grads = lora_gradients(model)
    # The packed row's per-position losses, cut back into conversations.
    differences, start = [], 0
    for sample, alone in zip(row, alone_per_sample):
        n = len(sample["input_ids"])
        packed_piece = packed_per_token[start:start + n - 1]
        mask = torch.tensor(sample["labels"][1:], device=device) != IGNORE_INDEX
        differences.append((packed_piece[mask] - alone[mask]).abs())
        start += n
    difference = torch.cat(differences)
    cosine = F.cosine_similarity(packed_grads, alone_grads, dim=0).item()
    route_used = DocumentAttention.installed().route_used if device == "cuda" else "additive mask (cpu)"
    result = dict(route=route, attention=route_used, conversations=len(row), real_tokens=used,
                  answer_tokens=int(difference.numel()), packed_loss=packed_loss.item(), alone_loss=alone_loss.item(),
                  largest_token_loss_difference=difference.max().item(), mean_token_loss_difference=difference.mean().item(),
                  gradient_cosine=cosine,
                  gradient_norm_ratio=(packed_grads.norm() / alone_grads.norm()).item())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--routes", nargs="+", default=["float32", "bfloat16", "nf4", "bfloat16-dense"],
                        help="bfloat16-dense turns the varlen route off for the rest of the run: keep it last")
    parser.add_argument("--pack-tokens", type=int, default=3072)
    parser.add_argument("--out")
    args = parser.parse_args()
    samples = conversations(args.model_dir, 120, 1024)
    results = []
    for route in args.routes:
        try:
            results.append(compare(args.model_dir, route.replace("-dense", ""), samples, args.pack_tokens,
                                   force_dense=route.endswith("-dense")))
        except Exception as error:  # noqa: BLE001 -- report and go on with the next route
            results.append(dict(route=route, error=f"{type(error).__name__}: {error}"))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"{'route':<16}{'attention':<22}{'conv':>5}{'packed':>9}{'alone':>9}{'max |dloss|':>13}{'grad cos':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['route']:<16}{r['error'][:100]}")
            continue
        print(f"{r['route']:<16}{str(r['attention']):<22}{r['conversations']:>5}{r['packed_loss']:>9.4f}"
              f"{r['alone_loss']:>9.4f}{r['largest_token_loss_difference']:>13.4f}{r['gradient_cosine']:>10.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
