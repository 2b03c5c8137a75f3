"""The recipe a user would pick instead of XTuner, on the same work as bench/speed.py: Hugging Face
TRL's SFTTrainer, QLoRA (bitsandbytes nf4 with double quantization, PEFT LoRA r=64 alpha 128 on all
linear layers), whole conversations packed padding-free (best-fit decreasing) into rows of at most
3,072 tokens, one row an optimizer step, gradient checkpointing, bf16, with or without Liger Kernel.

It runs on the GPU machine's own stack (transformers 5.x, peft, accelerate) plus carried wheels of
trl, datasets, liger-kernel and bitsandbytes, not on our pinned XTuner stack. The model is
InternLM2-Chat-1.8B's shape as a Llama (hidden 2048, 24 layers, 16/8 heads, ffn 8192, vocab 92,544):
TRL's Liger path does not know InternLM2's remote code, and the FLOPs are the same. Random weights, as
in bench/speed.py (throughput does not depend on the values). The loss covers every token (TRL's
`assistant_only_loss` needs generation tags in the template); ours covers answer tokens only, but
both compute the logits of every token, so the work is the same.

    python bench/peer_trl.py --data DATA.json --tokenizer TOK --work W --out OUT.json [--liger]
    python bench/peer_trl.py ... --tiny --device cpu          # checks the harness on a CPU
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

from flops import H200_BF16_DENSE_FLOPS, useful_flops

REPO = Path(__file__).resolve().parent.parent


def stand_ins():
    """xtuner_assistant/models/stand_ins.py (InternLM2's shape and chat template), loaded from its file:
    importing our package would apply compatibility fixes meant for our pinned stack, not this one."""
    spec = importlib.util.spec_from_file_location("stand_ins", REPO / "xtuner_assistant" / "models" / "stand_ins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAND_INS = stand_ins()
INTERNLM2_SHAPE = dict(STAND_INS.INTERNLM2_1_8B, rms_norm_eps=1e-5, tie_word_embeddings=False)
TINY_SHAPE = dict(INTERNLM2_SHAPE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128)


def make_model(folder: Path, shape: dict, tokenizer_dir: Path) -> Path:
    """A Llama of `shape` with random bf16 weights and the stand-in tokenizer, saved once."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (folder / "config.json").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = STAND_INS.INTERNLM2_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = LlamaConfig(**shape, hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "RANDOM_WEIGHTS").write_text("random weights of InternLM2-Chat-1.8B's shape, as a Llama\n")
    return folder


def conversation_lengths(position_ids) -> list[int]:
    """The lengths of a packed batch's conversations: each starts where position_ids is 0."""
    lengths = []
    for row in position_ids:
        starts = (row == 0).nonzero().flatten().tolist() + [row.numel()]
        lengths += [b - a for a, b in zip(starts, starts[1:])]
    return lengths


def run(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cuda = args.device == "cuda"
    shape = TINY_SHAPE if args.tiny else INTERNLM2_SHAPE
    work = Path(args.work)
    model_dir = make_model(work / ("llama_tiny" if args.tiny else "llama_internlm2_shape"), shape, Path(args.tokenizer))
    records = json.loads(Path(args.data).read_text())
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in records])
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.bfloat16) if cuda else None
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quantization, attn_implementation="sdpa",
                                                 dtype=torch.bfloat16 if cuda else torch.float32,
                                                 device_map={"": 0} if cuda else None)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    steps = args.warmup_steps + args.steps
    config = SFTConfig(
        output_dir=str(work / "trl_out"), max_length=args.pack_tokens, packing=True, packing_strategy="bfd",
        padding_free=True, per_device_train_batch_size=1, gradient_accumulation_steps=1,
        gradient_checkpointing=True, bf16=cuda, learning_rate=2e-4, lr_scheduler_type="constant", warmup_steps=0,
        max_steps=steps, logging_steps=max(1, steps // 10), save_strategy="no", report_to="none",
        use_liger_kernel=args.liger, dataset_num_proc=1, dataloader_num_workers=0, seed=0, use_cpu=not cuda)
    lora = LoraConfig(r=64, lora_alpha=128, lora_dropout=0.05, target_modules="all-linear", bias="none",
                      task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    # TRL casts a quantized model's LoRA weights to bfloat16 (sft_trainer.py, after the QLoRA paper); the
    # optimizer, made in train(), then keeps its moments in the weights' dtype.
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    if args.adapter_dtype:
        for parameter in trained:
            parameter.data = parameter.data.to(getattr(torch, args.adapter_dtype))
    recipe = (f"TRL SFTTrainer + PEFT QLoRA, padding-free BFD packing {args.pack_tokens}"
              f"{', Liger Kernel' if args.liger else ''}, LoRA weights in {str(trained[0].dtype).removeprefix('torch.')}"
              f"{' (' + args.adapter_dtype + ' by --adapter-dtype)' if args.adapter_dtype else ' (as TRL leaves them)'}")
    return measure(trainer, args, shape, recipe)


def measure(trainer, args, shape: dict, recipe: str, stack=("torch", "transformers", "trl", "peft")) -> dict:
    """Trains `trainer` for the warm-up and timed steps and writes what the timed ones did to args.out
    (bench/peer_unsloth.py measures its trainer here too, so the two JSONs compare key for key)."""
    import torch
    from transformers import TrainerCallback

    cuda = args.device == "cuda"
    collated = []  # the rows in step order (num_workers=0: collated just before their step)
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        collated.append(batch["position_ids"].cpu() if "position_ids" in batch else
                        torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]).cpu())
        return batch

    trainer.data_collator = counting_collator
    timings = {"steps": [], "losses": []}

    class Timer(TrainerCallback):
        def on_step_begin(self, arguments, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                if state.global_step == args.warmup_steps:
                    torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()

        def on_step_end(self, arguments, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            timings["steps"].append((state.global_step, time.perf_counter() - self.start))

        def on_log(self, arguments, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                timings["losses"].append({"step": state.global_step, "loss": round(float(logs["loss"]), 4)})

    trainer.add_callback(Timer())
    wall = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - wall
    timed = [seconds for step, seconds in timings["steps"] if step > args.warmup_steps]
    lengths = [n for rows in collated[args.warmup_steps:args.warmup_steps + len(timed)] for n in conversation_lengths(rows)]
    seconds, tokens = sum(timed), sum(lengths)
    flops = useful_flops(shape, tokens, sum(n * (n + 1) // 2 for n in lengths))
    result = {
        "recipe": recipe,
        "device": torch.cuda.get_device_name() if cuda else "cpu", "model_shape": "internlm2-chat-1.8b as llama"
        if not args.tiny else "tiny llama", "weights": "random", "steps": len(timed), "real_tokens": tokens,
        "seconds": round(seconds, 3), "real_tokens_per_s": round(tokens / seconds, 1),
        "step_ms": round(1000 * seconds / len(timed), 1), "real_tokens_per_step": round(tokens / len(timed), 1),
        "mfu": round(flops / seconds / H200_BF16_DENSE_FLOPS, 4) if cuda else None,
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None,
        "train_wall_s_with_warmup": round(wall, 1), "loss_curve": timings["losses"],
        "stack": {name: __import__(name).__version__ for name in stack},
    }
    print(json.dumps(result), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


def peer_arguments(description: str) -> argparse.ArgumentParser:
    """The work both peers run (bench/peer_unsloth.py adds its own options to it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", required=True, help="bench/speed.py's conversations (OpenAI messages)")
    parser.add_argument("--tokenizer", required=True, help="stand-in tokenizer folder")
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pack-tokens", type=int, default=3072)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=64, help="timed steps after the warm-up")
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama: checks the harness")
    return parser


def main() -> None:
    parser = peer_arguments(__doc__.splitlines()[0])
    parser.add_argument("--liger", action="store_true", help="TRL's use_liger_kernel=True")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--adapter-dtype", choices=["float32", "bfloat16"],
                        help="cast the LoRA weights to this after TRL set them up (TRL leaves them in bfloat16 for QLoRA)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
