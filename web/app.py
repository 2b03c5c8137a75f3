"""The web demo: chat with the fine-tuned model, beside its base model, in the browser.

Start it with `xtuner-assistant web MODEL [--compare BASE]` (which runs `streamlit run` on this file).
Every reply streams, formatted by the model's own chat template (xtuner_assistant.models.generation), and
each browser tab keeps its own conversation. A LLaVA model (a `vqa convert` folder) gets an image
uploader and answers each question about the uploaded image (xtuner_assistant.llava.model).
"""
from __future__ import annotations

import argparse
import sys

import streamlit as st

from xtuner_assistant.chat_template import ChatTemplateError
from xtuner_assistant.llava import model as llava
from xtuner_assistant.llava.image_chat import IMAGE_TYPES, is_llava_model, read_image
from xtuner_assistant.models.generation import ModelPathError, check_model_dir, load_chat_model, stream_reply


def page_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="web/app.py")
    parser.add_argument("--model", required=True, help="merged model folder, a LoRA adapter folder, or a LLaVA folder")
    parser.add_argument("--base", help="base model for an adapter folder")
    parser.add_argument("--compare", help="a second model (usually the base) answering the same questions")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    return parser.parse_args(argv)


@st.cache_resource(show_spinner="Loading the model…")
def cached_model(path: str, base: str | None):
    # One copy per server process, shared by every browser session: models are read-only here.
    if is_llava_model(path):
        return llava.load_llava(path)
    return load_chat_model(path, base)


def panels_of(args) -> list[dict]:
    panels = [{"label": "Fine-tuned", "path": args.model, "base": args.base}]
    if args.compare:
        panels.append({"label": "Base", "path": args.compare, "base": None})
    for panel in panels:
        panel["sees_images"] = is_llava_model(panel["path"])
    return panels


def problems_with(panels: list[dict]) -> list[str]:
    problems = []
    for panel in panels:
        if panel["sees_images"]:
            if panel["base"]:
                problems.append(f"{panel['label']} model: {panel['path']} is a LLaVA folder, which names its LLM "
                                "in xtuner_config.py; --base is only for a LoRA adapter folder")
            continue
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


def show(message: dict) -> None:
    with st.chat_message(message["role"]):
        st.markdown(message["content"])
        if "image" in message:
            st.caption(f"about {message['image']}")


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
    sees_images = any(panel["sees_images"] for panel in panels)
    if sees_images:
        st.sidebar.caption("A LLaVA model answers greedily, each question about the image on its own: "
                           "of these settings only Max new tokens applies to it.")
    system = st.sidebar.text_area("System message (optional)", value="")
    if st.sidebar.button("Reset conversation", type="primary") or "conversations" not in st.session_state:
        st.session_state.conversations = {panel["label"]: conversation_start(system) for panel in panels}
        st.session_state.uploads = st.session_state.get("uploads", 0) + 1

    models = {}
    for panel in panels:
        try:
            models[panel["label"]] = cached_model(panel["path"], panel["base"])
        except ChatTemplateError as error:
            st.error(f"{panel['label']} model: {error}")
            st.stop()
        except (OSError, ValueError, llava.LLaVAModelError) as error:  # say which model, no traceback
            st.error(f"{panel['label']} model at {panel['path']} could not be loaded: {error}")
            st.stop()

    image = uploaded_image() if sees_images else None
    columns = st.columns(len(panels))
    for column, panel in zip(columns, panels):
        with column:
            st.subheader(panel["label"])
            st.caption(panel["path"])
            for message in st.session_state.conversations[panel["label"]]:
                if message["role"] != "system":
                    show(message)

    question = st.chat_input("Ask a question about the image" if sees_images else
                             "Ask a question (the same one goes to every model)")
    if not question:
        return
    for column, panel in zip(columns, panels):
        conversation = st.session_state.conversations[panel["label"]]
        if panel["sees_images"]:
            with column:
                answer_about_image(models[panel["label"]], image, question, conversation, settings["max_new_tokens"])
            continue
        conversation.append({"role": "user", "content": question})
        model, tokenizer = models[panel["label"]]
        with column:
            st.chat_message("user").markdown(question)
            with st.chat_message("assistant"):
                answer = st.write_stream(stream_reply(model, tokenizer, conversation, **settings))
        conversation.append({"role": "assistant", "content": (answer or "").strip()})


def answer_about_image(model, upload, question: str, conversation: list[dict], max_new_tokens: int) -> None:
    if upload is None:
        st.warning("Upload an image first (PNG or JPEG, above): this is a LLaVA model, it answers questions "
                   "about an image.")
        return
    image, name = upload
    conversation.append({"role": "user", "content": question, "image": name})
    show(conversation[-1])
    with st.chat_message("assistant"):
        with st.spinner("Looking at the image…"):
            reply = llava.answer(model, [image], [question], max_new_tokens=max_new_tokens)[0]
        st.markdown(reply)
    conversation.append({"role": "assistant", "content": reply})


main(sys.argv[1:])
