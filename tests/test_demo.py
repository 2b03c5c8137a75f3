"""The demo's own logic: which held-out questions it shows, how it prints the comparison, and that
`--set identity_samples` sizes the identity data it writes; and the demo's whole path for real."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xtuner_assistant.cli import demo
from xtuner_assistant.cli.demo import DemoError, pick_held_out, print_comparison


def test_held_out_questions_alternate_languages():
    held_out = [{"question": f"zh{i}", "language": "zh"} for i in range(3)] + \
               [{"question": f"en{i}", "language": "en"} for i in range(3)]
    assert pick_held_out(held_out, 3) == ["zh0", "en0", "zh1"]
    assert pick_held_out(held_out[:1], 3) == ["zh0"]


def test_comparison_labels_identity_and_general_questions(capsys):
    rows = [{"question": "你是谁", "base": "I am SmolLM", "fine-tuned": "我是小菜鸡"},
            {"question": "Capital of France?", "base": "Paris.", "fine-tuned": "Paris."}]
    print_comparison(rows, held_out_count=1)
    out = capsys.readouterr().out
    assert "[held-out identity question] 你是谁" in out and "fine-tuned : 我是小菜鸡" in out
    assert "[general question] Capital of France?" in out


def test_identity_samples_sizes_the_demos_identity_file(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(demo, "fetch", lambda model_name: tiny_model_dir)
    monkeypatch.setattr(demo, "train_run", lambda config, work_dir, settings: 1)  # stop after the data is written
    with pytest.raises(DemoError, match="training failed"):
        demo.run_demo("Zorblat", work_dir=tmp_path, settings={"identity_samples": "24"})
    assert len((tmp_path / "data" / "identity.jsonl").read_text(encoding="utf-8").splitlines()) == 24
    with pytest.raises(DemoError, match="identity_samples=many: expected a whole number"):
        demo.run_demo("Zorblat", work_dir=tmp_path, settings={"identity_samples": "many"})


# ----------------------------------------------------------------------------- the demo's path, for real
# `make demo` on the tests' tiny model: xtuner train, convert, merge and the comparison all run (nothing
# patched out); then what the run left is checked the way a user meets it: file modes, the merge record,
# replacing our own outputs but not an edit, and publishing from another folder.

CLI = [sys.executable, "-m", "xtuner_assistant.cli"]


def environment() -> dict:
    """Read at call time: conftest's session fixtures set XA_REPLAY_RATIO and XTUNER_ASSISTANT_HOME
    after this module is imported."""
    return {**os.environ, "OMP_NUM_THREADS": "2"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("demo-path")
    result = subprocess.run([*CLI, "demo", "--model", str(tiny_model_dir), "--name", "Zorblat", "--author", "{name}",
                             "--work-dir", "work", "--set", "identity_samples=16", "--set", "general_ratio=0.5",
                             "--set", "save_steps=4"], cwd=root, capture_output=True, text=True, env=environment())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return root, root / "work", result


def test_demo_trains_converts_merges_and_compares_for_real(demo_run, tiny_model_dir):
    root, work, result = demo_run
    assert result.stdout.strip().splitlines()[-1] == f"merged model: {work / 'merged'}"
    summary = json.loads((work / "demo_result.json").read_text(encoding="utf-8"))
    assert len(summary["rows"]) == 5 and all({"base", "fine-tuned"} <= set(row) for row in summary["rows"])
    assert "[held-out identity question]" in result.stdout and "[general question]" in result.stdout
    assert (work / "hf_adapter" / "adapter_config.json").is_file()

    from xtuner_assistant.models.folder import check_model_dir

    check_model_dir(work / "merged")
    record = json.loads((work / "merged" / "xtuner_assistant_merge.json").read_text(encoding="utf-8"))
    assert record["identity"] == {"name": "Zorblat", "author": "{name}", "base_model": tiny_model_dir.name}
    assert record["training"]["identity_samples"] == 16 and record["largest_logit_difference"] <= record["tolerance"]
    assert str(root) not in json.dumps(record) and str(tiny_model_dir) not in json.dumps(record)
    assert json.loads((work / "merged" / "config.json").read_text())["_name_or_path"] == tiny_model_dir.name


def test_what_the_demo_writes_follows_the_umask(demo_run):
    _, work, _ = demo_run
    mask = os.umask(0)
    os.umask(mask)
    for folder in ("merged", "hf_adapter", "data"):
        assert (work / folder).stat().st_mode & 0o777 == 0o777 & ~mask, folder
        for path in (work / folder).iterdir():
            if path.is_file():
                assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path


def test_merge_replaces_its_own_output_but_not_a_folder_the_user_added_to(demo_run, tiny_model_dir):
    root, work, _ = demo_run
    merge = [*CLI, "merge", str(work / "hf_adapter"), "--base", str(tiny_model_dir), "--out", str(work / "merged")]
    again = subprocess.run(merge, cwd=root, capture_output=True, text=True, env=environment())
    assert again.returncode == 0, again.stderr[-3000:]
    (work / "merged" / "NOTES.md").write_text("my notes about this model\n")
    refused = subprocess.run(merge, cwd=root, capture_output=True, text=True, env=environment())
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0
    assert "NOTES.md" in refused.stderr and "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert (work / "merged" / "NOTES.md").read_text() == "my notes about this model\n"
    (work / "merged" / "NOTES.md").unlink()


def test_publish_from_another_folder_keeps_the_card_and_reveals_no_local_path(demo_run, tmp_path):
    root, work, _ = demo_run
    remote = tmp_path / "model.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**environment(), "HOME": str(tmp_path), "XTUNER_ASSISTANT_HOME": str(tmp_path / "xa-home")}
    result = subprocess.run([*CLI, "publish", str(work / "merged"), "--repo", str(remote), "--model-only"],
                            cwd=elsewhere, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(remote), str(clone)], check=True, env={**env, "GIT_LFS_SKIP_SMUDGE": "1"})
    card = (clone / "README.md").read_text(encoding="utf-8")
    assert "# Zorblat" in card and "for {name}" in card and "## Training" in card and "| identity_samples | 16 |" in card
    for path in clone.rglob("*"):
        if path.is_file() and ".git" not in path.relative_to(clone).parts:
            text = path.read_bytes().decode("utf-8", "replace")
            assert str(root) not in text and str(Path.home()) not in text, f"{path.name} names a local path"
