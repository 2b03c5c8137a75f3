"""`data identity`: write identity training data and its held-out questions. (`data vqa` and
`data repeat` are the LLaVA data verbs of vqa.py, which main.py also offers here.)"""
from pathlib import Path

from xtuner_assistant.data.identity_files import DEFAULT_SAMPLES


def register(subparsers):
    parser = subparsers.add_parser("data", help="make training data")
    verbs = parser.add_subparsers(dest="data_command", required=True)
    identity = verbs.add_parser("identity", help="bilingual identity conversations + held-out questions")
    identity.add_argument("--name", required=True, help="the name the assistant gives itself")
    identity.add_argument("--author", default="", help="who made it (optional)")
    identity.add_argument("--base-model", default="", help="what it is built on, e.g. SmolLM2-135M-Instruct")
    identity.add_argument("-n", "--samples", type=int, default=DEFAULT_SAMPLES,
                          help=f"training conversations (default {DEFAULT_SAMPLES})")
    identity.add_argument("--seed", type=int, default=0)
    identity.add_argument("--languages", default="zh,en", help="comma-separated: zh,en")
    identity.add_argument("--out", default="data/identity", help="output folder (default data/identity)")
    identity.add_argument("--force", action="store_true",
                          help="replace identity files there even if xtuner-assistant did not write them")
    identity.set_defaults(run=run_identity)
    return verbs


def run_identity(args):
    from xtuner_assistant.data.identity_files import write_identity_files

    paths = write_identity_files(Path(args.out), args.name, args.author, args.base_model, args.samples,
                                 args.seed, tuple(args.languages.split(",")), args.force)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
