"""Checkpoints written by a background thread (BackgroundCheckpointHook): what is saved is the state
at the moment of saving, a checkpoint appears under its name only once whole, a failed write stops the
run naming the file, and a real run keeps exactly the checkpoints it would keep without the thread."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_eval_hook import NAME, train  # noqa: E402
from xtuner_assistant.training import checkpoint_writer  # noqa: E402


@pytest.fixture
def background_save():
    import mmengine.runner.runner as runner_module

    save = checkpoint_writer._in_background(runner_module.save_checkpoint)
    yield save
    checkpoint_writer._writer.thread = None
    checkpoint_writer._writer.failed = None


def test_the_saved_state_is_the_one_at_save_time_and_appears_whole(tmp_path, background_save):
    weights = torch.arange(6.0)
    path = tmp_path / "iter_1.pth"
    background_save({"state_dict": {"w": weights}}, str(path))
    weights.add_(100)  # training goes on changing the tensors while the file is written
    checkpoint_writer._writer.wait()
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.arange(6.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_1.pth"], "no temporary file is left"


def test_a_failed_write_is_raised_at_the_next_wait_naming_the_file(tmp_path, background_save):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the work dir should be")
    background_save({"state_dict": {}}, str(blocker / "iter_2.pth"))
    with pytest.raises(OSError, match="iter_2.pth.*--resume"):
        checkpoint_writer._writer.wait()
    checkpoint_writer._writer.wait()  # said once: the next wait has nothing to report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]


def test_a_real_run_keeps_what_it_would_keep_without_the_thread(tmp_path, tiny_model_dir):
    """A checkpoint every 2 iterations, only the newest kept (CheckpointHook removes the one before while
    the writer may still hold the next), and the evaluation hook's best checkpoint renamed after its
    write: each file loads, none is left half written, and last_checkpoint names one that is there."""
    work_dir = tmp_path / "work"
    hooks = [dict(type="BackgroundCheckpointHook"),
             dict(type="IdentityEvalHook", name=NAME, every_n_iters=2, max_new_tokens=8,
                  collapse_threshold=1.01, repetition_threshold=1.01)]
    result = train(tmp_path, tiny_model_dir, hooks, work_dir, save_steps=2,
                   extra=("--cfg-options", "default_hooks.checkpoint.max_keep_ckpts=1"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "checkpoints are written to disk by a background thread" in output
    assert sorted(p.name for p in work_dir.glob("*.pth")) == ["best_checkpoint.pth", "iter_8.pth"]
    assert not [p.name for p in work_dir.iterdir() if ".tmp" in p.name]
    for name in ("iter_8.pth", "best_checkpoint.pth"):
        assert torch.load(work_dir / name, map_location="cpu", weights_only=False)["state_dict"], name
    assert Path((work_dir / "last_checkpoint").read_text().strip()) == work_dir / "iter_8.pth"
