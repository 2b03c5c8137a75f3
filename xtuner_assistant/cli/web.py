"""`web [MODEL] [--compare BASE]`: the Streamlit page (serve/web.py). Chat: the fine-tuned model beside
another model (usually its base); a LLaVA model (a `vqa convert` folder) gets an image uploader.
Train: start `train` from the browser and watch identity and leakage while it trains."""
from __future__ import annotations

from xtuner_assistant.cli.errors import UserError


def register(subparsers):
    parser = subparsers.add_parser("web", help="chat in the browser side by side with the base model, or train "
                                               "and watch a run")
    parser.add_argument("model", nargs="?", help="merged model folder, a LoRA adapter folder, or a LLaVA folder "
                                                 "(`vqa convert`); without it the page opens for training")
    parser.add_argument("--compare", metavar="MODEL", help="a second model answering the same questions "
                                                           "(usually the base model)")
    parser.add_argument("--base", help="base model for an adapter folder")
    parser.add_argument("--runs", default="work_dirs", help="folder of the Train page's runs (default work_dirs)")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to let other machines connect (the page "
                                                           "has no login: anyone who reaches it can train)")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.set_defaults(run=run)


def run(args):
    from xtuner_assistant.llava.image_chat import is_llava_model
    from xtuner_assistant.models.generation import ModelPathError, check_model_dir
    from xtuner_assistant.serve.web import exec_streamlit, streamlit_command, web_app

    if args.compare and not args.model:
        raise UserError("--compare: give MODEL too (the model to compare with)")
    if args.base and args.model and is_llava_model(args.model):
        raise UserError(f"--base: {args.model} is a LLaVA folder, which names its LLM in xtuner_config.py; "
                        "--base is only for a LoRA adapter folder")
    for what, path in (("MODEL", args.model), ("--compare", args.compare), ("--base", args.base)):
        if path and not is_llava_model(path):
            try:
                check_model_dir(path)
            except ModelPathError as error:
                raise UserError(f"{what}: {error}") from None
    if not web_app().is_file():
        raise UserError(f"{web_app()}: the web page is missing from this installation; reinstall xtuner-assistant")
    print(f"Open http://{'localhost' if args.host in ('127.0.0.1', '0.0.0.0') else args.host}:{args.port} "
          "in a browser (Ctrl-C stops the page).", flush=True)
    exec_streamlit(streamlit_command(args.model, args.compare, args.base, args.host, args.port,
                                     args.max_new_tokens, args.runs))
    return 0  # reached only when exec_streamlit is replaced (tests)
