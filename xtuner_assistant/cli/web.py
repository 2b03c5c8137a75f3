"""`web MODEL [--compare BASE]`: the Streamlit chat page (web/app.py), the fine-tuned model beside
the base model; a LLaVA model (a `vqa convert` folder) gets an image uploader."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WEB_APP = Path(__file__).resolve().parents[2] / "web" / "app.py"


def register(subparsers):
    parser = subparsers.add_parser("web", help="chat in the browser, side by side with the base model")
    parser.add_argument("model", help="merged model folder, a LoRA adapter folder, or a LLaVA folder (`vqa convert`)")
    parser.add_argument("--compare", metavar="BASE", help="a second model answering the same questions "
                                                          "(usually the base model)")
    parser.add_argument("--base", help="base model for an adapter folder")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let other machines connect")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.set_defaults(run=run)


def streamlit_command(model, compare=None, base=None, host="127.0.0.1", port=8501, max_new_tokens=256) -> list[str]:
    """The exact `streamlit run` command line the verb starts (the browser test starts the same)."""
    page_args = ["--model", str(model), "--max-new-tokens", str(max_new_tokens)]
    if base:
        page_args += ["--base", str(base)]
    if compare:
        page_args += ["--compare", str(compare)]
    return [sys.executable, "-m", "streamlit", "run", str(WEB_APP),
            "--server.headless", "true", "--server.address", host, "--server.port", str(port),
            # No usage statistics and no file watcher: the page should not reach out or reload itself.
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "viewer",
            "--", *page_args]


def run(args):
    from xtuner_assistant.cli import UserError
    from xtuner_assistant.generation import ModelPathError, check_model_dir
    from xtuner_assistant.image_chat import is_llava_model

    if args.base and is_llava_model(args.model):
        raise UserError(f"--base: {args.model} is a LLaVA folder, which names its LLM in xtuner_config.py; "
                        "--base is only for a LoRA adapter folder")
    for what, path in (("MODEL", args.model), ("--compare", args.compare), ("--base", args.base)):
        if path and not is_llava_model(path):
            try:
                check_model_dir(path)
            except ModelPathError as error:
                raise UserError(f"{what}: {error}") from None
    if not WEB_APP.is_file():
        raise UserError(f"{WEB_APP}: the web page is missing; reinstall xtuner-assistant from its source "
                        "checkout (`pip install -e .`), which keeps web/ beside the package")
    print(f"Open http://{'localhost' if args.host in ('127.0.0.1', '0.0.0.0') else args.host}:{args.port} "
          "in a browser (Ctrl-C stops the page).", flush=True)
    return subprocess.call(streamlit_command(args.model, args.compare, args.base, args.host, args.port,
                                             args.max_new_tokens))
