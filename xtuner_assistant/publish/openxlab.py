"""The OpenXLab SDK path (`publish --via openxlab`), for users who prefer the platform's own uploader
to git. It describes the model repo in a metafile.yml and hands it to `openxlab.model.create`.

The SDK is not a dependency: its current release (openxlab 0.1.3) requires filelock~=3.14, which
conflicts with the filelock our pinned stack needs, so it is imported only here and only when
asked for. Keys come from OPENXLAB_AK / OPENXLAB_SK and go straight to `openxlab.login`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from xtuner_assistant.publish.git_repo import Files, PublishError, redact, staging_root

INSTALL_HINT = ("the openxlab SDK is not installed. It is left out of xtuner-assistant's dependencies because it pins "
                "filelock~=3.14 against ours; install it in a separate environment with `pip install openxlab`, "
                "or publish with git instead (the default: drop --via openxlab)")


def metafile(repo: str, files: list[str], license_name: str = "Apache-2.0") -> str:
    """The repo description the SDK reads: one Models entry per file to upload."""
    lines = ["Collections:", f"- Name: {repo.split('/')[-1]!r}", f"  License: {license_name!r}",
             "  Framework: '[PyTorch]'", "  Paper: {}", "  Code:", "    URL: ''", "Models:"]
    for name in files:
        lines += [f"- Name: {name!r}", "  Results:", "  - Task: 'Text Generation'", "    Dataset: 'none'",
                  f"  Weights: {name!r}"]
    return "\n".join(lines) + "\n"


def require_sdk():
    try:
        import openxlab
        from openxlab import model as openxlab_model
    except ImportError:
        raise PublishError(INSTALL_HINT) from None
    return openxlab, openxlab_model


def require_keys() -> tuple[str, str]:
    ak, sk = os.environ.get("OPENXLAB_AK", ""), os.environ.get("OPENXLAB_SK", "")
    if not ak or not sk:
        raise PublishError("no OpenXLab keys: set OPENXLAB_AK and OPENXLAB_SK in the environment (your access key "
                           "and secret key from the platform's account settings)")
    return ak, sk


def publish_with_sdk(files: Files, repo: str, private: bool = False) -> None:
    if "/" not in repo or "://" in repo:
        raise PublishError(f"{repo!r}: the openxlab SDK needs the repository as owner/name")
    openxlab, openxlab_model = require_sdk()
    ak, sk = require_keys()
    staging = Path(tempfile.mkdtemp(dir=staging_root(), prefix="openxlab-"))
    try:
        for relative, source in files.items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source) if isinstance(source, bytes) else shutil.copyfile(source, target)
        (staging / "metafile.yml").write_text(metafile(repo, [n for n in files if n != ".gitattributes"]))
        previous = os.getcwd()
        os.chdir(staging)  # the SDK resolves the metafile's Weights paths against the working directory
        try:
            openxlab.login(ak=ak, sk=sk, relogin=True)
            openxlab_model.create(repo, source="metafile.yml", private=private)
        except Exception as error:  # the SDK's own errors, with any key scrubbed from the text
            raise PublishError(f"the openxlab SDK failed: {redact(str(error))}") from None
        finally:
            with contextlib.suppress(OSError):
                os.chdir(previous)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
