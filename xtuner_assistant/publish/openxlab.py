"""The OpenXLab SDK path (`publish --via openxlab`), for users who prefer the platform's own uploader
to git.

The SDK's release (openxlab 0.1.3) pins filelock~=3.14, requests~=2.28.2 and setuptools~=60.2,
which clash with our stack, so it gets a virtual environment of its own, built from the exact pins
in `openxlab-requirements.txt` by `make install` or on first use, and runs `openxlab_runner.py` there
as a subprocess. The runner gets a JSON manifest on stdin and the keys (OPENXLAB_AK, OPENXLAB_SK)
through the environment only; its HOME is a private folder deleted afterwards, because the SDK keeps
its session token under ~/.openxlab.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from xtuner_assistant.paths import home
from xtuner_assistant.publish.git_repo import REPO_NAME, Files, PublishError, display_url, redact, staging_root

REQUIREMENTS = Path(__file__).with_name("openxlab-requirements.txt")
RUNNER = Path(__file__).with_name("openxlab_runner.py")
READY = "xtuner-assistant-ready"
# OpenXLab requires a code URL for every model repo: the app repo when there is one, else the trainer.
XTUNER_CODE_URL = "https://github.com/InternLM/xtuner"
GIT_ONLY = {".gitattributes"}
KEY_VARIABLES = ("OPENXLAB_AK", "OPENXLAB_SK")
NOT_FOR_THE_SDK = ("XA_GIT_TOKEN", "XA_GIT_USERNAME")


def sdk_environment() -> Path:
    """One environment per pin set and Python version, so a changed pin builds a new one beside the old."""
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + sys.version.encode()).hexdigest()[:12]
    return home() / "openxlab-sdk" / key


def sdk_python(say=print) -> Path:
    """The SDK environment's python, built first if needed (about 15 s and 90 MB)."""
    folder = sdk_environment()
    if (folder / READY).is_file():
        return folder / "bin" / "python"
    say(f"setting up the openxlab SDK in its own environment (once, about 15 s): {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.staging-"))
    try:
        steps = [([sys.executable, "-m", "venv", str(staging)], "creating the environment"),
                 ([str(staging / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                   "-r", str(REQUIREMENTS)], "installing the pinned openxlab SDK"),
                 ([str(staging / "bin" / "python"), "-c", "import openxlab.model"], "importing the SDK")]
        for command, what in steps:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                raise PublishError(f"setting up the openxlab SDK failed while {what}:\n{tail}\n"
                                   "Check your connection to the package index and run again, or publish with git "
                                   "(drop --via openxlab).")
        (staging / READY).write_text(REQUIREMENTS.read_text())
        # A venv's python finds its packages from its own location, so the finished folder can be moved into place.
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished first
            if not (folder / READY).is_file():
                raise
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder / "bin" / "python"


def code_url_for(app_url: str | None) -> str:
    """The app repo's web address when it has one (`https://github.com/owner/name`), else XTuner's."""
    if app_url and app_url.startswith(("https://", "http://")):
        return display_url(app_url).removesuffix(".git")
    return XTUNER_CODE_URL


def upload_plan(files: Files, repo: str) -> Files:
    """What the SDK uploads: the model repo's files less the git-only ones, all at the top level."""
    if not REPO_NAME.fullmatch(repo) or ".." in repo:
        raise PublishError(f"{repo!r}: the openxlab SDK needs the repository as owner/name")
    nested = sorted(path for path in files if "/" in path)
    if nested:
        raise PublishError(f"the openxlab SDK uploads a flat list of files, and {nested[0]!r} is in a subfolder; "
                           "publish with git instead (drop --via openxlab)")
    return {path: source for path, source in files.items() if path not in GIT_ONLY}


def require_keys() -> None:
    missing = [variable for variable in KEY_VARIABLES if not os.environ.get(variable, "").strip()]
    if missing:
        raise PublishError(f"no OpenXLab keys: set {' and '.join(missing)} in the environment (your access key "
                           "and secret key from the platform's account settings)")


def manifest(repo: str, files: dict[str, Path], private: bool, code_url: str, license_name: str) -> dict:
    return {"repo": repo, "private": private, "license": license_name, "code_url": code_url,
            "task": "Text Generation", "dataset": "none",
            "files": [{"path": path, "source": str(source)} for path, source in sorted(files.items())]}


def publish_with_sdk(files: Files, repo: str, private: bool = False, code_url: str = XTUNER_CODE_URL,
                     license_name: str = "Apache-2.0", say=print) -> None:
    """Create `repo` on OpenXLab if it is not there and upload every file of `files` to it."""
    files = upload_plan(files, repo)
    require_keys()
    python = sdk_python(say)
    private_home = Path(tempfile.mkdtemp(dir=staging_root(), prefix="openxlab-"))
    try:
        sources = {}
        for path, source in files.items():
            if isinstance(source, bytes):
                target = private_home / "files" / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(source)
                source = target
            sources[path] = Path(source).resolve()
        request = json.dumps(manifest(repo, sources, private, code_url, license_name))
        env = {name: value for name, value in os.environ.items() if name not in NOT_FOR_THE_SDK}
        run_runner(python, request, {**env, "HOME": str(private_home), "TMPDIR": str(private_home)}, say)
    finally:
        shutil.rmtree(private_home, ignore_errors=True)


def run_runner(python: Path, request: str, env: dict, say) -> None:
    # -I: the SDK's python sees neither PYTHONPATH nor the user's site-packages, only its own pins.
    process = subprocess.Popen([str(python), "-I", "-X", "utf8", str(RUNNER)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, encoding="utf-8",
                               errors="replace")
    errors = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    process.stdin.write(request)
    process.stdin.close()
    for line in process.stdout:
        say(redact(line.rstrip("\n")))
    status = process.wait()
    reader.join()
    message = redact("".join(errors).strip())
    if status == 2 and message.startswith("error: "):  # the runner's own one-line explanation
        raise PublishError(message.removeprefix("error: "))
    if status != 0:
        raise PublishError(f"the openxlab SDK failed (exit status {status}): {message or 'no message'}")
    for line in message.splitlines():  # warnings of a run that succeeded
        say(line)
