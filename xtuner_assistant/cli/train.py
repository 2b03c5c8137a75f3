"""`train CONFIG`: `xtuner train` with settings from the command line and the real exit status."""
from pathlib import Path

from xtuner_assistant.cli.errors import UserError


def register(subparsers):
    parser = subparsers.add_parser("train", help="xtuner train, returning its real exit status")
    parser.add_argument("config", help="a config file (`xtuner-assistant config list`, `config copy`)")
    parser.add_argument("--work-dir", help="where checkpoints and logs go (default work_dirs/<config>)")
    parser.add_argument("--set", dest="settings", action="append", metavar="NAME=VALUE",
                        help="override a setting of the config's PART 1, e.g. --set name=Alice (repeatable)")
    parser.add_argument("--model", help="shortcut for --set model=PATH (a model folder, or a name of `model list`)")
    parser.add_argument("--deepspeed", help="deepspeed config name or file, e.g. deepspeed_zero2")
    parser.add_argument("--resume", action="store_true",
                        help="resume from the work dir's newest checkpoint that loads")
    parser.set_defaults(run=run)


def run(args):
    from xtuner_assistant.training.settings import check_training_inputs, parse_settings
    from xtuner_assistant.training.xtuner_tools import train_run

    config = Path(args.config)
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no such config file (`xtuner-assistant config list` names the "
                                "shipped ones; `config copy NAME DIR` puts one where you can edit it)")
    settings = parse_settings(args.settings)
    if args.model:
        settings["model"] = args.model
    work_dir = Path(args.work_dir or Path("work_dirs") / config.stem)
    if work_dir.exists() and not work_dir.is_dir():
        raise UserError(f"--work-dir {work_dir}: is a file, not a folder; choose another work dir")
    settings = check_training_inputs(config, settings)
    extra = ["--deepspeed", args.deepspeed] if args.deepspeed else []
    return train_run(config, work_dir, settings, resume=args.resume, extra_args=extra)
