"""`config list [-p PATTERN]` and `config copy NAME DIR`: XTuner's list-cfg / copy-cfg for our configs.

A copy brings the `_base_` files it inherits into DIR/_base_/, with their `_base_` lines pointed
there, so the copied config runs from its new folder."""
from __future__ import annotations

import re
from pathlib import Path

from xtuner_assistant.cli.errors import UserError
from xtuner_assistant.paths import shipped, write_text_atomic


def shipped_configs() -> dict[str, Path]:
    """name -> file, for every config under configs/ (LLaVA ones included), bases left out."""
    root = shipped("configs")
    found = [path for path in root.rglob("*.py") if path.name != "__init__.py"
             and not {"_base_", "__pycache__"} & set(path.relative_to(root).parts)]
    return {path.stem: path for path in sorted(found, key=lambda path: path.stem)}


def base_files(config: Path) -> list[Path]:
    """The `_base_` files a config inherits, transitively (mmengine reads `_base_` paths relative
    to the file that names them)."""
    from mmengine.config import Config

    found: list[Path] = []
    pending = [config]
    while pending:
        current = pending.pop()
        for relative in Config._get_base_files(str(current)):
            base = (current.parent / relative).resolve()
            if base not in found:
                found.append(base)
                pending.append(base)
    return found


def with_bases_in(text: str, folder: str) -> str:
    """The `_base_ = [...]` line of a config, with each inherited file named as `folder/<file name>`."""
    def point(match):
        return re.sub(r"(['\"])([^'\"]+)\1", lambda q: f"{q[1]}{folder}/{Path(q[2]).name}{q[1]}", match[0])

    return re.sub(r"^_base_\s*=\s*\[[^\]]*\]", point, text, count=1, flags=re.M)


def register(subparsers):
    parser = subparsers.add_parser("config", help="list or copy the shipped training configs")
    verbs = parser.add_subparsers(dest="config_command", required=True)
    listing = verbs.add_parser("list", help="the shipped configs (like xtuner list-cfg)")
    listing.add_argument("-p", "--pattern", default="", help="only names containing this text")
    listing.set_defaults(run=run_list)
    copy = verbs.add_parser("copy", help="copy a config and its _base_ files (like xtuner copy-cfg)")
    copy.add_argument("name", help="a name from `xtuner-assistant config list`")
    copy.add_argument("save_dir", help="folder to copy into (made if missing)")
    copy.add_argument("--force", action="store_true", help="replace an earlier copy there, even one you edited")
    copy.set_defaults(run=run_copy)


def run_list(args):
    names = [name for name in shipped_configs() if args.pattern.lower() in name.lower()]
    print("==========================CONFIGS===========================")
    for name in names:
        print(name)
    print("=============================================================")
    return 0


def run_copy(args):
    configs = shipped_configs()
    if args.name not in configs:
        raise UserError(f"no shipped config named {args.name!r}; the names are: {', '.join(configs)}")
    source = configs[args.name]
    save_dir = Path(args.save_dir)
    copies = [(source, save_dir / f"{source.stem}_copy{source.suffix}", "./_base_")]
    copies += [(base, save_dir / "_base_" / base.name, ".") for base in base_files(source)]
    if save_dir.exists() and not save_dir.is_dir():
        raise UserError(f"{save_dir}: is a file, not a folder; give a folder to copy into")
    for original, target, folder in copies:
        text = with_bases_in(original.read_text(encoding="utf-8"), folder)
        if target.is_dir() or (not args.force and target.exists() and target.read_bytes() != text.encode("utf-8")):
            raise UserError(f"{target}: exists and differs from the shipped {original.name} (an edited copy?); "
                            "copy into another folder, or add --force to replace it")
    for original, target, folder in copies:
        write_text_atomic(target, with_bases_in(original.read_text(encoding="utf-8"), folder))
    print(f"Copy to {copies[0][1]}")
    return 0
