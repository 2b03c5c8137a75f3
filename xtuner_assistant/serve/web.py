"""The web page: `streamlit run` on the page that ships inside the package (xtuner_assistant/web/app.py
once installed; web/app.py in the source tree), with a Chat page (web/chat.py) and a Train page
(web/train.py). The command line of `xtuner-assistant web` reaches both pages as the page arguments."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from xtuner_assistant.paths import shipped

DEFAULT_RUNS = "work_dirs"


def web_app() -> Path:
    return shipped("web") / "app.py"


def page_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="web/app.py")
    parser.add_argument("--model", help="merged model folder, a LoRA adapter folder, or a LLaVA folder")
    parser.add_argument("--base", help="base model for an adapter folder")
    parser.add_argument("--compare", help="a second model answering the same questions (usually the base)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="where the Train page keeps its training runs")
    return parser.parse_args(argv)


def streamlit_command(model=None, compare=None, base=None, host="127.0.0.1", port=8501, max_new_tokens=256,
                      runs=DEFAULT_RUNS) -> list[str]:
    """The exact `streamlit run` command line `xtuner-assistant web` runs (the browser tests start the same)."""
    page_args = ["--max-new-tokens", str(max_new_tokens), "--runs", str(runs)]
    if model:
        page_args += ["--model", str(model)]
    if base:
        page_args += ["--base", str(base)]
    if compare:
        page_args += ["--compare", str(compare)]
    return [sys.executable, "-m", "streamlit", "run", str(web_app()),
            "--server.headless", "true", "--server.address", host, "--server.port", str(port),
            # No usage statistics and no file watcher: the page should not reach out or reload itself.
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "viewer",
            "--", *page_args]


def exec_streamlit(command: list[str]) -> None:
    """Become the Streamlit server (exec, not a child): a signal to `xtuner-assistant web` reaches the
    server itself, so stopping the command always stops the page, with no server left behind."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def model_label(path: str | Path) -> str:
    """What a column is called: a packaged model's name, else the folder's name (its parent's too when
    the folder has a generic name such as `merged`)."""
    path = Path(path)
    try:
        recorded = json.loads((path / "xtuner_assistant_model.json").read_text(encoding="utf-8"))
        if recorded.get("display_name"):
            return str(recorded["display_name"])
    except (OSError, ValueError):
        pass
    resolved = path.resolve()
    if resolved.name in ("merged", "model", "hf", "hf_adapter", "final_model", "llava") and resolved.parent.name:
        return f"{resolved.parent.name}/{resolved.name}"
    return resolved.name or str(path)
