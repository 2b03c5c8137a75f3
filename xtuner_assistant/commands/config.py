"""`config list [-p PATTERN]` and `config copy NAME DIR`: XTuner's list-cfg / copy-cfg for our configs.

A copy brings the `_base_` files it inherits, so the copied config runs from its new folder."""
from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

from xtuner_assistant.cli import UserError


def shipped_config_dir() -> Path:
    import xtuner_assistant

    folder = Path(xtuner_assistant.__file__).resolve().parent.parent / "configs"
    if not folder.is_dir():
        raise UserError(f"{folder}: the shipped configs are not there; install xtuner-assistant from its "
                        "source folder (pip install -e .) so configs/ sits beside the package")
    return folder


def shipped_configs() -> dict[str, Path]:
    return {path.stem: path for path in sorted(shipped_config_dir().glob("*.py"))}


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


def register(subparsers):
    parser = subparsers.add_parser("config", help="list or copy the shipped training configs")
    verbs = parser.add_subparsers(dest="config_command", required=True)
    listing = verbs.add_parser("list", help="the shipped configs (like xtuner list-cfg)")
    listing.add_argument("-p", "--pattern", default="", help="only names containing this text")
    listing.set_defaults(run=run_list)
    copy = verbs.add_parser("copy", help="copy a config and its _base_ files (like xtuner copy-cfg)")
    copy.add_argument("name", help="a name from `xtuner-assistant config list`")
    copy.add_argument("save_dir", help="folder to copy into (made if missing)")
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
    target = save_dir / f"{source.stem}_copy{source.suffix}"
    root = shipped_config_dir()
    bases = [(base, save_dir / base.relative_to(root)) for base in base_files(source)]
    for base, copied in bases:
        if copied.exists() and not filecmp.cmp(base, copied, shallow=False):
            raise UserError(f"{copied} exists and differs from the shipped {base.name}; "
                            "copy into another folder, or move that file away")
    for base, copied in bases:
        copied.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base, copied)
    save_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    print(f"Copy to {target}")
    return 0
