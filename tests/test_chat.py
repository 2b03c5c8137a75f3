"""Chatting in the terminal, as a person does it: `chat MODEL` streams replies and keeps the
conversation until /reset or /exit; `chat LLAVA_MODEL --image FILE` (the same as `vqa chat`)
answers questions about a picture through the same loop; wrong input gets one clear line."""
from __future__ import annotations

import io
import json

import pytest

from talkative_model import talkative_tiny_model_dir
from test_llava import easy_vqa, tiny_clip  # noqa: F401 (fixtures: easy-VQA images, a tiny CLIP)
from test_web import tiny_llava  # noqa: F401 (fixture: a tiny LLaVA through `xtuner train`)
from xtuner_assistant.cli.main import main as cli_main

QUESTION = "Hello, who are you?"
IMAGE_QUESTION = "what shape is in the image?"


@pytest.fixture(scope="module")
def talkative_model(tmp_path_factory):
    return talkative_tiny_model_dir(tmp_path_factory.mktemp("chat") / "model")


def typed(monkeypatch, *lines):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))


def replies_in(output: str) -> list[str]:
    return [chunk.split("\n\nyou>")[0].strip() for chunk in output.split("bot> ")[1:]]


def test_terminal_chat_keeps_the_conversation_until_reset(talkative_model, monkeypatch, capsys):
    from xtuner_assistant.models.generation import load_chat_model, reply

    typed(monkeypatch, QUESTION, QUESTION, "/reset", QUESTION, "/exit")
    assert cli_main(["chat", str(talkative_model), "--max-new-tokens", "12"]) == 0
    output = capsys.readouterr().out
    assert output.startswith(f"Chatting with {talkative_model}") and "(conversation reset)" in output

    model, tokenizer = load_chat_model(talkative_model, device="cpu")
    first = reply(model, tokenizer, [{"role": "user", "content": QUESTION}], max_new_tokens=12)
    history = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": first},
               {"role": "user", "content": QUESTION}]
    second = reply(model, tokenizer, history, max_new_tokens=12)
    assert first and second != first, "the tiny model should answer the 2nd turn differently"
    assert replies_in(output) == [first, second, first], "the 2nd answer sees the 1st turn; after /reset it does not"


def test_chat_with_an_image_is_vqa_chat_through_the_same_loop(tiny_llava, easy_vqa, monkeypatch, capsys):
    from xtuner_assistant.llava.image_chat import read_image
    from xtuner_assistant.llava.model import answer, load_llava

    picture = easy_vqa["image_folder"] / json.loads(easy_vqa["test"].read_text())[0]["image"]
    expected = answer(load_llava(tiny_llava, device="cpu"), [read_image(picture)], [IMAGE_QUESTION],
                      max_new_tokens=8)[0]

    for verb in (["chat"], ["vqa", "chat"]):
        assert cli_main([*verb, str(tiny_llava), "--image", str(picture), "--prompt", IMAGE_QUESTION,
                         "--max-new-tokens", "8"]) == 0
        assert capsys.readouterr().out.strip() == expected, verb

        typed(monkeypatch, IMAGE_QUESTION, "/reset", IMAGE_QUESTION)  # then Ctrl-D
        assert cli_main([*verb, str(tiny_llava), "--image", str(picture), "--max-new-tokens", "8"]) == 0
        output = capsys.readouterr().out
        assert output.startswith(f"Asking {tiny_llava} about {picture}")
        assert "(nothing to reset: each question is answered on its own)" in output
        assert replies_in(output) == [expected, expected], verb


def test_chat_says_what_is_wrong_with_the_model_or_image(tiny_llava, talkative_model, tmp_path, capsys):
    def error_of(*argv) -> str:
        assert cli_main(list(map(str, argv))) == 2
        error = capsys.readouterr().err
        assert "Traceback" not in error and len(error.strip().splitlines()) == 1, error
        return error

    assert "is a LLaVA model: give the image to ask about with --image FILE" in error_of("chat", tiny_llava)
    picture = tmp_path / "picture.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n but the rest is not an image")
    assert "--image needs a LLaVA model folder" in error_of("chat", talkative_model, "--image", picture)
    assert f"{picture}: not an image" in error_of("chat", tiny_llava, "--image", picture, "--prompt", "hi")
    assert f"{tmp_path / 'missing.png'}: no such image file" in error_of("vqa", "chat", tiny_llava, "--image",
                                                                         tmp_path / "missing.png")
