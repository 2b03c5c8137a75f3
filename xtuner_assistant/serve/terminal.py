"""The terminal chat: `chat MODEL` streams replies of a text model in its own chat template and keeps
the conversation; `chat LLAVA_MODEL --image FILE` (and `vqa chat`) answers each question about one
image. Both read lines until /exit, /quit or Ctrl-D; /reset starts over where there is a history."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from xtuner_assistant.chat_template import ChatTemplateError, check_plain_text


def repl(greeting: str, respond: Callable[[str], None], reset: Callable[[], None] | None = None) -> int:
    """`respond(text)` writes its own reply (streamed or whole) after the `bot> ` prompt."""
    print(greeting)
    while True:
        try:
            text = input("\nyou> ").strip()
        except EOFError:
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            if reset is None:
                print("(nothing to reset: each question is answered on its own)")
            else:
                reset()
                print("(conversation reset)")
            continue
        if text:
            print("bot> ", end="", flush=True)
            try:
                respond(text)
            except ChatTemplateError as error:  # this line only: the chat goes on
                print(f"(not sent: {error})")


def chat_with_text(model_path, base=None, prompt=None, system=None, **settings) -> int:
    """`settings`: max_new_tokens, temperature, top_p, repetition_penalty (models/generation.py)."""
    from xtuner_assistant.models.generation import load_chat_model, stream_reply

    model, tokenizer = load_chat_model(model_path, base)
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)

    def respond(text):
        question = {"role": "user", "content": text}
        check_plain_text(tokenizer, [question])  # before the history takes it
        history.append(question)
        pieces = []
        for piece in stream_reply(model, tokenizer, history, **settings):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(pieces).strip()})

    def reset():
        history[:] = start

    if prompt is not None:
        respond(prompt)
        return 0
    return repl(f"Chatting with {model_path} - type /reset to start over, /exit (or Ctrl-D) to leave.",
                respond, reset)


def chat_about_image(model_path, image_path, prompt=None, max_new_tokens=64) -> int:
    """Each question is answered about the image on its own (the model sees no earlier turns)."""
    from xtuner_assistant.llava.image_chat import read_image
    from xtuner_assistant.llava.model import answer, load_llava

    image = read_image(Path(image_path))
    model = load_llava(Path(model_path))

    def respond(text):
        print(answer(model, [image], [text], max_new_tokens=max_new_tokens)[0])

    if prompt is not None:
        respond(prompt)
        return 0
    return repl(f"Asking {model_path} about {image_path} - /exit (or Ctrl-D) to leave.", respond)
