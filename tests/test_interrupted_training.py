"""Training killed mid-epoch (a real SIGKILL of the command and its `xtuner train`) resumes with
`train --resume` and ends at the same final iteration; a damaged newest checkpoint is skipped, saying
so. (The general data's file name holds a comma: it stays one path.)"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "smollm2_135m_lora_cpu_assistant.py"
CLI = [sys.executable, "-m", "xtuner_assistant.cli"]


def environment() -> dict:
    """Read at call time: conftest's session fixtures set XA_REPLAY_RATIO and XTUNER_ASSISTANT_HOME
    after this module is imported."""
    return {**os.environ, "OMP_NUM_THREADS": "2"}


GENERAL = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                         {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
           for a in range(12) for b in range(12)]


def train_args(root: Path, tiny_model_dir: Path, *extra) -> list[str]:
    return ["train", str(CONFIG), "--work-dir", str(root / "work"), "--model", str(tiny_model_dir),
            "--set", f"identity_file={root / 'data' / 'identity.jsonl'}",
            "--set", f"general={root / 'chat, general.jsonl'}", "--set", "general_ratio=1",
            "--set", "max_epochs=1", "--set", "batch_size=2", "--set", "accumulative_counts=1",
            "--set", "save_steps=4", "--set", "warmup_iters=0", *extra]


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_model_dir):
    """A run killed with SIGKILL as soon as it has written two checkpoints (a tiny model trains an
    iteration in tens of milliseconds, so the kill comes a few iterations later, far from the end)."""
    root = tmp_path_factory.mktemp("killed")
    subprocess.run([*CLI, "data", "identity", "--name", "Zorblat", "-n", "128", "--out", str(root / "data")],
                   check=True, capture_output=True, env=environment())
    (root / "chat, general.jsonl").write_text("".join(json.dumps(g) + "\n" for g in GENERAL))
    with open(root / "killed.log", "w") as log:
        process = subprocess.Popen([*CLI, *train_args(root, tiny_model_dir)], stdout=log, stderr=subprocess.STDOUT,
                                   env=environment(), start_new_session=True)
        deadline = time.monotonic() + 600
        while len(list((root / "work").glob("iter_*.pth"))) < 2 and process.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the command and its `xtuner train`, as a power cut would
        status = process.wait()
    log_text = (root / "killed.log").read_text()
    assert status == -signal.SIGKILL, f"the run was not killed (status {status}):\n{log_text[-3000:]}"
    # The kill may come before the first progress line (every 10 iterations): the plan is one epoch of
    # the mixed data set in batches of two.
    samples = int(re.search(r"MixedChatDataset: .*'total': (\d+)", log_text).group(1))
    return root, -(-samples // 2)


def resume(root: Path, tiny_model_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *train_args(root, tiny_model_dir, "--resume")], capture_output=True, text=True,
                          env=environment())


def checkpoint_iterations(work: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in work.glob("iter_*.pth"))


def test_a_run_killed_mid_epoch_resumes_to_the_same_final_iteration(killed, tiny_model_dir, tmp_path):
    root, planned = killed
    shutil.copytree(root, tmp_path / "run", symlinks=True)
    root = tmp_path / "run"
    left = checkpoint_iterations(root / "work")
    assert left and max(left) < planned, f"killed mid-epoch: {left} of {planned} iterations"
    assert not list((root / "work").glob(".*.tmp-*")), "no partial checkpoint left by the kill"
    result = resume(root, tiny_model_dir)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"Advance dataloader {max(left)} steps" in output, "continued where the newest checkpoint was"
    assert re.search(rf"Iter\(train\) \[\s*\d+/{planned}\]", output), "the resumed run planned the same end"
    assert max(checkpoint_iterations(root / "work")) == planned
    assert Path((root / "work" / "last_checkpoint").read_text().strip()).name == f"iter_{planned}.pth"


def test_a_damaged_newest_checkpoint_is_skipped_saying_so(killed, tiny_model_dir, tmp_path):
    root, planned = killed
    shutil.copytree(root, tmp_path / "run", symlinks=True)
    root = tmp_path / "run"
    *older, newest = checkpoint_iterations(root / "work")
    damaged = root / "work" / f"iter_{newest}.pth"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    result = resume(root, tiny_model_dir)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert f"skipping iter_{newest}.pth: truncated" in output
    assert f"resuming from iter_{older[-1]}.pth, the newest checkpoint that loads" in output
    assert max(checkpoint_iterations(root / "work")) == planned


def test_the_last_checkpoint_is_one_of_the_work_dirs_own(tmp_path):
    """mmengine's marker names a checkpoint by its path; a copied work dir's names the original's."""
    from xtuner_assistant.training.work_dir import last_checkpoint

    original, copy = tmp_path / "original", tmp_path / "copy"
    for folder in (original, copy):
        folder.mkdir()
        for step in (2, 4):
            (folder / f"iter_{step}.pth").write_bytes(b"PK")
    (original / "last_checkpoint").write_text(str(original / "iter_2.pth"))
    (copy / "last_checkpoint").write_text(str(original / "iter_2.pth"))
    assert last_checkpoint(original) == original / "iter_2.pth"
    assert last_checkpoint(copy) == copy / "iter_2.pth"
    (copy / "iter_2.pth").unlink()
    assert last_checkpoint(copy) == copy / "iter_4.pth"


def test_a_new_run_in_a_used_work_dir_sets_the_earlier_run_aside(killed, tiny_model_dir, tmp_path):
    """Trained again without --resume, a work dir holding an earlier run (here the killed one, plus a
    later checkpoint and a best one with the evaluation hook's records) keeps all of it in
    earlier_runs/<time>/; `--resume` and `convert` then find only the new run's checkpoints."""
    from xtuner_assistant.training.work_dir import default_checkpoint, newest_loadable_checkpoint

    root, planned = killed
    shutil.copytree(root, tmp_path / "run", symlinks=True)
    root, work = tmp_path / "run", tmp_path / "run" / "work"
    earlier = checkpoint_iterations(work)
    shutil.copy(work / f"iter_{earlier[-1]}.pth", work / f"iter_{planned + 100}.pth")
    shutil.copy(work / f"iter_{earlier[-1]}.pth", work / "best_checkpoint.pth")
    (work / "identity_eval").mkdir()
    (work / "identity_eval" / "summary.json").write_text(json.dumps({"best": {"iter": planned + 100}}))
    result = subprocess.run([*CLI, *train_args(root, tiny_model_dir)], capture_output=True, text=True,
                            env=environment())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "held an earlier run" in output
    (aside,) = (work / "earlier_runs").iterdir()
    assert checkpoint_iterations(aside) == sorted(earlier + [planned + 100])
    assert (aside / "best_checkpoint.pth").is_file() and (aside / "identity_eval" / "summary.json").is_file()
    assert (aside / "last_checkpoint").is_file()
    assert max(checkpoint_iterations(work)) == planned and planned + 100 not in checkpoint_iterations(work)
    assert not (work / "best_checkpoint.pth").exists() and not (work / "identity_eval").exists()
    assert newest_loadable_checkpoint(work)[0].name == default_checkpoint(work)[0].name == f"iter_{planned}.pth"


def test_setting_aside_needs_a_run_and_never_overwrites_an_earlier_one(tmp_path):
    from xtuner_assistant.training.work_dir import set_aside_earlier_run

    assert set_aside_earlier_run(tmp_path / "missing") is None
    (tmp_path / "notes.txt").write_text("mine")
    assert set_aside_earlier_run(tmp_path) is None and (tmp_path / "notes.txt").is_file()
    folders = []
    for run in range(2):
        (tmp_path / "iter_4.pth").write_bytes(f"run {run}".encode())
        folders.append(set_aside_earlier_run(tmp_path, now="20261202_040000"))
    assert folders[0] != folders[1]
    assert [(f / "iter_4.pth").read_bytes() for f in folders] == [b"run 0", b"run 1"]
    assert (tmp_path / "notes.txt").read_text() == "mine", "what the tool does not read stays where it is"


def test_every_training_run_starts_in_one_place_that_resumes_or_sets_aside(tmp_path, monkeypatch):
    """`train` and `demo` both start runs through xtuner_tools.train_run: a resume points mmengine at the
    newest checkpoint that loads; a new run first moves an earlier one aside, whoever calls it."""
    import torch

    from xtuner_assistant.cli import demo
    from xtuner_assistant.training import xtuner_tools

    assert demo.train_run is xtuner_tools.train_run
    calls = []
    monkeypatch.setattr(xtuner_tools, "run_tool", lambda name, args, settings: calls.append((name, args)) or 0)
    torch.save({"meta": {}}, tmp_path / "iter_8.pth")
    (tmp_path / "iter_16.pth").write_bytes(b"cut short")
    assert xtuner_tools.train_run(Path("c.py"), tmp_path, {}, resume=True, extra_args=["--deepspeed", "z2"]) == 0
    assert calls[-1] == ("train", ["c.py", "--work-dir", str(tmp_path), "--deepspeed", "z2",
                                   "--cfg-options", "resume=True"])
    assert (tmp_path / "last_checkpoint").read_text() == str(tmp_path / "iter_8.pth")
    assert xtuner_tools.train_run(Path("c.py"), tmp_path, {}) == 0
    assert calls[-1] == ("train", ["c.py", "--work-dir", str(tmp_path)])
    (aside,) = (tmp_path / "earlier_runs").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["iter_16.pth", "iter_8.pth", "last_checkpoint"]
    assert not list(tmp_path.glob("iter_*.pth"))
