"""Unsloth as the peer recipe, on bench/peer_trl.py's work and timed by its `measure`, so the two JSONs
compare key for key: the same random Llama of InternLM2-Chat-1.8B's shape, the same conversations packed
whole and padding-free (best-fit decreasing) into rows of at most 3,072 tokens, one row an optimizer
step, nf4 with double quantization, LoRA r=64 alpha 128 on all linear layers, lr 2e-4 constant, bf16.
The rest is Unsloth's, set up as its documentation does: FastLanguageModel's patched Llama (Triton
kernels, fused LoRA), its gradient checkpointing (use_gradient_checkpointing="unsloth", activations
offloaded to CPU), TRL's SFTTrainer as Unsloth patches it, its default optimizer (adamw_8bit). LoRA
dropout is 0 unless asked: Unsloth's fused LoRA kernels apply only without dropout (peer_trl uses 0.05).

Runs on the GPU machine's own torch/transformers/peft/accelerate plus the wheels carried in .gpu_unsloth/
(unsloth, unsloth_zoo, trl 1.15, which Unsloth caps TRL at, ...), offline; CUDA only.

    python bench/peer_unsloth.py --data DATA.json --tokenizer TOK --work W --out OUT.json [--lora-dropout 0.05]
"""
from __future__ import annotations

import os

# No network on the GPU machine: from_pretrained would otherwise try to fetch Unsloth's usage statistics
# (small Hub repos), and the Hub libraries would look up a local folder online.
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import unsloth  # noqa: E402  before transformers, trl and peft: it patches them as they import

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import peer_trl  # noqa: E402  (this file's folder is on sys.path): the model, the shapes, the measurement


def run(args) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    shape = peer_trl.TINY_SHAPE if args.tiny else peer_trl.INTERNLM2_SHAPE
    work = Path(args.work)
    model_dir = peer_trl.make_model(work / ("llama_tiny" if args.tiny else "llama_internlm2_shape"), shape,
                                    Path(args.tokenizer))
    records = json.loads(Path(args.data).read_text())
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in records])
    model, tokenizer = FastLanguageModel.from_pretrained(str(model_dir), load_in_4bit=True,
                                                         max_seq_length=args.pack_tokens, dtype=torch.bfloat16)
    model = FastLanguageModel.get_peft_model(
        model, r=64, lora_alpha=128, lora_dropout=args.lora_dropout, bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_gradient_checkpointing="unsloth", random_state=0)
    steps = args.warmup_steps + args.steps
    # Unsloth's SFTConfig defaults differ from TRL's (weight decay 0.001, seed 3407, ...): what peer_trl sets is
    # set here too; gradient checkpointing is left to the model (get_peft_model above), as Unsloth documents.
    config = SFTConfig(
        output_dir=str(work / "unsloth_out"), max_length=args.pack_tokens, packing=True, packing_strategy="bfd",
        padding_free=True, per_device_train_batch_size=1, gradient_accumulation_steps=1, bf16=True,
        learning_rate=2e-4, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_steps=steps,
        logging_steps=max(1, steps // 10), save_strategy="no", report_to="none", dataset_num_proc=1,
        dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    optim = getattr(trainer.args.optim, "value", trainer.args.optim)
    recipe = (f"Unsloth {unsloth.__version__} QLoRA (FastLanguageModel nf4, LoRA dropout {args.lora_dropout:g}) + TRL "
              f"SFTTrainer, padding-free BFD packing {args.pack_tokens}, Unsloth gradient checkpointing, {optim}")
    return peer_trl.measure(trainer, args, shape, recipe,
                            stack=("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo"))


def main() -> None:
    parser = peer_trl.peer_arguments(__doc__.splitlines()[0])
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="0: Unsloth's fused LoRA kernels")
    parser.set_defaults(device="cuda")  # peer_trl.measure reads it; Unsloth's kernels need the GPU
    run(parser.parse_args())


if __name__ == "__main__":
    main()
