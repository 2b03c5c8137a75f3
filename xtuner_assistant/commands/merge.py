"""`merge ADAPTER --out DIR`: fold the LoRA adapter into the base, checked against base+adapter."""
from pathlib import Path


def register(subparsers):
    parser = subparsers.add_parser("merge", help="LoRA adapter + base -> one checked model folder")
    parser.add_argument("adapter")
    parser.add_argument("--base", help="base model folder (default: the one the adapter names)")
    parser.add_argument("--out", required=True, help="merged model folder")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed logit difference")
    parser.set_defaults(run=run)


def run(args):
    from xtuner_assistant.convert import merge_adapter

    check = merge_adapter(Path(args.adapter), Path(args.out), args.base, args.tolerance)
    print(f"largest logit difference {check['largest_logit_difference']:.2e} (tolerance {check['tolerance']})")
    print(f"merged model: {args.out}")
    return 0
