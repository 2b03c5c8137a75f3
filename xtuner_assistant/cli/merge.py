"""`merge ADAPTER --out DIR`: fold the LoRA adapter into the base, checked against base+adapter."""
from pathlib import Path


def register(subparsers):
    parser = subparsers.add_parser("merge", help="LoRA adapter + base -> one checked model folder")
    parser.add_argument("adapter")
    parser.add_argument("--base", help="base model folder (default: the one the adapter names)")
    parser.add_argument("--out", required=True, help="merged model folder")
    parser.add_argument("--force", action="store_true", help="replace --out even if xtuner-assistant did not write "
                                                             "it (never the adapter, the base model or the model cache)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed logit difference")
    parser.add_argument("--quantized-reference", action="store_true",
                        help="after QLoRA (CUDA): also report the gap to the adapter on the nf4-quantized base")
    parser.set_defaults(run=run)


def run(args):
    from xtuner_assistant.training.export import merge_adapter

    check = merge_adapter(Path(args.adapter), Path(args.out), args.base, args.tolerance, args.quantized_reference,
                         args.force)
    print(f"largest logit difference {check['largest_logit_difference']:.2e} (tolerance {check['tolerance']})")
    if "qlora" in check:
        gap = check["qlora"]
        print(f"quantized reference: merged vs adapter on the nf4 base {gap['merged_vs_adapter_on_nf4_base']:.3g}; "
              f"nf4 base vs full base {gap['nf4_base_vs_full_base']:.3g}")
    print(f"merged model: {args.out}")
    return 0
