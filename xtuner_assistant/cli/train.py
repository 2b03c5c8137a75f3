"""`train CONFIG`: `xtuner train` with settings from the command line and the real exit status."""
from pathlib import Path


def register(subparsers):
    parser = subparsers.add_parser("train", help="xtuner train, returning its real exit status")
    parser.add_argument("config", help="a config file (`xtuner-assistant config list`, `config copy`)")
    parser.add_argument("--work-dir", help="where checkpoints and logs go (default work_dirs/<config>)")
    parser.add_argument("--set", dest="settings", action="append", metavar="NAME=VALUE",
                        help="override a setting of the config's PART 1, e.g. --set name=Alice (repeatable)")
    parser.add_argument("--model", help="shortcut for --set model=PATH")
    parser.add_argument("--deepspeed", help="deepspeed config name or file, e.g. deepspeed_zero2")
    parser.add_argument("--resume", action="store_true", help="resume from the work dir's last checkpoint")
    parser.set_defaults(run=run)


def run(args):
    from xtuner_assistant.training.settings import check_settings, parse_settings
    from xtuner_assistant.training.xtuner_tools import run_tool

    config = Path(args.config)
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no such config file (`xtuner-assistant config list` names the "
                                "shipped ones; `config copy NAME DIR` puts one where you can edit it)")
    settings = parse_settings(args.settings)
    if args.model:
        settings["model"] = args.model
    check_settings(config, settings)
    extra = []
    work_dir = Path(args.work_dir or Path("work_dirs") / config.stem)
    extra += ["--work-dir", str(work_dir)]
    if args.deepspeed:
        extra += ["--deepspeed", args.deepspeed]
    if args.resume:
        from xtuner_assistant.training.work_dir import last_checkpoint

        last_checkpoint(work_dir)  # a clear error when there is nothing to resume from
        # mmengine's own auto-resume (work_dir/last_checkpoint), not xtuner's `--resume PATH`, which
        # reads the seed with a bare torch.load that torch >= 2.6 refuses for these checkpoints.
        extra += ["--cfg-options", "resume=True"]
    return run_tool("train", [str(config), *extra], settings)
