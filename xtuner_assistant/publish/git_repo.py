"""Push a set of files to a git remote as one commit, large files through Git LFS.

The commit is built in a throw-away staging clone, never in the user's folders, which are only
read. A publish that fails half way (a rejected push, a dropped connection) leaves the remote as
it was or with some LFS objects already uploaded; running the same command again starts from what
the remote holds and finishes the job.

Files the remote already holds are kept unless an earlier publish wrote them and nobody changed
them since (the repo's `.xtuner-assistant-published.json` lists what we wrote, with git's blob ids);
a file of ours that is gone from the new set is removed, and replacing a file we did not write
(a README.md made on the platform) needs `replace_remote`, after saying which. A .gitattributes
we did not write is kept and our Git LFS lines are added to it.

Credentials: a token in XA_GIT_TOKEN (with XA_GIT_USERNAME) reaches git only through a credential
helper that reads the environment, so the secret is never written to a file, a URL, a command
line or a commit. Without it, git's own credential helper is used. Whatever git prints passes
through `redact` before the user sees it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from xtuner_assistant.paths import home

SECRET_VARIABLES = ("XA_GIT_TOKEN", "OPENXLAB_AK", "OPENXLAB_SK")
OPENXLAB_GIT = "https://code.openxlab.org.cn/{owner}/{name}.git"
REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# The helper prints the token from the environment when git asks; the token itself appears nowhere.
ENVIRONMENT_CREDENTIAL_HELPER = ('!f() { test "$1" = get || exit 0; '
                                 'echo "username=${XA_GIT_USERNAME:-git}"; echo "password=${XA_GIT_TOKEN}"; }; f')

PROGRESS = re.compile(r"(Enumerating|Counting|Compressing|Writing|Total|Delta|Uploading LFS|remote: (Counting|Compressing))")
Files = dict  # path inside the repo -> Path of a file to copy, or bytes to write


class PublishError(RuntimeError):
    pass


def redact(text: str) -> str:
    for variable in SECRET_VARIABLES:
        secret = os.environ.get(variable, "")
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def remote_url(repo: str, template: str = OPENXLAB_GIT) -> str:
    """`owner/name` -> the platform's git URL; a URL or a local path is taken as it is."""
    if "://" in repo or repo.startswith(("/", ".", "~")) or re.fullmatch(r"[^/@]+@[^:]+:.+", repo):
        url = os.path.expanduser(repo)
        parts = urlsplit(url) if "://" in url else None
        if parts is not None and parts.password:
            raise PublishError("the repository URL holds a password or token; remove it from the URL and put the "
                               "token in the XA_GIT_TOKEN environment variable instead (never on the command line)")
        return url
    if not REPO_NAME.fullmatch(repo) or ".." in repo:
        raise PublishError(f"{repo!r} is not a repository name: use owner/name (letters, digits, '-', '_', '.'), "
                           "or a git URL such as https://host/owner/name.git or a local path")
    owner, name = repo.split("/")
    return template.format(owner=owner, name=name.removesuffix(".git"))


def display_url(url: str) -> str:
    """The URL without any user name, for messages."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()


def git_environment() -> dict:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_LFS_SKIP_SMUDGE": "1", "GCM_INTERACTIVE": "never"}
    if env.get("XA_GIT_TOKEN"):
        count = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
        # An empty helper first drops the user's helpers, so the environment's token is the one used.
        for offset, value in enumerate(("", ENVIRONMENT_CREDENTIAL_HELPER)):
            env[f"GIT_CONFIG_KEY_{count + offset}"] = "credential.helper"
            env[f"GIT_CONFIG_VALUE_{count + offset}"] = value
        env["GIT_CONFIG_COUNT"] = str(count + 2)
    return env


def require_tools() -> None:
    if shutil.which("git") is None:
        raise PublishError("git is not installed; install it (e.g. `apt-get install git`) and run again")
    if subprocess.run(["git", "lfs", "version"], capture_output=True).returncode != 0:
        raise PublishError("Git LFS is not installed, and the weights must go through it: install it "
                           "(`apt-get install git-lfs`, or see git-lfs.com) and run again")


def require_credentials(url: str, env: dict) -> None:
    if urlsplit(url).scheme not in ("http", "https") or env.get("XA_GIT_TOKEN"):
        return
    helpers = subprocess.run(["git", "config", "--get-all", "credential.helper"], capture_output=True,
                             text=True, env=env).stdout.strip()
    if not helpers:
        raise PublishError(f"no credentials for {display_url(url)}: set XA_GIT_USERNAME and XA_GIT_TOKEN (an access "
                           "token from your account settings on the platform) in the environment, or configure "
                           "a git credential helper (`git config --global credential.helper store`, then push "
                           "once by hand)")


def run_git(args: list[str], cwd: Path, env: dict, what: str, show_progress: bool = False) -> str:
    """Run git; its output is redacted, and shown live when `show_progress` (LFS uploads take a while)."""
    process = subprocess.Popen(["git", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, pending = [], b""
    while chunk := process.stdout.read1(4096):
        pending += chunk
        # Emit only whole lines (git ends progress lines with \r), so a secret is never split in two.
        cut = max(pending.rfind(b"\n"), pending.rfind(b"\r"))
        if cut >= 0:
            text = redact(pending[:cut + 1].decode("utf-8", "replace"))
            pending = pending[cut + 1:]
            output.append(text)
            if show_progress:
                sys.stderr.write(text)
                sys.stderr.flush()
    if pending:
        output.append(redact(pending.decode("utf-8", "replace")))
    status = process.wait()
    text = "".join(output)
    if status != 0:
        lines = [line for line in re.split(r"[\r\n]+", text) if line.strip() and not PROGRESS.match(line)]
        tail = "\n".join(lines)[-1500:]
        if re.search(r"Authentication failed|could not read Username|terminal prompts disabled|403", tail):
            tail += ("\nThe remote refused the credentials: set XA_GIT_USERNAME and XA_GIT_TOKEN to an account "
                     "with write access, or fix your git credential helper.")
        raise PublishError(f"{what} failed (git exit status {status}):\n{tail}")
    return text


PUBLISHED_RECORD = ".xtuner-assistant-published.json"


@dataclass
class PushResult:
    url: str
    branch: str
    commit: str
    changed: bool
    kept: list = field(default_factory=list)  # files of the remote we did not write, left as they were
    removed: list = field(default_factory=list)  # files an earlier publish wrote that the new set lacks


def staging_root() -> Path:
    root = home() / "publish"
    root.mkdir(parents=True, exist_ok=True)
    return root


def tracked_blobs(staging: Path, env: dict) -> dict[str, str]:
    """path -> git blob id of every file the checked-out commit (or the index) holds."""
    listing = run_git(["ls-files", "-s", "-z"], staging, env, "git ls-files")
    blobs = {}
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        blobs[path] = meta.split()[1]
    return blobs


def published_by_us(staging: Path, blobs: dict[str, str]) -> set[str]:
    """The files an earlier publish wrote and nobody changed since."""
    try:
        record = json.loads((staging / PUBLISHED_RECORD).read_text(encoding="utf-8"))
        written = record["files"] if isinstance(record.get("files"), dict) else {}
    except (OSError, ValueError, KeyError, AttributeError):
        return set()
    return {path for path, blob in written.items() if blobs.get(path) == blob}


def merged_gitattributes(theirs: str, ours: str) -> str:
    """Their .gitattributes with our lines added at the end (what they track stays tracked)."""
    have = {line.strip() for line in theirs.splitlines()}
    extra = [line for line in ours.splitlines() if line.strip() and line.strip() not in have]
    return theirs + ("" if not extra or theirs.endswith("\n") or not theirs else "\n") + "".join(f"{l}\n" for l in extra)


def push_files(files: Files, url: str, message: str, branch: str = "main", replace_remote: bool = False) -> PushResult:
    """Put `files` on the remote branch as one new commit on top of what it had, keeping the remote's
    files that we did not write (see the module docstring)."""
    require_tools()
    env = git_environment()
    require_credentials(url, env)
    shown = display_url(url)
    staging = Path(tempfile.mkdtemp(dir=staging_root(), prefix="push-"))
    try:
        run_git(["init", "-q", "-b", branch], staging, env, "git init")
        run_git(["lfs", "install", "--local"], staging, env, "git lfs install")
        run_git(["remote", "add", "origin", url], staging, env, "git remote add")
        try:
            heads = run_git(["ls-remote", "--heads", "origin", branch], staging, env, f"reading {shown}")
        except PublishError as error:
            raise PublishError(f"{error}\nDoes the repository exist, and can you reach it? Create it on the "
                               "platform first (for a local path: `git init --bare -b main PATH`).") from None
        if heads.strip():
            run_git(["fetch", "-q", "--depth", "1", "origin", branch], staging, env, f"fetching {shown}")
            run_git(["checkout", "-q", "-B", branch, "FETCH_HEAD"], staging, env, "git checkout")
        remote = tracked_blobs(staging, env)
        ours_before = published_by_us(staging, remote)
        removed = sorted(path for path in ours_before if path not in files and path != PUBLISHED_RECORD)
        kept = sorted(path for path in remote if path not in files and path not in ours_before
                      and path != PUBLISHED_RECORD)
        for path in removed:
            (staging / path).unlink(missing_ok=True)
        for relative, source in files.items():
            target = staging / relative
            if relative == ".gitattributes" and relative in remote and relative not in ours_before:
                ours = source.decode() if isinstance(source, bytes) else source.read_text(encoding="utf-8")
                source = merged_gitattributes(target.read_text(encoding="utf-8"), ours).encode()
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.is_dir():
                raise PublishError(f"the remote holds {relative} as a {'link' if target.is_symlink() else 'folder'}, "
                                   "where the publish writes a file; rename it in the remote first")
            if isinstance(source, bytes):
                target.write_bytes(source)
            else:
                shutil.copyfile(source, target)
        run_git(["add", "-A", "."], staging, env, "git add")
        staged = tracked_blobs(staging, env)
        replaced = sorted(path for path in files if path in remote and path not in ours_before
                          and path != ".gitattributes" and staged.get(path) != remote[path])
        if replaced and not replace_remote:
            raise PublishError(f"{shown} already holds {', '.join(replaced)}, which xtuner-assistant did not write; "
                               "publishing would replace them. Add --replace-remote to replace them, or remove or "
                               "rename them in the remote first. Nothing was pushed.")
        written = {path: staged[path] for path in files if path in staged}
        (staging / PUBLISHED_RECORD).write_text(json.dumps({"written_by": "xtuner-assistant", "files": written},
                                                           indent=2, sort_keys=True) + "\n", encoding="utf-8")
        run_git(["add", "-A", "."], staging, env, "git add")
        changed = subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=staging, env=env).returncode != 0
        if changed or not heads.strip():
            identity = ["-c", "user.name=xtuner-assistant", "-c", "user.email=xtuner-assistant@localhost"]
            has_identity = subprocess.run(["git", "config", "user.email"], cwd=staging, env=env,
                                          capture_output=True).returncode == 0
            run_git([*([] if has_identity else identity), "commit", "-q", "--allow-empty", "-m", message],
                    staging, env, "git commit")
            try:
                run_git(["push", "--progress", "origin", f"HEAD:refs/heads/{branch}"], staging, env,
                        f"pushing to {shown}", show_progress=True)
            except PublishError as error:
                raise PublishError(f"{error}\nThe push did not complete; your files are untouched. Fix the cause "
                                   "and run the same command again: it picks up from what the remote holds.") from None
        commit = run_git(["rev-parse", "HEAD"], staging, env, "git rev-parse").strip()
        return PushResult(url=shown, branch=branch, commit=commit, changed=changed or not heads.strip(),
                          kept=kept, removed=removed)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
