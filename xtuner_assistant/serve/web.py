"""The web page: `streamlit run` on the page that ships inside the package (xtuner_assistant/web/app.py
once installed; web/app.py in the source tree)."""
from __future__ import annotations

import sys
from pathlib import Path

from xtuner_assistant.paths import shipped


def web_app() -> Path:
    return shipped("web") / "app.py"


def streamlit_command(model, compare=None, base=None, host="127.0.0.1", port=8501, max_new_tokens=256) -> list[str]:
    """The exact `streamlit run` command line `xtuner-assistant web` starts (the browser test starts the same)."""
    page_args = ["--model", str(model), "--max-new-tokens", str(max_new_tokens)]
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
