"""`convert WORK_DIR`: a checkpoint of a work dir -> a LoRA adapter folder (XTuner pth_to_hf)."""
from pathlib import Path


def register(subparsers):
    parser = subparsers.add_parser("convert", help="checkpoint -> LoRA adapter (xtuner pth_to_hf)")
    parser.add_argument("work_dir")
    parser.add_argument("--checkpoint", help="iter_N.pth, `best` or `last` (default: the evaluation hook's best "
                                                 "checkpoint when the run kept one, else the last)")
    parser.add_argument("--out", help="adapter folder (default WORK_DIR/hf_adapter)")
    parser.add_argument("--force", action="store_true", help="replace --out even if xtuner-assistant did not write "
                                                             "it (never the work dir, a base model or the model cache)")
    parser.set_defaults(run=run)


def run(args):
    from xtuner_assistant.training.export import checkpoint_to_adapter

    out = Path(args.out or Path(args.work_dir) / "hf_adapter")
    print(checkpoint_to_adapter(Path(args.work_dir), out, args.checkpoint, args.force))
    return 0
