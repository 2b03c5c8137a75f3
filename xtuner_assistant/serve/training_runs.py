"""Training runs started from the web page's Train page, kept on disk so that they outlive the page.

A run is a folder `<runs>/<name>/` holding:
- `run.json`: what was started (the `xtuner-assistant train` command, settings, model), its process
  id, and its status: running, finished, stopped or failed (with the exit status);
- `train.log`: everything the training printed (mmengine's log, with iteration counts and ETA);
- `train/`: the xtuner work dir (checkpoints, the evaluation hook's `identity_eval/`);
- after training, `hf_adapter/` and `merged/` (the best checkpoint converted and merged).

The training runs under a small supervisor (`python -m xtuner_assistant.serve.training_runs RUN`) in a
session and process group of its own: a browser refresh, a closed tab or a restarted page server do
not touch it, and the page finds it again from `run.json`. Stop sends SIGTERM to the whole group
(then SIGKILL to what is left); the supervisor records how the run ended. Resume starts the same
command again with `--resume`, which continues from the last checkpoint.

A run folder is only ever created new: a name whose folder exists and was not made here is refused.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from xtuner_assistant.paths import write_json_atomic

RUN_FILE = "run.json"
LOG_FILE = "train.log"
RUN_NAME = re.compile(r"[^\W][\w.-]{0,63}")  # letters (any script), digits, '_', '-', '.'; no '/' or leading '.'
ITERATION = re.compile(r"Iter\(train\)\s*\[\s*(\d+)/(\d+)\]")
# Lines that tell how far a run got between the logger's `Iter(train)` lines (every 10 iterations).
REACHED = re.compile(r"Saving checkpoint at (\d+) iterations|IdentityEvalHook iter (\d+):")
ETA = re.compile(r"eta:\s*((?:\d+ days?, )?\d+:\d\d:\d\d)")
TAIL_BYTES = 64_000
STOP_GRACE_SECONDS = 15

# Supervisors this page server started: polled so that they are reaped, not left as zombies.
_children: dict[int, subprocess.Popen] = {}


class TrainRunError(ValueError):
    pass


@dataclass
class Run:
    folder: Path
    state: dict

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def work_dir(self) -> Path:
        return self.folder / "train"

    @property
    def log_file(self) -> Path:
        return self.folder / LOG_FILE

    @property
    def adapter_dir(self) -> Path:
        return self.folder / "hf_adapter"

    @property
    def merged_dir(self) -> Path:
        return self.folder / "merged"

    def save(self) -> None:
        write_json_atomic(self.folder / RUN_FILE, self.state)


def check_name(name: str) -> str:
    name = name.strip()
    if not RUN_NAME.fullmatch(name):
        raise TrainRunError(f"run name {name!r}: use letters, digits, '-', '_' or '.' (at most 64, no '/'), "
                            "e.g. alice-assistant")
    return name


def open_run(runs: Path, name: str) -> Run:
    folder = Path(runs) / check_name(name)
    try:
        state = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainRunError(f"{folder}: no training run of that name (no {RUN_FILE})") from None
    except ValueError as error:
        raise TrainRunError(f"{folder / RUN_FILE}: not valid JSON ({error})") from None
    return Run(folder, state)


def list_runs(runs: Path) -> list[Run]:
    """The runs under `runs`, newest first."""
    found = []
    for record in Path(runs).glob(f"*/{RUN_FILE}"):
        try:
            found.append(open_run(Path(runs), record.parent.name))
        except TrainRunError:
            continue
    return sorted(found, key=lambda run: run.state.get("started", 0), reverse=True)


def train_command(config: Path, work_dir: Path, model: str, settings: dict[str, str]) -> list[str]:
    command = [sys.executable, "-m", "xtuner_assistant.cli", "train", str(config), "--work-dir", str(work_dir),
               "--model", str(model)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    return command


def start_run(runs: Path, name: str, config: Path, model: str, settings: dict[str, str]) -> Run:
    """A new run folder, and `xtuner-assistant train` started in it."""
    folder = Path(runs) / check_name(name)
    if folder.exists():
        if (folder / RUN_FILE).is_file():
            raise TrainRunError(f"a run named {folder.name!r} exists already ({folder}): resume it, or pick "
                                "another name")
        raise TrainRunError(f"{folder} exists and is not a run of this page; pick another name "
                            "(nothing there is touched)")
    if not Path(config).is_file():
        raise TrainRunError(f"{config}: no such config file")
    folder.mkdir(parents=True)
    run = Run(folder, {"name": folder.name, "config": str(config), "model": str(model), "settings": settings,
                       "command": train_command(config, folder / "train", model, settings),
                       "started": time.time(), "attempts": 0})
    launch(run, resume=False)
    return run


def resume_run(run: Run) -> None:
    from xtuner_assistant.training.work_dir import WorkDirError, last_checkpoint

    if status(run) == "running":
        raise TrainRunError(f"run {run.name!r} is still running")
    try:
        last_checkpoint(run.work_dir)
    except WorkDirError:
        raise TrainRunError(f"run {run.name!r} saved no checkpoint before it ended, so there is nothing to resume "
                            "from; start a new run") from None
    launch(run, resume=True)


def launch(run: Run, resume: bool) -> None:
    command = list(run.state["command"]) + (["--resume"] if resume else [])
    run.state.update(status="running", current_command=command, stop_requested=False, exit_status=None,
                     attempts=run.state.get("attempts", 0) + 1, attempt_started=time.time())
    run.save()
    with open(run.log_file, "ab") as log:
        log.write(f"\n=== {'resumed' if resume else 'started'} {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(command[1:])}\n".encode())
        log.flush()
        process = subprocess.Popen([sys.executable, "-m", "xtuner_assistant.serve.training_runs", str(run.folder)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    _children[process.pid] = process
    run.state["pid"] = process.pid
    run.save()


def is_alive(pid: int | None) -> bool:
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap() -> None:
    """Collect the supervisors of this server that have ended, so none lingers as a zombie."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            _children.pop(pid)


def status(run: Run) -> str:
    """running, finished, stopped or failed; a run whose supervisor vanished without a word failed
    (or was stopped, if Stop was asked for)."""
    reap()
    state = run.state
    if state.get("status") == "running" and not is_alive(state.get("pid")):
        fresh = open_run(run.folder.parent, run.name).state  # the supervisor may have just written it
        state.update(fresh)
        if state.get("status") == "running":
            state["status"] = "stopped" if state.get("stop_requested") else "failed"
    return state.get("status", "failed")


def stop_run(run: Run, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM to the run's process group, SIGKILL to whatever is left after `grace` seconds."""
    pid = run.state.get("pid")
    if status(run) != "running":
        return
    run.state["stop_requested"] = True
    run.save()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_alive(pid):
        if pid in _children:
            _children[pid].poll()
        time.sleep(0.2)
    if group_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if pid in _children:
        _children.pop(pid).wait()
    status(run)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies aside)."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@dataclass
class Progress:
    iteration: int = 0
    total: int = 0
    eta: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.iteration / self.total) if self.total else 0.0


def log_tail(run: Run, size: int = TAIL_BYTES) -> str:
    try:
        with open(run.log_file, "rb") as log:
            log.seek(max(0, os.path.getsize(run.log_file) - size))
            return log.read().decode("utf-8", "replace")
    except OSError:
        return ""


def progress(run: Run, tail: str | None = None) -> Progress:
    """Iterations done of the total and mmengine's ETA, from the newest `Iter(train) [N/TOTAL]` log line
    (the total) and the newest checkpoint or evaluation line (how far it got since)."""
    tail = log_tail(run) if tail is None else tail
    found = Progress()
    matches = list(ITERATION.finditer(tail))
    if matches:
        last = matches[-1]
        found.iteration, found.total = int(last.group(1)), int(last.group(2))
        eta = ETA.search(tail, last.start())
        found.eta = eta.group(1) if eta else ""
    for reached in REACHED.finditer(tail):
        found.iteration = max(found.iteration, int(reached.group(1) or reached.group(2)))
    return found


def supervise(folder: Path) -> int:
    """Run the run's current command in this process group, then record how it ended."""
    run = open_run(folder.parent, folder.name)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))  # the child gets the group's SIGTERM too
    child = subprocess.Popen(run.state["current_command"])
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    run = open_run(folder.parent, folder.name)
    stopped = bool(stopping or run.state.get("stop_requested"))
    run.state.update(status="finished" if code == 0 and not stopped else "stopped" if stopped else "failed",
                     exit_status=code, ended=time.time())
    run.save()
    print(f"=== {run.state['status']} (exit status {code}) {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1])))
