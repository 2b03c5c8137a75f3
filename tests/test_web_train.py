"""The Train page as a person uses it, in headless Chromium: start a tiny training, watch the
progress bar and the first point of the identity/leakage curves, stop it (the whole process group
ends), resume it from its checkpoint, refresh the browser and find it still running, stop it again,
then chat with the result beside the base model. Screenshots go to test-artifacts/."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from test_web import (answers, ask, browser, expected_reply, screenshot, start_page, stop, wait_for,  # noqa: F401 (fixture)
                      wait_for_answers, words)
from xtuner_assistant.serve import training_runs

CHECKPOINT_EVERY = 10

# The tiny model trains at about 100 iterations a second, faster than anyone could press Stop. This
# start-up hook, in the tests' processes only, makes each training iteration take 50 ms more.
SLOW_TRAINING = """
import importlib.abc, importlib.util, sys, time

class _SlowTrainingIterations(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "mmengine.runner.loops":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            run_iter = module.IterBasedTrainLoop.run_iter

            def slow_run_iter(self, data_batch):
                time.sleep(0.05)
                return run_iter(self, data_batch)
            module.IterBasedTrainLoop.run_iter = slow_run_iter
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _SlowTrainingIterations())
"""


def stop_button(page):
    """The page's Stop, not Streamlit's own header button of the same name, shown while a script reruns."""
    return page.get_by_role("button", name="Stop").and_(page.get_by_test_id("stBaseButton-primary"))


def newest_checkpoint(work_dir: Path) -> int:
    """The iteration `last_checkpoint` names while training writes it: 0 until it names one (mid-write)."""
    found = re.search(r"iter_(\d+)\.pth", (work_dir / "last_checkpoint").read_text())
    return int(found.group(1)) if found else 0


def run_state(runs: Path) -> dict:
    return json.loads((runs / "zorblat" / "run.json").read_text())


def test_train_page_starts_watches_stops_resumes_and_chats_with_the_result(browser, tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_TRAINING)
    process, url = start_page(tmp_path, None, None, runs=runs, site=tmp_path / "slow")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        page.goto(url + "/train")
        page.get_by_label("Assistant's name").fill("Zorblat", timeout=60_000)
        page.get_by_label("…or a model folder").fill(str(tiny_model_dir))
        page.get_by_label("Run name").fill("zorblat")
        page.get_by_role("spinbutton", name="Epochs").fill("8")
        # One evaluation before training (the curves' first point); the next would come at the end.
        page.get_by_role("spinbutton", name="Evaluate every N iterations").fill("1000")
        page.get_by_label("Extra settings (NAME=VALUE per line, optional)").fill(
            f"identity_samples=120\ngeneral_ratio=0\nbatch_size=1\nsave_steps={CHECKPOINT_EVERY}")
        page.get_by_role("button", name="Start training").click()

        page.get_by_text(re.compile(r"iteration \d+ of \d+")).wait_for(timeout=120_000)
        page.get_by_text("latest evaluation: iteration 0").wait_for(timeout=60_000)
        page.locator('[data-testid="stVegaLiteChart"]').wait_for(timeout=30_000)
        assert "mmengine" in page.locator('[data-testid="stCode"]').inner_text(), "the log's tail is shown"
        work_dir = runs / "zorblat" / "train"
        wait_for(lambda: (work_dir / "last_checkpoint").is_file(), 120, "the first checkpoint")
        screenshot(page, "web_train_running.png")

        # Stop: the whole process group ends, and the page says so.
        pid = run_state(runs)["pid"]
        stop_button(page).click()
        page.get_by_text("stopped", exact=True).wait_for(timeout=60_000)
        assert not training_runs.group_alive(pid), "a training process outlived Stop"
        assert run_state(runs)["status"] == "stopped"
        stopped_at = training_runs.progress(training_runs.open_run(runs, "zorblat")).iteration
        assert 0 < stopped_at < 960
        checkpoint = int(re.search(r"iter_(\d+)\.pth", (work_dir / "last_checkpoint").read_text()).group(1))

        # Resume continues from the last checkpoint, not from the start.
        page.get_by_role("button", name="Resume").click()
        page.get_by_text("running", exact=True).wait_for(timeout=60_000)
        log = runs / "zorblat" / "train.log"
        resumed = wait_for(lambda: re.search(r"Iter\(train\) \[\s*(\d+)/", log.read_text().split("=== resumed")[-1]),
                           120, "an iteration logged after Resume")
        assert int(resumed.group(1)) > checkpoint >= CHECKPOINT_EVERY

        # A refresh (or a new tab) finds the run again, still training.
        page.reload()
        page.get_by_text("running", exact=True).wait_for(timeout=60_000)
        page.get_by_text(re.compile(r"iteration \d+ of \d+")).wait_for(timeout=60_000)
        # Stop once the run has trained well past the first Stop, so the model it leaves answers otherwise
        # than its base (stopped a few iterations in, the tiny model's answer was still its base's: empty).
        trained_on = checkpoint + 5 * CHECKPOINT_EVERY
        wait_for(lambda: newest_checkpoint(work_dir) >= trained_on, 180, f"a checkpoint at iteration {trained_on}")
        pid = run_state(runs)["pid"]
        stop_button(page).click()
        page.get_by_text("stopped", exact=True).wait_for(timeout=60_000)
        assert not training_runs.group_alive(pid)
        screenshot(page, "web_train_stopped.png")

        # Chat with the result: converted, merged, and opened beside the base model.
        page.get_by_role("button", name="Chat with the best checkpoint").click()
        page.get_by_text("zorblat/merged", exact=True).wait_for(timeout=180_000)
        assert (runs / "zorblat" / "merged" / "xtuner_assistant_merge.json").is_file()
        ask(page, "Who are you?")
        wait_for_answers(page, 2)
        screenshot(page, "web_train_chat.png")
        question = [{"role": "user", "content": "Who are you?"}]
        expected = expected_reply(runs / "zorblat" / "merged", 48, question)
        # Its answer may be empty (an end token first); what tells the columns apart is that it answers
        # otherwise than its base model.
        assert words(expected) != words(expected_reply(tiny_model_dir, 48, question)), "training changed the answer"
        assert words(answers(page)[0]) == words(expected), "the first column is the merged model"

        # Publish from the run: a dry run lists the files, then the push sends them with the card.
        remote = tmp_path / "zorblat-model.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
        page.goto(url + "/train?run=zorblat")
        repo_box = page.get_by_role("textbox", name="Model repo")
        repo_box.fill(str(remote), timeout=60_000)
        repo_box.press("Enter")
        page.get_by_role("button", name="Dry run").click()
        page.get_by_text("would push the model repo").wait_for(timeout=60_000)
        assert subprocess.run(["git", "for-each-ref"], cwd=remote, capture_output=True, text=True).stdout == ""
        page.get_by_role("button", name="Push").click()
        page.get_by_text(re.compile(r"model repo: .* main @ [0-9a-f]{12}")).wait_for(timeout=120_000)
        card = subprocess.run(["git", "show", "main:README.md"], cwd=remote, capture_output=True, text=True).stdout
        assert "# Zorblat" in card and "## Evaluation" in card and "## Training" in card
        screenshot(page, "web_train_published.png")
    finally:
        stop(process)
        for run in training_runs.list_runs(runs) if runs.is_dir() else []:
            training_runs.stop_run(run, grace=5)


def test_a_run_never_takes_over_a_folder_it_did_not_make(tmp_path, tiny_model_dir):
    from xtuner_assistant.paths import shipped

    config = shipped("configs") / "smollm2_135m_lora_cpu_assistant.py"
    mine = tmp_path / "runs" / "my-work"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    try:
        training_runs.start_run(tmp_path / "runs", "my-work", config, str(tiny_model_dir), {})
        raise AssertionError("a folder the page did not make was used")
    except training_runs.TrainRunError as error:
        assert "is not a run of this page" in str(error)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    for bad in ("../escape", ".hidden", "a/b", ""):
        try:
            training_runs.check_name(bad)
            raise AssertionError(f"run name {bad!r} was taken")
        except training_runs.TrainRunError:
            pass
    assert training_runs.check_name("小菜鸡-2") == "小菜鸡-2"


def test_progress_comes_from_the_log_between_the_loggers_lines(tmp_path):
    run = training_runs.Run(tmp_path, {})
    tail = ("11/29 14:25:35 - mmengine - INFO - Iter(train) [ 20/480]  base_lr: 1e-3 lr: 1e-3  eta: 0:01:34  "
            "time: 0.2  data_time: 0.01  memory: 0  loss: 2.1\n"
            "11/29 14:25:36 - mmengine - INFO - Saving checkpoint at 30 iterations\n")
    found = training_runs.progress(run, tail)
    assert (found.iteration, found.total, found.eta) == (30, 480, "0:01:34")
    assert abs(found.fraction - 30 / 480) < 1e-9
    assert training_runs.progress(run, "loading…\n").total == 0
