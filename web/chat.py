"""The Chat page: the same question to every model, answered side by side.

Each column is one model (the command line's MODEL and --compare, or a Train-page run's merged model
beside its base, chosen with `?trained=NAME`). A question appears in every column at once and the models
answer at the same time, each reply streamed through the model's own chat template
(xtuner_assistant.models.generation). The columns share one list of turns, so they always hold the
same conversation: a stopped answer is kept, cut short, in every column. Stop (the button in the chat
box, or any other action during an answer) ends the generation itself, within a token. The system
message applies to the next answer as soon as it is changed. Regenerate, Undo and Reset act on every
column. A LLaVA model (a `vqa convert` folder) gets an image uploader and answers each question about
the uploaded image (xtuner_assistant.llava.model).
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import streamlit as st

from xtuner_assistant.chat_template import ChatTemplateError
from xtuner_assistant.llava import model as llava
from xtuner_assistant.llava.image_chat import IMAGE_TYPES, is_llava_model, read_image
from xtuner_assistant.models.generation import (ContextError, ModelPathError, ReplyStream, check_model_dir,
                                                context_length, fit_to_context, load_chat_model)
from xtuner_assistant.serve import training_runs
from xtuner_assistant.serve.web import model_label, page_arguments


@st.cache_resource(show_spinner="Loading the model…")
def cached_model(path: str, base: str | None):
    # One copy per server process, shared by every browser session: models are read-only here.
    if is_llava_model(path):
        return llava.load_llava(path)
    return load_chat_model(path, base)


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def panels_of(args) -> list[dict]:
    """The columns: [{label, path, base}], from a Train-page run (?trained=NAME) or the command line."""
    run_name = st.query_params.get("trained")
    if run_name:
        try:
            run = training_runs.open_run(Path(args.runs), run_name)
        except training_runs.TrainRunError as error:
            st.error(str(error))
            st.stop()
        if not run.merged_dir.is_dir():
            st.error(f"run {run_name!r} has no merged model yet: on the Train page, choose "
                     "“Chat with the best checkpoint” when it has finished")
            st.stop()
        panels = [{"path": str(run.merged_dir), "base": None}, {"path": run.state["model"], "base": None}]
    else:
        panels = [{"path": path, "base": base} for path, base in ((args.model, args.base), (args.compare, None)) if path]
    labels = []
    for panel in panels:
        label = model_label(panel["path"])
        panel["label"] = label if label not in labels else f"{label} (2)"
        labels.append(panel["label"])
        panel["sees_images"] = is_llava_model(panel["path"])
    return panels


def problems_with(panels: list[dict]) -> list[str]:
    problems = []
    for panel in panels:
        if panel["sees_images"]:
            if panel["base"]:
                problems.append(f"{panel['label']}: {panel['path']} is a LLaVA folder, which names its LLM "
                                "in xtuner_config.py; --base is only for a LoRA adapter folder")
            continue
        for path in filter(None, (panel["path"], panel["base"])):
            try:
                check_model_dir(path)
            except ModelPathError as error:
                problems.append(f"{panel['label']}: {error}")
    return problems


def generation_settings(default_max_new_tokens: int) -> dict:
    st.sidebar.header("Generation")
    return dict(
        max_new_tokens=st.sidebar.slider("Max new tokens", 8, 1024, default_max_new_tokens, step=8),
        temperature=st.sidebar.slider("Temperature (0 = greedy)", 0.0, 1.5, 0.0, step=0.05),
        top_p=st.sidebar.slider("Top-p", 0.05, 1.0, 0.9, step=0.05),
        repetition_penalty=st.sidebar.slider("Repetition penalty", 1.0, 2.0, 1.0, step=0.05),
    )


def conversation(turns: list[dict], column: int, system: str, question: str) -> list[dict]:
    """What column `column`'s model is sent: the system message as it is now, every earlier turn with
    that model's own answer (a stopped one as far as it got), and the new question."""
    messages = [{"role": "system", "content": system}] if system else []
    for turn in turns:
        messages += [{"role": "user", "content": turn["question"]},
                     {"role": "assistant", "content": turn["answers"][column]["text"]}]
    return messages + [{"role": "user", "content": question}]


def uploaded_image():
    """(image, file name) from the uploader, or None; a file that is no image is reported, not raised."""
    # Reset gives the uploader a new key, which is how Streamlit empties a file_uploader.
    upload = st.file_uploader("Image to ask about (PNG or JPEG)", type=list(IMAGE_TYPES),
                              key=f"image-{st.session_state.uploads}")
    if upload is None:
        return None
    try:
        image = read_image(upload.getvalue(), upload.name)
    except ValueError as error:
        st.error(str(error))
        return None
    st.image(image, caption=upload.name, width=320)
    return image, upload.name


class ImageAnswer:
    """A LLaVA answer computed in a thread, whole (it does not stream), read like a ReplyStream."""

    def __init__(self, model, image, question: str, max_new_tokens: int):
        self.result: list[str] = []
        self.errors: list[BaseException] = []
        self.finished = False

        def run():
            try:
                self.result.append(llava.answer(model, [image], [question], max_new_tokens=max_new_tokens)[0])
            except BaseException as error:
                self.errors.append(error)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        pass  # one short greedy answer: it ends by itself

    def take(self) -> str:
        if self.finished or self.thread.is_alive():
            return ""
        self.finished = True
        if self.errors:
            raise self.errors[0]
        return self.result[0]


def show_turn(turn: dict, column: int):
    """One question and that column's answer; returns the answer's placeholder and its footer."""
    with st.chat_message("user"):
        st.markdown(turn["question"])
        if turn.get("image_name"):
            st.caption(f"about {turn['image_name']}")
    with st.chat_message("assistant"):
        body = st.empty()
        footer = st.container()
    answer = turn["answers"][column]
    if answer["text"]:
        body.markdown(answer["text"])
    if answer["status"] != "generating":
        show_footer(footer, answer)
    return body, footer


def show_footer(footer, answer: dict) -> None:
    with footer:
        if answer["status"] == "stopped":
            st.caption(":material/stop_circle: stopped: this answer was cut short")
        elif answer["status"] == "failed":
            st.error(answer["error"])
        elif answer["status"] == "done" and not answer["text"]:
            st.caption("no answer: the model ended its turn at once")
        if answer["text"]:
            with st.popover("Copy", help="the answer as plain text, with a copy button"):
                st.code(answer["text"], language=None, wrap_lines=True)


def plan_answers(panels, models, turns, system, question, settings) -> list[dict] | None:
    """Per text column: the messages that fit its context and the token count; None if any cannot."""
    plans = []
    for column, panel in enumerate(panels):
        if panel["sees_images"]:
            plans.append({"max_new_tokens": settings["max_new_tokens"]})
            continue
        model, tokenizer = models[column]
        context = context_length(model, tokenizer)
        try:
            messages, tokens, dropped, max_new = fit_to_context(
                tokenizer, conversation(turns, column, system, question), context, settings["max_new_tokens"])
        except (ContextError, ChatTemplateError) as error:
            st.error(f"Not sent: {error}")
            return None
        if dropped:
            st.warning(f"{panel['label']}: the {dropped} oldest turn(s) no longer fit in its {context:,}-token "
                       "context and were left out of what it reads (they stay on the page).")
        if max_new < settings["max_new_tokens"]:
            st.warning(f"{panel['label']}: the prompt is {tokens:,} of its {context:,} tokens, so the answer can "
                       f"be at most {max_new} tokens long.")
        plans.append({"messages": messages, "tokens": tokens, "context": context, "max_new_tokens": max_new})
    return plans


def answer_turn(turn: dict, panels, models, plans, settings, outputs) -> None:
    """Every column answers at the same time, each into its placeholder; the turn in session state
    grows with them, so whatever interrupts this run leaves every column's answer as far as it got."""
    stop = threading.Event()
    st.session_state.stop_event = stop
    streams = []
    for column, (panel, plan) in enumerate(zip(panels, plans)):
        if panel["sees_images"]:
            streams.append(ImageAnswer(models[column], turn["image"], turn["question"], plan["max_new_tokens"]))
        else:
            model, tokenizer = models[column]
            streams.append(ReplyStream(model, tokenizer, plan["messages"], stop,
                                       **{**settings, "max_new_tokens": plan["max_new_tokens"]}))
    for column, answer in enumerate(turn["answers"]):
        outputs[column][0].markdown(answer["text"] or "…")
    completed = False
    quiet_since = time.monotonic()
    try:
        while not all(stream.finished for stream in streams):
            for column, stream in enumerate(streams):
                if stream.finished:
                    continue
                answer = turn["answers"][column]
                try:
                    piece = stream.take()
                except Exception as error:  # the model failed mid-answer: say so in its column
                    answer.update(status="failed", error=f"{panels[column]['label']} failed: {one_line(error)}")
                    stream.finished = True
                    continue
                if piece:
                    answer["text"] += piece
                    outputs[column][0].markdown(answer["text"])
                    quiet_since = time.monotonic()
            if time.monotonic() - quiet_since > 0.5:
                # Nothing new for a while (a long prompt is being read): touching the page lets
                # Streamlit deliver a Stop or a click now rather than at the next token.
                outputs[0][0].markdown(turn["answers"][0]["text"] or "…")
                quiet_since = time.monotonic()
            time.sleep(0.03)
        completed = True
    finally:
        stop.set()  # also when Stop, a rerun or a closed tab interrupts this run
        for column, answer in enumerate(turn["answers"]):
            answer["text"] = answer["text"].strip()
            if answer["status"] == "generating":
                answer["status"] = "done" if completed else "stopped"
    for column, answer in enumerate(turn["answers"]):
        if answer["text"]:
            outputs[column][0].markdown(answer["text"])
        else:
            outputs[column][0].empty()
        show_footer(outputs[column][1], answer)


def main() -> None:
    args = page_arguments(sys.argv[1:])
    st.title("Chat with your assistant")
    panels = panels_of(args)
    if not panels:
        st.info("No model to chat with yet. Train one on the Train page, or start the page with one: "
                "`xtuner-assistant web work_dirs/demo/merged --compare ~/.cache/xtuner-assistant/models/smollm2-135m`.")
        st.page_link("train.py", label="Go to the Train page", icon=":material/model_training:")
        st.stop()
    problems = problems_with(panels)
    if problems:
        for problem in problems:
            st.error(problem)
        st.info("Restart with a model folder that holds config.json, the weights and the tokenizer, e.g. "
                "`xtuner-assistant web work_dirs/demo/merged --compare ~/.cache/xtuner-assistant/models/smollm2-135m`.")
        st.stop()

    models = []
    for panel in panels:
        try:
            models.append(cached_model(panel["path"], panel["base"]))
        except Exception as error:  # any load failure is one line that names the model, never a traceback
            st.error(f"{panel['label']} at {panel['path']} could not be loaded: {one_line(error)}")
            st.stop()

    # A new set of models starts a new conversation.
    key = tuple(panel["path"] for panel in panels)
    if st.session_state.get("panels") != key:
        st.session_state.update(panels=key, turns=[], uploads=st.session_state.get("uploads", 0) + 1)
    turns: list[dict] = st.session_state.turns
    # A run interrupted during an answer (Stop, a click, a closed tab) left it "generating": it was cut short.
    previous = st.session_state.get("stop_event")
    if previous is not None:
        previous.set()
    for turn in turns:
        for answer in turn["answers"]:
            if answer["status"] == "generating":
                answer["status"] = "stopped"

    settings = generation_settings(args.max_new_tokens)
    sees_images = any(panel["sees_images"] for panel in panels)
    if sees_images:
        st.sidebar.caption("A LLaVA model answers greedily, each question about the image on its own: "
                           "of these settings only Max new tokens applies to it.")
    system = ""
    if not all(panel["sees_images"] for panel in panels):  # a LLaVA model reads no system message
        system = st.sidebar.text_area("System message (optional)", value="",
                                      help="Applies to the next answer as soon as you change it; empty: none").strip()
        st.sidebar.caption("System message in use for the next answer." if system else "No system message.")
    buttons = st.sidebar.columns(2)
    regenerate = buttons[0].button("Regenerate", help="answer the last question again, in every column")
    undo = buttons[1].button("Undo", help="remove the last question and its answers")
    reset = st.sidebar.button("Reset conversation", type="primary")
    question = st.chat_input("Ask a question about the image" if sees_images else
                             "Ask a question (the same one goes to every model)", submit_mode="stop")

    if reset:
        turns.clear()
        st.session_state.uploads += 1
    if undo and turns:
        turns.pop()
    image = uploaded_image() if sees_images else None

    to_answer = None
    if question is not None:
        if not question.strip():
            st.warning("Nothing to send: the message is empty or only spaces.")
        elif sees_images and image is None:
            st.warning("Upload an image first (PNG or JPEG, above): this is a LLaVA model, it answers questions "
                       "about an image.")
        else:
            plans = plan_answers(panels, models, turns, system, question, settings)
            if plans is not None:
                turn = {"question": question, "answers": [{"text": "", "status": "generating"} for _ in panels]}
                if image is not None:
                    turn.update(image=image[0], image_name=image[1])
                turns.append(turn)
                to_answer = (turn, plans)
    elif regenerate and turns:
        last = turns[-1]
        plans = plan_answers(panels, models, turns[:-1], system, last["question"], settings)
        if plans is not None:
            last["answers"] = [{"text": "", "status": "generating"} for _ in panels]
            to_answer = (last, plans)

    outputs = []
    for column, (panel, container) in enumerate(zip(panels, st.columns(len(panels)))):
        with container:
            st.subheader(panel["label"])
            st.caption(panel["path"])
            if to_answer and "tokens" in to_answer[1][column]:
                plan = to_answer[1][column]
                st.caption(f"prompt: {plan['tokens']:,} of {plan['context']:,} tokens")
            for turn in turns:
                outputs.append(show_turn(turn, column))
    if to_answer:
        turn = to_answer[0]
        live = [outputs[column * len(turns) + len(turns) - 1] for column in range(len(panels))]
        answer_turn(turn, panels, models, to_answer[1], settings, live)


main()
