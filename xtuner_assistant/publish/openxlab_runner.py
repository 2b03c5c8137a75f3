"""Upload a model to OpenXLab with the openxlab SDK. Run by the SDK's own Python (see
`openxlab.py` beside it), never imported by xtuner-assistant: the SDK's pinned dependencies clash with
ours, and for the same reason this file cannot import xtuner-assistant either.

Input: a JSON manifest on stdin,
    {"repo": "owner/name", "private": false, "license": "Apache-2.0", "code_url": "https://...",
     "task": "Text Generation", "dataset": "none",
     "files": [{"path": "config.json", "source": "/abs/path/config.json"}, ...]}
Keys: OPENXLAB_AK and OPENXLAB_SK from the environment, nowhere else.
Output: progress lines on stdout; on failure a one-line "error: ..." on stderr and exit status 2.

The SDK is driven through its client and upload helper, not `openxlab.login` / `openxlab.model.create`:
`login` writes both keys in plain text to ~/.openxlab/config.json, `create` prints its errors and
returns as if it had succeeded, and both `create` and `upload` send a usage report from a background
thread. Without a stored config the SDK reads the keys from the same
environment variables; what it still writes under ~/.openxlab (the session token, an upload-id cache)
lands in the private HOME the caller gives this process and deletes afterwards.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import requests
from openxlab.model.clients.openapi_client import OpenapiClient
from openxlab.model.common.constants import endpoint
from openxlab.model.common.meta_file_util import MetafileParser
from openxlab.model.handler.upload_file import upload_model_list
from openxlab.xlab.handler.user_token import get_jwt

KEY_VARIABLES = ("OPENXLAB_AK", "OPENXLAB_SK")
SDK_OUTPUT_LINES = 5  # the SDK's own last lines, shown when it fails


class RunnerError(Exception):
    pass


def redact(text: str) -> str:
    for variable in KEY_VARIABLES:
        key = os.environ.get(variable, "")
        if key:
            text = text.replace(key, "***")
    return text


def human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000


def read_manifest(text: str) -> dict:
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise RunnerError(f"the manifest on stdin is not JSON: {error}") from None
    repo = manifest.get("repo", "")
    if not isinstance(repo, str) or repo.count("/") != 1 or not all(repo.split("/")):
        raise RunnerError(f"manifest: repo {repo!r} must be owner/name")
    if not manifest.get("code_url"):
        raise RunnerError("manifest: code_url is empty; OpenXLab requires a code URL for every model repo")
    files = manifest.get("files") or []
    if not files:
        raise RunnerError("manifest: no files to upload")
    seen = set()
    for entry in files:
        path, source = entry.get("path", ""), Path(entry.get("source", ""))
        if not path or "/" in path or path in (".", ".."):
            raise RunnerError(f"manifest: {path!r}: the openxlab SDK uploads a flat list of files, "
                              "so each path must be a plain file name")
        if path in seen:
            raise RunnerError(f"manifest: {path!r} is listed twice")
        if not source.is_absolute() or not source.is_file():
            raise RunnerError(f"manifest: {path!r}: source {str(source)!r} is not an existing file (absolute path)")
        seen.add(path)
    return manifest


def read_keys() -> None:
    missing = [variable for variable in KEY_VARIABLES if not os.environ.get(variable, "").strip()]
    if missing:
        raise RunnerError(f"no OpenXLab keys: set {' and '.join(missing)} in the environment (your access key "
                          "and secret key from the platform's account settings)")


def metafile(manifest: dict, weights: dict[str, Path]) -> dict:
    """The repo description in the SDK's metafile form: one Models entry per file."""
    name = manifest["repo"].split("/")[1]
    result = {"Task": manifest.get("task", "Text Generation"), "Dataset": manifest.get("dataset", "none")}
    return {"Collections": [{"Name": name, "License": manifest.get("license", "Apache-2.0"),
                             "Framework": "[PyTorch]", "Code": {"URL": manifest["code_url"]}}],
            "Models": [{"Name": path, "Results": [result], "Weights": str(weights[path])} for path in weights]}


@contextlib.contextmanager
def sdk_output(step: str, when_refused: str = ""):
    """Keep the SDK's own prints (payload dumps, progress bars) off the user's screen; on an error,
    say which step failed and why, keys scrubbed. `when_refused` is added when the platform said no."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            yield
    except RunnerError:
        raise
    except Exception as error:  # whatever the SDK, requests or oss2 raise
        raise RunnerError(redact(f"{step} failed: {explain(error, captured.getvalue(), when_refused)}")) from None


def explain(error: Exception, printed: str, when_refused: str = "") -> str:
    text = str(error)
    # The SDK's API errors: "call auth error, payload: {...}, message: M" or "Create repository error:M, traceId:T"
    platform = re.search(r"message: (.*)$", text, re.S) or re.match(r"[\w ]+ error:(.*)$", text, re.S)
    if isinstance(error, ValueError) and platform:
        answer = " ".join(platform.group(1).split())
        return f"the platform answered: {answer}" + (f"; {when_refused}" if when_refused else "")
    if isinstance(error, requests.ConnectionError):
        return f"could not reach the platform ({type(error).__name__}); check the network and any proxy settings"
    # Not an answer we know: the SDK's own last lines help more than one.
    tail = [line for line in printed.splitlines() if line.strip()][-SDK_OUTPUT_LINES:]
    return f"{type(error).__name__}: {text}" + "".join(f"\n  {line}" for line in tail)


def publish(manifest: dict, say) -> None:
    # The SDK names each upload after its local file, so each source is seen through a link named as in the repo.
    links = Path(tempfile.mkdtemp(prefix="upload-"))
    try:
        weights = {}
        for entry in manifest["files"]:
            (links / entry["path"]).symlink_to(entry["source"])
            weights[entry["path"]] = links / entry["path"]
        upload(manifest, metafile(manifest, weights), say)
    finally:
        shutil.rmtree(links, ignore_errors=True)


def upload(manifest: dict, meta: dict, say) -> None:
    owner, name = manifest["repo"].split("/")
    parser = MetafileParser(None)
    parser.metafile = meta
    with sdk_output("checking the model description"):
        parser.validate()

    with sdk_output("logging in with OPENXLAB_AK / OPENXLAB_SK",
                    "check both keys (the access key and secret key from the platform's account settings)"):
        get_jwt(auth=True)
    say("logged in to OpenXLab")

    client = OpenapiClient(endpoint)
    try:
        with sdk_output(f"reading {manifest['repo']}"):
            remote = client.query_models(name)["models"]
        say(f"{manifest['repo']} exists with {len(remote)} files")
    except RunnerError as missing:  # the SDK has no "does it exist" call: an error here is taken as "no"
        try:
            with sdk_output(f"creating {manifest['repo']}"):
                client.create_repository(name, bool(manifest.get("private")), meta)
        except RunnerError as error:
            raise RunnerError(f"{error} (before that, {missing})") from None
        remote = [{"name": m["Name"], "weightName": m["Name"]} for m in meta["Models"]]
        say(f"created {manifest['repo']}" + (" (private)" if manifest.get("private") else ""))

    total = len(meta["Models"])
    for number, model in enumerate(meta["Models"], 1):
        size = human_size(Path(model["Weights"]).stat().st_size)
        say(f"uploading {number}/{total} {model['Name']} ({size})")
        known = [m for m in remote if m["name"] == model["Name"]]
        with sdk_output(f"uploading {model['Name']}"):
            upload_model_list(client, name, [model], known, domain="bucket")
    say(f"uploaded {total} files to {owner}/{name}")


def main() -> int:
    def say(line: str) -> None:
        print(redact(line), flush=True)

    try:
        manifest = read_manifest(sys.stdin.read())
        read_keys()
        publish(manifest, say)
    except RunnerError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception:  # a bug here, not a bad input: the traceback helps, with the keys scrubbed
        print(redact(traceback.format_exc()), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
