"""Checkpoints written to disk in the background while training goes on (`BackgroundCheckpointHook`).

mmengine's `Runner.save_checkpoint` copies the trained weights and the optimizer's state to the host,
serializes them, and writes the bytes (compat.atomic_checkpoint_writes: a temporary file, fsync,
rename) while training waits. Writing is most of it, and for the packed QLoRA configs a save costs
several times an evaluation pass (docs/BENCHMARKS.md). With this hook the serialized bytes, a finished
snapshot that training can no longer change, go to one writer thread, and training goes on. A
checkpoint still appears under its name only once it is whole.

Order: one write at a time. A new save, and anything that reads, renames or removes checkpoint files,
first waits for the write in flight: this hook before CheckpointHook's turn (which removes old
checkpoints before it saves) and at the end of the run, and any hook that calls the hook point
`runner.call_hook("wait_for_checkpoint_writes")` (IdentityEvalHook, before it renames its best
checkpoint). A write that failed is raised there, so a full disk still stops the run. The thread is
not a daemon: a run that ends by an error still finishes the write in flight.
"""
from __future__ import annotations

import io
import os
import threading

from mmengine.hooks import CheckpointHook, Hook
from mmengine.registry import HOOKS


class _Writer:
    """One background write at a time; its error is kept until someone waits."""

    def __init__(self):
        self.thread: threading.Thread | None = None
        self.failed: tuple[str, BaseException] | None = None

    def submit(self, data: memoryview, filename: str) -> None:
        self.wait()
        self.thread = threading.Thread(target=self._write, args=(data, filename), name="checkpoint-writer")
        self.thread.start()

    def _write(self, data: memoryview, filename: str) -> None:
        from mmengine.fileio.backends.local_backend import LocalBackend

        try:
            LocalBackend().put(data, filename)  # a temporary file, fsync, rename (compat.atomic_checkpoint_writes)
        except BaseException as error:  # noqa: BLE001 -- raised in the training thread at the next wait
            self.failed = (filename, error)
        finally:
            data.release()

    def wait(self) -> None:
        """Returns once the write in flight is on disk; raises if it failed."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.failed is not None:
            (filename, error), self.failed = self.failed, None
            raise OSError(f"writing the checkpoint {filename} failed ({type(error).__name__}: {error}); "
                          "free disk space or choose another --work-dir, then train again with --resume") from error


_writer = _Writer()


def _in_background(original):
    def save_checkpoint(checkpoint, filename, file_client_args=None, backend_args=None):
        if file_client_args is not None or backend_args is not None or "://" in str(filename):
            return original(checkpoint, filename, file_client_args=file_client_args, backend_args=backend_args)
        import torch

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        _writer.submit(buffer.getbuffer(), os.fspath(filename))  # a view of the bytes: no second copy

    save_checkpoint.original = original
    return save_checkpoint


@HOOKS.register_module()
class BackgroundCheckpointHook(Hook):
    """Checkpoints of this run are written by a background thread (see the module's text)."""

    priority = "BELOW_NORMAL"  # its waits come before CheckpointHook's (VERY_LOW) turn

    def before_run(self, runner) -> None:
        import mmengine.runner.runner as runner_module

        if not hasattr(runner_module.save_checkpoint, "original"):
            runner_module.save_checkpoint = _in_background(runner_module.save_checkpoint)
        runner.logger.info("BackgroundCheckpointHook: checkpoints are written to disk by a background thread")

    def wait_for_checkpoint_writes(self, runner) -> None:
        """A hook point of its own (`runner.call_hook("wait_for_checkpoint_writes")`): returns once every
        checkpoint of the run is on disk."""
        _writer.wait()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if any(self._checkpoint_hook_saves(hook, runner) for hook in runner.hooks if isinstance(hook, CheckpointHook)):
            _writer.wait()  # it removes the oldest checkpoint first: that one must be on disk

    def after_train_epoch(self, runner) -> None:
        _writer.wait()

    def after_train(self, runner) -> None:
        _writer.wait()  # CheckpointHook may publish the last checkpoint here

    def after_run(self, runner) -> None:
        import mmengine.runner.runner as runner_module

        try:
            _writer.wait()
        finally:
            runner_module.save_checkpoint = getattr(runner_module.save_checkpoint, "original",
                                                    runner_module.save_checkpoint)

    def _checkpoint_hook_saves(self, hook: CheckpointHook, runner) -> bool:
        """CheckpointHook.after_train_iter's own condition (mmengine 0.10.6)."""
        if hook.by_epoch:
            return False  # it saves in after_train_epoch, where this hook waits anyway
        return (self.every_n_train_iters(runner, hook.interval, hook.save_begin)
                or (hook.save_last and self.is_last_train_iter(runner)))
