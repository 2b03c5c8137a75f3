"""The web demo as a person uses it: start `xtuner-assistant web` on a tiny model beside a second
('base') model, open the page in a real headless Chromium, ask a question, watch both answers
stream in, and keep a screenshot in test-artifacts/. Then the same with a tiny LLaVA model: upload
an easy-VQA picture and get an answer about it."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from talkative_model import talkative_tiny_model_dir
from test_llava import cli as llava_cli, easy_vqa, tiny_clip, train  # noqa: F401 (fixtures: the tiny LLaVA's parts)
from xtuner_assistant.cli.main import main as cli_main
from xtuner_assistant.serve.web import streamlit_command

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = os.environ.get("XA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ASSISTANT = '[data-testid="stChatMessage"]:has([data-testid="stChatMessageAvatarAssistant"])'
CONTENT = '[data-testid="stChatMessageContent"]'
QUESTION = "Hello, who are you?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The tiny model writes a whole answer in milliseconds, faster than a browser paints. This startup
# hook in the page's server only (never in the product) makes each token take 20 ms, like a real
# model on a CPU, so the test can watch the answer grow.
ONE_TOKEN_EVERY_20_MS = """
import time
from transformers.generation import streamers

_put = streamers.TextIteratorStreamer.put
def _slow_put(self, value):
    time.sleep(0.02)
    return _put(self, value)
streamers.TextIteratorStreamer.put = _slow_put
"""


def start_page(tmp_path: Path, model: Path, compare: Path | None, max_new_tokens: int = 48, slow: bool = False):
    port = free_port()
    log = open(tmp_path / f"streamlit-{port}.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if slow:
        (tmp_path / "slow").mkdir()
        (tmp_path / "slow" / "sitecustomize.py").write_text(ONE_TOKEN_EVERY_20_MS)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path / "slow"), env.get("PYTHONPATH")]))
    process = subprocess.Popen(streamlit_command(model, compare, port=port, max_new_tokens=max_new_tokens),
                               stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"streamlit exited ({process.returncode}):\n{(tmp_path / log.name).read_text()}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError("streamlit did not answer its health check within 90 s")


def stop(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        if os.environ.get("XA_SKIP_BROWSER") == "1":
            pytest.skip("XA_SKIP_BROWSER=1 and no Chromium")
        pytest.fail(f"no Chromium at {CHROMIUM}. Install it with `apt-get update && apt-get install -y chromium` "
                    "(or point XA_CHROMIUM at one), or set XA_SKIP_BROWSER=1 to skip the browser tests.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("web-models")
    return talkative_tiny_model_dir(root / "fine-tuned", seed=0), talkative_tiny_model_dir(root / "base", seed=1)


def expected_reply(model_dir: Path, max_new_tokens: int) -> str:
    from xtuner_assistant.models.generation import load_chat_model, reply

    model, tokenizer = load_chat_model(model_dir, device="cpu")
    return reply(model, tokenizer, [{"role": "user", "content": QUESTION}], max_new_tokens=max_new_tokens)


def words(text: str) -> list[str]:
    return "".join(ch if ch.isalnum() else " " for ch in text).split()


# Records every distinct length the newest assistant message passes through while it is written.
WATCH_STREAMING = """() => {
  window.seenLengths = [];
  new MutationObserver(() => {
    const messages = document.querySelectorAll('%s');
    if (!messages.length) return;
    const content = messages[messages.length - 1].querySelector('%s');
    const length = content ? content.innerText.length : 0;
    if (window.seenLengths[window.seenLengths.length - 1] !== length) window.seenLengths.push(length);
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}""" % (ASSISTANT.replace("'", "\\'"), CONTENT.replace("'", "\\'"))


def test_page_streams_both_models_answers_and_keeps_one_conversation_per_session(browser, two_models, tmp_path):
    fine_tuned, base = two_models
    process, url = start_page(tmp_path, fine_tuned, base, max_new_tokens=48, slow=True)
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.get_by_text("Fine-tuned", exact=True).wait_for(timeout=60_000)
        page.get_by_text("Base", exact=True).wait_for()
        page.evaluate(WATCH_STREAMING)
        box = page.locator('[data-testid="stChatInput"] textarea')
        box.fill(QUESTION)
        box.press("Enter")
        answers = page.locator(ASSISTANT)
        page.wait_for_function(f"document.querySelectorAll('{ASSISTANT}').length == 2", timeout=60_000)
        page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=60_000)
        page.wait_for_timeout(500)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_demo.png"), full_page=True)

        shown = [answers.nth(i).locator(CONTENT).inner_text() for i in range(2)]
        for text, model_dir in zip(shown, (fine_tuned, base)):
            expected = words(expected_reply(model_dir, 48))
            assert expected, "the tiny model should say something"
            assert words(text) == expected, (text, expected)
        assert words(shown[0]) != words(shown[1]), "each column must show its own model's answer"
        lengths = page.evaluate("window.seenLengths")
        assert len([n for n in lengths if n > 0]) >= 3, f"answer appeared at once, not streamed: {lengths}"

        # A second browser session starts with an empty conversation; the first keeps its own.
        other = browser.new_context().new_page()
        other.goto(url)
        other.get_by_text("Fine-tuned", exact=True).wait_for(timeout=60_000)
        other.wait_for_timeout(1000)
        assert other.locator('[data-testid="stChatMessage"]').count() == 0
        assert page.locator('[data-testid="stChatMessage"]').count() == 4

        page.get_by_role("button", name="Reset conversation").click()
        page.wait_for_function("document.querySelectorAll('[data-testid=\"stChatMessage\"]').length == 0",
                               timeout=30_000)
    finally:
        stop(process)


def run_page(monkeypatch, *page_args):
    """The page's script run in-process by Streamlit's own test runner (no server, no browser)."""
    from streamlit.testing.v1 import AppTest

    from xtuner_assistant.serve.web import web_app

    monkeypatch.setattr("sys.argv", [str(web_app()), *map(str, page_args)])
    page = AppTest.from_file(str(web_app()), default_timeout=120)
    page.run()
    assert not page.exception, page.exception
    return page


def test_page_says_clearly_when_a_model_path_is_wrong_or_will_not_load(two_models, tmp_path, monkeypatch):
    fine_tuned, _ = two_models
    page = run_page(monkeypatch, "--model", fine_tuned, "--compare", tmp_path / "no-such-model")
    errors = [error.value for error in page.error]
    assert len(errors) == 1 and errors[0].startswith("Base model:") and "no-such-model: no such folder" in errors[0]
    assert len(page.chat_input) == 0, "no chat box for a page that cannot answer"

    broken = tmp_path / "broken"
    shutil.copytree(fine_tuned, broken)
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    page = run_page(monkeypatch, "--model", broken)
    errors = [error.value for error in page.error]
    # Caught by the folder check before loading, which names the file and the field.
    assert len(errors) == 1 and errors[0].startswith(f"Fine-tuned model: {broken / 'config.json'}: model_type "
                                                     "'no-such-architecture'"), errors
    assert len(page.chat_input) == 0


def test_web_command_refuses_a_wrong_model_path_before_starting(tmp_path, capsys, two_models):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    assert cli_main(["web", str(not_a_model)]) == 2
    error = capsys.readouterr().err
    assert "MODEL:" in error and "not a model folder (no config.json)" in error
    assert cli_main(["web", str(two_models[0]), "--compare", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert "--compare:" in error and "missing: no such folder" in error and "Traceback" not in error


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory, easy_vqa, tiny_clip) -> Path:
    """Stage 1 (projector on captions) of a talkative tiny LLM + tiny CLIP through `xtuner train`, converted."""
    root = tmp_path_factory.mktemp("web-llava")
    llm = talkative_tiny_model_dir(root / "llm")
    train("smollm2_135m_efficientnet_lite0_pretrain.py", root / "stage1", llm=llm, visual_encoder_kind="clip",
          visual_encoder=tiny_clip, visual_select_layer=-2, data_path=easy_vqa["captions"],
          image_folder=easy_vqa["image_folder"], batch_size=3, seed=0)
    assert llava_cli("vqa", "convert", root / "stage1", "--out", root / "llava") == 0
    return root / "llava"


IMAGE_QUESTION = "what shape is in the image?"


def test_llava_page_answers_about_an_uploaded_image(browser, tiny_llava, easy_vqa, tmp_path):
    from xtuner_assistant.llava.image_chat import read_image
    from xtuner_assistant.llava.model import answer, load_llava

    picture = easy_vqa["image_folder"] / json.loads(easy_vqa["test"].read_text())[0]["image"]
    process, url = start_page(tmp_path, tiny_llava, None, max_new_tokens=12)
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(url)
        page.get_by_text("Image to ask about (PNG or JPEG)").wait_for(timeout=60_000)
        box = page.locator('[data-testid="stChatInput"] textarea')
        uploader = page.locator('[data-testid="stFileUploader"] input[type="file"]')

        # A question before any image: told what to do, nothing is answered.
        box.fill(IMAGE_QUESTION)
        box.press("Enter")
        page.get_by_text("Upload an image first").wait_for(timeout=60_000)
        assert page.locator('[data-testid="stChatMessage"]').count() == 0

        # A file that only claims to be a PNG: an error on the page, which keeps working.
        uploader.set_input_files({"name": "broken.png", "mimeType": "image/png", "buffer": b"not an image at all"})
        page.get_by_text("broken.png: not an image").wait_for(timeout=60_000)
        assert page.locator('[data-testid="stException"]').count() == 0

        uploader.set_input_files(str(picture))
        page.locator('[data-testid="stImage"]').wait_for(timeout=60_000)
        box.fill(IMAGE_QUESTION)
        box.press("Enter")
        page.wait_for_function(f"document.querySelectorAll('{ASSISTANT}').length == 1", timeout=120_000)
        page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=60_000)
        page.wait_for_timeout(500)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_demo_llava.png"), full_page=True)

        expected = answer(load_llava(tiny_llava, device="cpu"), [read_image(picture)], [IMAGE_QUESTION],
                          max_new_tokens=12)[0]
        assert words(expected), "the tiny LLaVA should say something"
        shown = page.locator(ASSISTANT).locator(CONTENT).inner_text()
        assert words(shown) == words(expected), (shown, expected)
        assert f"about {picture.name}" in page.locator('[data-testid="stChatMessage"]').first.inner_text()

        # Reset clears the conversation and the image.
        page.get_by_role("button", name="Reset conversation").click()
        page.wait_for_function("document.querySelectorAll('[data-testid=\"stChatMessage\"]').length == 0",
                               timeout=30_000)
        page.locator('[data-testid="stImage"]').wait_for(state="detached", timeout=30_000)
        assert page.locator('[data-testid="stFileUploaderFile"]').count() == 0
    finally:
        stop(process)


def test_llava_page_says_clearly_when_its_llm_is_gone(tiny_llava, tmp_path, monkeypatch):
    moved = tmp_path / "llava"
    shutil.copytree(tiny_llava, moved)
    config = moved / "xtuner_config.py"
    config.write_text(config.read_text().replace(str(tiny_llava.parent / "llm"), str(tmp_path / "gone")))
    page = run_page(monkeypatch, "--model", moved)
    errors = [error.value for error in page.error]
    assert len(errors) == 1 and errors[0].startswith(f"Fine-tuned model at {moved} could not be loaded"), errors
    assert f"its LLM folder {tmp_path / 'gone'} is missing" in errors[0]
    assert len(page.chat_input) == 0


def test_web_command_takes_a_llava_folder_but_not_with_base(tiny_llava, two_models, capsys, monkeypatch):
    started = []
    monkeypatch.setattr("xtuner_assistant.cli.web.subprocess.call", lambda command: started.append(command) or 0)
    assert cli_main(["web", str(tiny_llava), "--compare", str(two_models[1])]) == 0
    assert started == [streamlit_command(tiny_llava, two_models[1])]

    assert cli_main(["web", str(tiny_llava), "--base", str(two_models[1])]) == 2
    error = capsys.readouterr().err
    assert "is a LLaVA folder" in error and "Traceback" not in error
