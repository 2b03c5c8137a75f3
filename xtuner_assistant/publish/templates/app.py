"""A Gradio chat with a fine-tuned assistant, published by xtuner-assistant.

At start-up it fetches the model repo (git clone, or fetch + reset of its own earlier clone so that a
republished model is picked up, then git lfs pull), then answers on the GPU when there is one, else
on the CPU. An optional system prompt box sets the assistant's instructions for the conversation.
Conversations are formatted with the tokenizer's own chat template and a reply stops at the
template's end-of-turn token: the same contract the model was trained with.

A LLaVA model (its repo holds llava.json) gets an image upload beside the chat instead, and each
question is answered about the image by image_chat.py, published beside this file: xtuner-assistant's
own image-chat code, the one `xtuner-assistant chat MODEL --image FILE` runs.
Runs with only the packages in requirements.txt (and git, git-lfs from packages.txt).
"""
import os
import subprocess
import sys
import threading
from pathlib import Path

MODEL_REPO_URL = os.environ.get("MODEL_REPO_URL", __MODEL_REPO_URL__)
MODEL_BRANCH = os.environ.get("MODEL_BRANCH", __MODEL_BRANCH__)
MODEL_DIR = Path(os.environ.get("MODEL_DIR", "model"))
TITLE = __TITLE__
EXAMPLES = __EXAMPLES__
LFS_POINTER = b"version https://git-lfs"
LLAVA_LAYOUT = "llava.json"
NO_IMAGE = "Add an image first: upload a PNG or JPEG beside the chat, then ask about it."


def fetch_model(url=MODEL_REPO_URL, folder=MODEL_DIR, branch=MODEL_BRANCH):
    """The model repo's newest commit in `folder`, with its LFS files (weights, tokenizer).

    The first start clones it; every later start fetches the branch again and moves the clone to it,
    so a republished model replaces the old one. A folder that is not this app's clone of `url` is
    never touched."""
    folder = Path(folder)
    env = dict(os.environ, GIT_LFS_SKIP_SMUDGE="1", GIT_TERMINAL_PROMPT="0")
    if (folder / ".git").is_dir():
        origin = subprocess.run(["git", "remote", "get-url", "origin"], cwd=folder, capture_output=True, text=True,
                                env=env).stdout.strip()
        if origin != url:
            raise RuntimeError(f"{folder} is a clone of {origin or 'nothing'}, not of {url}: "
                               "set MODEL_DIR to another folder")
        subprocess.run(["git", "fetch", "--depth", "1", "origin", branch], cwd=folder, check=True, env=env)
        subprocess.run(["git", "reset", "--hard", "-q", "FETCH_HEAD"], cwd=folder, check=True, env=env)
    elif folder.exists() and any(folder.iterdir()):
        raise RuntimeError(f"{folder} already holds files that are not a clone of the model repo: "
                           "set MODEL_DIR to another folder")
    else:
        subprocess.run(["git", "clone", "--depth", "1", "--branch", branch, url, str(folder)], check=True, env=env)
    subprocess.run(["git", "lfs", "pull"], cwd=folder, check=True)
    for weights in [p for pattern in ("*.safetensors", "*.bin") for p in folder.rglob(pattern) if ".git" not in p.parts]:
        with open(weights, "rb") as f:
            if f.read(len(LFS_POINTER)) == LFS_POINTER:
                raise RuntimeError(f"{weights} is still a Git LFS pointer: install git-lfs (packages.txt) and restart")
    return folder


def load(folder):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{folder}: the tokenizer has no chat template")
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=dtype).to(device).eval()
    return model, tokenizer


def end_of_turn_ids(tokenizer):
    """The token that ends an assistant turn in this template, plus the tokenizer's eos."""
    marker = "\u2063XA\u2063"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}],
                                         tokenize=False)
    after = text[text.index(marker) + len(marker):]
    ids = tokenizer.encode(after, add_special_tokens=False)[:1] if after.strip() else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def as_messages(message, history, system=""):
    """Gradio history (messages, or [user, bot] pairs in older versions) + the new message."""
    messages = [{"role": "system", "content": system}] if system else []
    for turn in history or []:
        if isinstance(turn, dict):
            messages.append({"role": turn["role"], "content": turn["content"]})
        else:
            user, bot = turn
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": bot or ""}]
    messages.append({"role": "user", "content": message})
    return messages


def control_token_in(tokenizer, messages):
    """A special token of the tokenizer (a chat-template turn marker, end of text) written in a
    message's text, or None: sent as text, it would be read as the token itself and could end the turn
    or open another."""
    specials = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    specials = {text for text in specials | set(tokenizer.all_special_tokens) if text.strip()}
    for message in messages:
        found = [text for text in specials if text in message["content"]]
        if found:
            return max(found, key=len)
    return None


def load_image_chat():
    """image_chat.py (+ chat_template.py) beside this file, which the publisher copies for a LLaVA model."""
    here = Path(__file__).resolve().parent
    if not (here / "image_chat.py").is_file():
        raise RuntimeError("the model repo now holds a LLaVA model, but this app was published for a text model: "
                           "publish the app again (xtuner-assistant publish MODEL --repo ... --app-repo ... --app-only)")
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))
    import image_chat

    return image_chat


class Assistant:
    def __init__(self, folder):
        folder = Path(folder)
        self.sees_images = (folder / LLAVA_LAYOUT).is_file()
        if self.sees_images:
            import torch

            self.image_chat = load_image_chat()
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.llava = self.image_chat.load_portable_llava(
                folder, device, torch.float16 if device == "cuda" else torch.float32)
            self.tokenizer = self.llava.tokenizer
            return
        self.model, self.tokenizer = load(folder)
        self.stop_ids = end_of_turn_ids(self.tokenizer)

    def ask_about_image(self, message, history=(), image=None, max_new_tokens=64):
        """The answer about `image` (the upload's file path) to `message`, as `chat MODEL --image FILE`
        gives it: each question is answered about the image on its own, so `history` is not used.
        No image, an empty question or a file that is not an image: one line that says so."""
        if not image:
            return NO_IMAGE
        if not (message or "").strip():
            return "Ask a question about the image."
        try:
            picture = self.image_chat.read_image(Path(image), name=Path(image).name)
        except (ValueError, FileNotFoundError) as error:
            return str(error)
        reply = self.image_chat.answer(self.llava, [picture], [message], max_new_tokens=int(max_new_tokens))[0]
        return reply or "(the model gave an empty answer)"

    def stream(self, message, history=(), system="", max_new_tokens=256, temperature=0.0, top_p=0.9):
        """Yield the reply so far, growing, as Gradio's ChatInterface expects; `system` is the system
        prompt box (empty: the chat template's own default)."""
        import torch
        from transformers import TextIteratorStreamer

        messages = as_messages(message, history, (system or "").strip())
        found = control_token_in(self.tokenizer, messages)
        if found:
            yield (f"(Not sent: the message contains {found!r}, which this model reads as a control token of "
                   "its chat template; remove it or write it differently.)")
            return
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([self.tokenizer.encode(text, add_special_tokens=False)], device=self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        sampling = (dict(do_sample=True, temperature=float(temperature), top_p=float(top_p)) if temperature > 0
                    else dict(do_sample=False, temperature=None, top_p=None, top_k=None))
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                      max_new_tokens=int(max_new_tokens), eos_token_id=self.stop_ids, pad_token_id=pad, **sampling)

        def generate():
            with torch.inference_mode():
                self.model.generate(**kwargs)

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        reply = ""
        for piece in streamer:
            reply += piece
            yield reply.strip()
        thread.join()

    def chat(self, message, history=(), **settings):
        """The whole reply at once."""
        reply = ""
        for reply in self.stream(message, history, **settings):
            pass
        return reply


def build_ui(assistant):
    import gradio as gr

    if assistant.sees_images:
        with gr.Blocks(title=TITLE) as page:
            hint = f", e.g. *{EXAMPLES[0]}*" if EXAMPLES else ""
            gr.Markdown(f"# {TITLE}\n\nUpload an image, then ask about it{hint}. Each question is answered about "
                        "the image on its own.")
            with gr.Row():
                with gr.Column(scale=2):
                    image = gr.Image(type="filepath", label="Image to ask about (PNG or JPEG)")
                    max_new_tokens = gr.Slider(8, 256, value=64, step=8, label="Max new tokens")
                with gr.Column(scale=3):
                    # Rendered above, so the chat uses them without drawing them again.
                    gr.ChatInterface(assistant.ask_about_image, type="messages", additional_inputs=[image, max_new_tokens])
        return page
    settings = [gr.Textbox(value="", label="System prompt (optional)", lines=2,
                           placeholder="Instructions for the assistant, e.g. Answer in one sentence."),
                gr.Slider(16, 1024, value=256, step=16, label="Max new tokens"),
                gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)"),
                gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")]
    # With extra inputs, each example carries a value for every one of them.
    examples = [[text] + [setting.value for setting in settings] for text in EXAMPLES] or None
    return gr.ChatInterface(assistant.stream, type="messages", title=TITLE, examples=examples,
                            additional_inputs=settings)


if __name__ == "__main__":
    build_ui(Assistant(fetch_model())).queue().launch(server_name=os.environ.get("HOST", "0.0.0.0"))
