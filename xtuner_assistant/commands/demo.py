"""`demo`: the whole job on the embedded default model (what `make demo` runs)."""
from pathlib import Path


def register(subparsers):
    parser = subparsers.add_parser("demo", help="fetch -> identity data -> train -> convert -> merge -> compare")
    parser.add_argument("--name", default="小菜鸡", help="the assistant's new name (default 小菜鸡)")
    parser.add_argument("--author", default="", help="who made it (optional)")
    parser.add_argument("--model", default="smollm2-135m", help="packaged model (see `model list`)")
    parser.add_argument("--work-dir", default="work_dirs/demo")
    parser.add_argument("--set", dest="settings", action="append", metavar="NAME=VALUE",
                        help="override a training setting, e.g. --set max_epochs=1")
    parser.set_defaults(run=run)


def run(args):
    from xtuner_assistant.demo import run_demo
    from xtuner_assistant.xtuner_tools import parse_settings

    run_demo(args.name, args.author, args.model, Path(args.work_dir), settings=parse_settings(args.settings))
    return 0
