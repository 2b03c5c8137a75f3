"""`xtuner-assistant VERB ...`: each verb lives in xtuner_assistant/commands/<verb>.py and exposes
`register(subparsers)`, which adds its parser and sets `run(args) -> exit status`."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["model", "data", "train", "convert", "merge", "chat", "demo", "web", "publish", "eval", "vqa", "config"]


class UserError(Exception):
    """Bad input: printed as one clear message, no traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xtuner-assistant", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    for name in COMMANDS:
        importlib.import_module(f"xtuner_assistant.commands.{name}").register(subparsers)
    return parser


# `eval vqa ...` reads naturally but `eval` takes a model or work dir as its first argument, so the
# VQA scorer (commands/vqa.py) is reached through this alias rather than a second parser.
ALIASES = {("eval", "vqa"): ["vqa", "eval"]}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for prefix, replacement in ALIASES.items():
        if tuple(argv[:len(prefix)]) == prefix:
            argv = replacement + argv[len(prefix):]
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (UserError, ValueError, FileNotFoundError, RuntimeError) as error:
        if getattr(args, "debug", False) or type(error).__module__.startswith(("torch", "transformers")):
            raise
        print(f"xtuner-assistant {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
