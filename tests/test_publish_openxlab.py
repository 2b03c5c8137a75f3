"""`xtuner-assistant publish --via openxlab`, for real up to the network: the openxlab SDK runs in its
own environment, logs in with keys from the environment and uploads the model folder and its card;
its requests go to the real host names through an HTTPS proxy on 127.0.0.1 that plays OpenXLab
(tests/fake_openxlab.py) and records what arrives. The keys must show up in no output, no file and
no request that does not need them, and the SDK's session files must not outlive the publish."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from fake_openxlab import API_HOST, OSS_HOST, FakeOpenXLab
from xtuner_assistant.cli.main import main as cli_main
from xtuner_assistant.publish.openxlab import XTUNER_CODE_URL, code_url_for, sdk_environment, sdk_python

ACCESS_KEY = "fake-access-key-for-tests-0001"
SECRET_KEY = "fake-secret-key-for-tests-0002"
WRONG_SECRET_KEY = "fake-but-wrong-secret-key-0003"
REPO = "alice/zorblat"
APP_REPO = "alice/zorblat-app"


@pytest.fixture(scope="module")
def sdk_folder() -> Path:
    """The SDK environment, built by `make install` (or here, on first use) in the shared home."""
    sdk_python()
    return sdk_environment()


@pytest.fixture
def env(tmp_path, monkeypatch, sdk_folder):
    """A private HOME and xtuner-assistant home (the SDK environment linked in), and the keys."""
    home, xa_home = tmp_path / "home", tmp_path / "xa-home"
    (xa_home / "openxlab-sdk").mkdir(parents=True)
    home.mkdir()
    (xa_home / "openxlab-sdk" / sdk_folder.name).symlink_to(sdk_folder, target_is_directory=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XTUNER_ASSISTANT_HOME", str(xa_home))
    monkeypatch.setenv("OPENXLAB_AK", ACCESS_KEY)
    monkeypatch.setenv("OPENXLAB_SK", SECRET_KEY)
    for variable in ("XA_GIT_TOKEN", "XA_GIT_USERNAME", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                     "ALL_PROXY", "all_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "merged"))


def publish(capsys, *args) -> tuple[int, str, str]:
    status = cli_main(["publish", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def through(server: FakeOpenXLab, monkeypatch) -> None:
    for name, value in server.client_environment().items():
        monkeypatch.setenv(name, value)


def every_file_under(folder: Path, since: float = 0) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in folder.rglob("*")
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime >= since}


def fingerprint(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() + f"{p.stat().st_mtime_ns}" for p in folder.iterdir()}


def test_publish_via_openxlab_uploads_the_folder_and_its_card_finds_the_repo_again_and_keeps_the_keys_secret(
        env, model_dir, sdk_folder, capsys, monkeypatch):
    started = time.time() - 1
    before = fingerprint(model_dir)
    publishing = env / "xa-home" / "publish"
    sdk_files_during_upload = {}

    def look_at_the_sdk_home(request):
        # While the SDK uploads, its HOME (a private folder under xtuner-assistant's home) holds its session files.
        if request.path.endswith("updateFileUploadStatus") and not sdk_files_during_upload:
            for path, data in every_file_under(publishing).items():
                sdk_files_during_upload[path.relative_to(publishing)] = data

    command = [model_dir, "--repo", REPO, "--app-repo", APP_REPO, "--model-only", "--via", "openxlab",
               "--name", "Zorblat", "--author", "Alice"]
    with FakeOpenXLab(env / "server", ACCESS_KEY, SECRET_KEY, on_request=look_at_the_sdk_home) as server:
        through(server, monkeypatch)
        dry_status, dry_out, dry_err = publish(capsys, *command, "--dry-run")
        assert dry_status == 0, dry_err
        assert server.requests == []
        status, out, err = publish(capsys, *command)
        assert status == 0, err
        # A second publish finds the repo and uploads again without creating it.
        again_status, again, again_err = publish(capsys, *command)
        assert again_status == 0, again_err

    # Every file of the folder, byte for byte, and the model card; the git-only .gitattributes stays behind.
    uploaded = server.uploaded("zorblat")
    folder = {path.name: path.read_bytes() for path in model_dir.iterdir()}
    assert uploaded.keys() == folder.keys() | {"README.md"}
    assert all(uploaded[name] == data for name, data in folder.items())
    assert len(folder["model.safetensors"]) > 100 * 1024, "several OSS parts, the last one short"
    card = uploaded["README.md"].decode()
    assert "# Zorblat" in card and "Alice" in card
    assert fingerprint(model_dir) == before, "publishing only reads the model folder"
    listed = [line.split() for line in dry_out.splitlines() if line.startswith("  ")]
    assert dry_out.startswith(f"would push the model repo with the openxlab SDK -> OpenXLab {REPO} "
                              f"(code URL https://github.com/{APP_REPO}), {len(uploaded)} files:")
    assert sorted(path for kind, *_, path in listed) == sorted(uploaded) and {kind for kind, *_ in listed} == {"sdk"}

    assert server.refused == [], "every request went to a fake OpenXLab host through the tunnel"
    assert {r.host for r in server.requests} == {API_HOST, OSS_HOST}

    # Logging in: the access key is sent, the secret key only signs the server's nonce (checked by the fake).
    auth = server.calls("/open/auth") + server.calls("/open/getJwt")
    assert [r.json()["ak"] for r in auth] == [ACCESS_KEY] * 4  # two publishes, each logs in afresh
    model_center = [r for r in server.requests if r.host == API_HOST and r not in auth]
    assert model_center and all(r.headers["authorization"] == server.jwt for r in model_center)

    # The repo's metadata, as the SDK sends it: the app repo is the code URL.
    [create] = server.calls("createModelRepository")
    created = create.json()
    assert created["name"] == "zorblat" and created["license"] == "Apache-2.0" and created["publicStatus"] == 1
    assert created["github"] == f"https://github.com/{APP_REPO}"
    assert sorted(m["name"] for m in created["models"]) == sorted(uploaded)
    assert all(m["weightName"] == m["name"] for m in created["models"])
    assert all(m["evaluations"] == [{"task": "Text Generation", "dataset": "none"}] for m in created["models"])
    done = [r.json() for r in server.calls("updateFileUploadStatus") if r.json()["uploadStatus"] == 2]
    assert sorted(name for r in done for name in r["fileNames"]) == sorted([*uploaded, *uploaded])
    assert not server.calls("/bury/collect"), "no usage reports: the runner avoids the SDK's reporting wrappers"

    # What the user saw.
    total = len(uploaded)
    lines = out.splitlines()
    assert lines[:2] == ["logged in to OpenXLab", f"created {REPO}"]
    assert [line.split(" (")[0] for line in lines[2:-2]] == [f"uploading {n}/{total} {name}"
                                                            for n, name in enumerate(sorted(uploaded), 1)]
    assert lines[-2:] == [f"uploaded {total} files to {REPO}", f"model repo: uploaded to {REPO} on OpenXLab "
                                                                "with the openxlab SDK"]
    assert again.splitlines()[1] == f"{REPO} exists with {total} files"

    # The SDK kept its session token in the private HOME, without the keys, and it is gone now.
    assert any(path.name == "token.json" for path in sdk_files_during_upload)
    assert not any(path.name == "config.json" and ".openxlab" in path.parts for path in sdk_files_during_upload)
    assert all(ACCESS_KEY.encode() not in data and SECRET_KEY.encode() not in data
               for data in sdk_files_during_upload.values())
    assert list(publishing.iterdir()) == []
    assert list((env / "home").iterdir()) == []

    # The keys: in no output, no file (here or in the SDK's environment), and the secret key in no request.
    written = {**every_file_under(env), **every_file_under(sdk_folder, since=started)}
    for key in (ACCESS_KEY, SECRET_KEY):
        assert key not in dry_out + dry_err + out + err + again + again_err
        assert not [path for path, data in written.items() if key.encode() in data]
    for request in server.requests:
        assert SECRET_KEY.encode() not in request.body + json.dumps(request.headers).encode()
        if request not in auth:
            assert ACCESS_KEY.encode() not in request.body + json.dumps(request.headers).encode()


def one_clear_line(status: int, out: str, err: str) -> str:
    assert status == 2, err
    assert err.count("\n") == 1 and err.startswith("xtuner-assistant publish: error: "), err
    assert "Traceback" not in err
    for key in (ACCESS_KEY, SECRET_KEY, WRONG_SECRET_KEY):
        assert key not in out + err
    return err


def test_a_wrong_secret_key_is_one_clear_line_and_creates_nothing(env, model_dir, capsys, monkeypatch):
    monkeypatch.setenv("OPENXLAB_SK", WRONG_SECRET_KEY)
    with FakeOpenXLab(env / "server", ACCESS_KEY, SECRET_KEY) as server:
        through(server, monkeypatch)
        err = one_clear_line(*publish(capsys, model_dir, "--repo", REPO, "--model-only", "--via", "openxlab"))
    assert ("error: logging in with OPENXLAB_AK / OPENXLAB_SK failed: the platform answered: signature does not "
            "match the secret key; check both keys") in err
    assert server.uploaded("zorblat") == {} and not server.calls("createModelRepository")
    assert list((env / "xa-home" / "publish").iterdir()) == []


def test_an_unreachable_platform_is_one_clear_line(env, model_dir, capsys, monkeypatch):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    for name in ("HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "")
    err = one_clear_line(*publish(capsys, model_dir, "--repo", REPO, "--model-only", "--via", "openxlab"))
    assert "logging in with OPENXLAB_AK / OPENXLAB_SK failed: could not reach the platform" in err
    assert "check both keys" not in err


def test_missing_keys_nested_files_and_a_url_are_refused_before_the_sdk_starts(env, model_dir, capsys, monkeypatch):
    monkeypatch.delenv("OPENXLAB_SK")
    err = one_clear_line(*publish(capsys, model_dir, "--repo", REPO, "--model-only", "--via", "openxlab"))
    assert "no OpenXLab keys: set OPENXLAB_SK in the environment" in err
    monkeypatch.setenv("OPENXLAB_SK", SECRET_KEY)
    (model_dir / "extra").mkdir()
    (model_dir / "extra" / "notes.txt").write_text("a file in a subfolder")
    err = one_clear_line(*publish(capsys, model_dir, "--repo", REPO, "--model-only", "--via", "openxlab"))
    assert "'extra/notes.txt' is in a subfolder; publish with git instead" in err
    shutil.rmtree(model_dir / "extra")
    err = one_clear_line(*publish(capsys, model_dir, "--repo", "https://code.openxlab.org.cn/alice/zorblat.git",
                                  "--model-only", "--via", "openxlab"))
    assert "the openxlab SDK needs the repository as owner/name" in err
    assert not (env / "xa-home" / "publish").exists(), "nothing was staged"


def test_the_code_url_is_the_app_repos_web_address_else_xtuners():
    assert code_url_for("https://github.com/alice/zorblat-app.git") == "https://github.com/alice/zorblat-app"
    assert code_url_for("https://bob@gitlab.example.org/alice/app.git") == "https://gitlab.example.org/alice/app"
    assert code_url_for("/srv/git/app.git") == code_url_for(None) == XTUNER_CODE_URL
