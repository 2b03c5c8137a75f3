"""The web demo: chat with the fine-tuned model, beside its base model, in the browser.

Start it with `xtuner-assistant web MODEL [--compare BASE]` (which runs `streamlit run` on this file).
Every reply streams, formatted by the model's own chat template (xtuner_assistant.generation), and
each browser tab keeps its own conversation.
"""
from __future__ import annotations

import argparse
import sys

import streamlit as st

from xtuner_assistant.chat_template import ChatTemplateError
from xtuner_assistant.generation import ModelPathError, check_model_dir, load_chat_model, stream_reply


def page_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="web/app.py")
    parser.add_argument("--model", required=True, help="merged model folder, or a LoRA adapter folder")
    parser.add_argument("--base", help="base model for an adapter folder")
    parser.add_argument("--compare", help="a second model (usually the base) answering the same questions")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    return parser.parse_args(argv)


@st.cache_resource(show_spinner="Loading the model…")
def cached_model(path: str, base: str | None):
    # One copy per server process, shared by every browser session: models are read-only here.
    return load_chat_model(path, base)


def panels_of(args) -> list[dict]:
    panels = [{"label": "Fine-tuned", "path": args.model, "base": args.base}]
    if args.compare:
        panels.append({"label": "Base", "path": args.compare, "base": None})
    return panels


def problems_with(panels: list[dict]) -> list[str]:
    problems = []
    for panel in panels:
        for path in filter(None, (panel["path"], panel["base"])):
            try:
                check_model_dir(path)
            except ModelPathError as error:
                problems.append(f"{panel['label']} model: {error}")
    return problems


def generation_settings(default_max_new_tokens: int) -> dict:
    st.sidebar.header("Generation")
    settings = dict(
        max_new_tokens=st.sidebar.slider("Max new tokens", 8, 1024, default_max_new_tokens, step=8),
        temperature=st.sidebar.slider("Temperature (0 = greedy)", 0.0, 1.5, 0.0, step=0.05),
        top_p=st.sidebar.slider("Top-p", 0.05, 1.0, 0.9, step=0.05),
        repetition_penalty=st.sidebar.slider("Repetition penalty", 1.0, 2.0, 1.0, step=0.05),
    )
    return settings


def conversation_start(system: str) -> list[dict]:
    return [{"role": "system", "content": system}] if system.strip() else []


def main(argv: list[str]) -> None:
    args = page_arguments(argv)
    st.set_page_config(page_title="xtuner-assistant chat", layout="wide")
    st.title("Chat with your assistant")
    panels = panels_of(args)
    problems = problems_with(panels)
    if problems:
        for problem in problems:
            st.error(problem)
        st.info("Restart with a model folder that holds config.json, the weights and the tokenizer, e.g. "
                "`xtuner-assistant web work_dirs/demo/merged --compare ~/.cache/xtuner-assistant/models/smollm2-135m`.")
        st.stop()

    settings = generation_settings(args.max_new_tokens)
    system = st.sidebar.text_area("System message (optional)", value="")
    if st.sidebar.button("Reset conversation", type="primary") or "conversations" not in st.session_state:
        st.session_state.conversations = {panel["label"]: conversation_start(system) for panel in panels}

    models = {}
    for panel in panels:
        try:
            models[panel["label"]] = cached_model(panel["path"], panel["base"])
        except ChatTemplateError as error:
            st.error(f"{panel['label']} model: {error}")
            st.stop()
        except (OSError, ValueError) as error:  # unreadable weights or config: say which model, no traceback
            st.error(f"{panel['label']} model at {panel['path']} could not be loaded: {error}")
            st.stop()

    columns = st.columns(len(panels))
    for column, panel in zip(columns, panels):
        with column:
            st.subheader(panel["label"])
            st.caption(panel["path"])
            for message in st.session_state.conversations[panel["label"]]:
                if message["role"] != "system":
                    st.chat_message(message["role"]).markdown(message["content"])

    question = st.chat_input("Ask a question (the same one goes to every model)")
    if not question:
        return
    for column, panel in zip(columns, panels):
        conversation = st.session_state.conversations[panel["label"]]
        conversation.append({"role": "user", "content": question})
        model, tokenizer = models[panel["label"]]
        with column:
            st.chat_message("user").markdown(question)
            with st.chat_message("assistant"):
                answer = st.write_stream(stream_reply(model, tokenizer, conversation, **settings))
        conversation.append({"role": "assistant", "content": (answer or "").strip()})


main(sys.argv[1:])
