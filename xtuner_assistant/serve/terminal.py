"""The terminal conversation loop shared by `chat` and `vqa chat`: read a line, let the caller answer
it, until /exit, /quit or Ctrl-D; /reset starts over where the caller keeps a history."""
from __future__ import annotations

from typing import Callable


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
            respond(text)
