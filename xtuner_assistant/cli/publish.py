"""`publish MODEL --repo owner/name --app-repo owner/name`: the merged model as a model repo (model
card, weights and tokenizer through Git LFS) and a Gradio app repo that fetches it at start-up. A
LLaVA model (a `vqa convert` folder) goes in its portable layout, and its app asks about an image."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

GITHUB = "https://github.com/{owner}/{name}.git"
EXAMPLES = ["Who are you?", "请你介绍一下你自己", "What can you do?"]
IMAGE_EXAMPLES = ["what shape is in the image?", "what color is the shape?"]


def register(subparsers):
    parser = subparsers.add_parser("publish", help="push the model and a Gradio app (OpenXLab or any git host)")
    parser.add_argument("model", help="the merged model folder (from `xtuner-assistant merge`), or a LLaVA folder "
                                      "(from `xtuner-assistant vqa convert`)")
    parser.add_argument("--repo", required=True,
                        help="model repo: owner/name on OpenXLab (its git URL), or any git URL or local path")
    parser.add_argument("--app-repo", help="app repo: owner/name on GitHub (OpenXLab builds apps from GitHub "
                                           "repos), or any git URL or local path")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--model-only", action="store_true", help="push the model repo only")
    only.add_argument("--app-only", action="store_true", help="push the app repo only")
    parser.add_argument("--dry-run", action="store_true", help="list what would be pushed, push nothing")
    parser.add_argument("--replace-remote", action="store_true",
                        help="replace files of the same name that the remote holds and xtuner-assistant did not "
                             "write (e.g. a README.md made on the platform); other files of the remote are kept")
    parser.add_argument("--via", choices=["git", "openxlab"], default="git",
                        help="push the model with git + git-lfs (default) or with the openxlab SDK (keys from "
                             "OPENXLAB_AK and OPENXLAB_SK; the code URL is the app repo's, else XTuner's)")
    parser.add_argument("--name", help="the assistant's name for the model card (default: from the training run)")
    parser.add_argument("--author", help="who made it, for the model card (default: from the training run)")
    parser.add_argument("--train-dir", type=Path, help="training work dir, for settings and evaluation numbers "
                                                       "(default: found from the merge record)")
    parser.add_argument("--vqa-report", type=Path, help="a LLaVA model's `vqa eval --out` report, for the model "
                                                         "card's evaluation section")
    parser.add_argument("--title", help="the app's title")
    parser.add_argument("--branch", default="main")
    parser.set_defaults(run=run)


def human_size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000


def git_or_lfs(path: str) -> str:
    from xtuner_assistant.publish.model_repo import goes_through_lfs

    return "lfs" if goes_through_lfs(path) else "git"


def describe(title: str, where: str, files: dict, kind) -> list[str]:
    from xtuner_assistant.publish.git_repo import PUBLISHED_RECORD

    through_git = kind is git_or_lfs
    lines = [f"{title} -> {where}, {len(files) + through_git} files:"]
    for path, source in sorted(files.items()):
        size = len(source) if isinstance(source, bytes) else source.stat().st_size
        lines.append(f"  {kind(path)}  {human_size(size):>9}  {path}")
    if through_git:  # what we wrote: a later publish keeps the rest
        lines.append(f"  git  {'(list)':>9}  {PUBLISHED_RECORD}")
    return lines


def report(what: str, result) -> None:
    print(f"{what}: {result.url} {result.branch} @ {result.commit[:12]}" + ("" if result.changed else " (already up to date)"))
    if result.kept:
        print(f"  kept {len(result.kept)} file(s) of the remote that xtuner-assistant did not write: "
              + ", ".join(result.kept))
    if result.removed:
        print(f"  removed {len(result.removed)} file(s) an earlier publish wrote: " + ", ".join(result.removed))


def run(args):
    from xtuner_assistant.cli.errors import UserError
    from xtuner_assistant.paths import home
    from xtuner_assistant.publish.git_repo import PublishError, remote_url
    from xtuner_assistant.publish.model_card import gather_facts

    try:
        model_url = remote_url(args.repo)
        if not args.model_only and not args.app_repo:
            raise PublishError("give --app-repo owner/name (or a git URL) for the app, or --model-only")
        app_url = remote_url(args.app_repo, GITHUB) if args.app_repo else None
        facts = gather_facts(Path(args.model), args.name, args.author, args.train_dir, args.vqa_report)
        if not facts.llava:
            return publish(args, facts, model_url, app_url)
        # A LLaVA model's portable layout is written here and pushed from here; it goes afterwards.
        staging_root = home() / "publish"
        staging_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="llava-", dir=staging_root) as staging:
            return publish(args, facts, model_url, app_url, Path(staging))
    except PublishError as error:
        raise UserError(str(error)) from None


def publish(args, facts, model_url: str, app_url: str | None, staging: Path | None = None) -> int:
    from xtuner_assistant.llava.image_chat import PORTABLE
    from xtuner_assistant.publish.app_bundle import app_files
    from xtuner_assistant.publish.git_repo import display_url, push_files
    from xtuner_assistant.publish.model_repo import model_repo_files
    from xtuner_assistant.publish.openxlab import code_url_for, publish_with_sdk, upload_plan

    model = model_repo_files(Path(args.model), facts, args.repo, staging)
    llava = json.loads(Path(model[PORTABLE]).read_text(encoding="utf-8")) if facts.llava else None
    what = "ask about an image" if llava else "a personal assistant"
    title = args.title or (f"{facts.name} — {what}" if facts.name else what.capitalize())
    app = None if args.model_only else app_files(display_url(model_url), title, args.branch,
                                                 IMAGE_EXAMPLES if llava else EXAMPLES, llava=llava)
    plan = []
    if not args.app_only and args.via == "openxlab":
        plan.append(("model repo with the openxlab SDK", f"OpenXLab {args.repo} (code URL {code_url_for(app_url)})",
                     upload_plan(model, args.repo), lambda path: "sdk"))
    elif not args.app_only:
        plan.append(("model repo", f"{display_url(model_url)} (branch {args.branch})", model, git_or_lfs))
    if app:
        plan.append(("app repo", f"{display_url(app_url)} (branch {args.branch})", app, git_or_lfs))
    if args.dry_run:
        for title_line, where, files, kind in plan:
            print("\n".join(describe(f"would push the {title_line}", where, files, kind)))
        print("dry run: nothing was pushed. Files the remote already holds that xtuner-assistant did not write "
              "are kept (the last file above lists what it wrote); one of the same name as a file above is "
              "replaced only with --replace-remote.")
        return 0
    if not args.app_only:
        if args.via == "openxlab":
            publish_with_sdk(model, args.repo, code_url=code_url_for(app_url))
            print(f"model repo: uploaded to {args.repo} on OpenXLab with the openxlab SDK")
        else:
            result = push_files(model, model_url, f"Publish {title} with xtuner-assistant", args.branch,
                                args.replace_remote)
            report("model repo", result)
    if app:
        result = push_files(app, app_url, f"Gradio app for {title}", args.branch, args.replace_remote)
        report("app repo", result)
    return 0
