"""Load a chat model (merged folder, or base + LoRA adapter) and stream replies through its own chat
template: the one path the terminal chat, the web page and evaluation share."""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from xtuner_assistant.chat_template import end_of_turn_token_ids, generation_prompt_ids, require_chat_template
from xtuner_assistant.models.folder import ModelPathError, adapter_base, check_model_dir  # noqa: F401 (re-exported)


def load_chat_model(path: str | Path, base: str | Path | None = None, dtype=torch.float32, device: str | None = None):
    """(model, tokenizer). An adapter folder needs `base` (or reads it from adapter_config.json).
    Model folders are local and chosen by the user; InternLM2's carry their own modeling code, which the
    training configs trust too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = check_model_dir(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base = base or adapter_base(path)
        if not base:
            raise ModelPathError(f"{path / 'adapter_config.json'}: names no base model; pass the base model folder "
                                 "with --base")
        base = check_model_dir(base)
        tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=dtype, trust_remote_code=True)
        model = PeftModel.from_pretrained(model, path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, trust_remote_code=True)
    require_chat_template(tokenizer, str(path))
    model.to(device).eval()
    return model, tokenizer


def generation_kwargs(tokenizer, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                      repetition_penalty: float = 1.0) -> dict:
    eot = end_of_turn_token_ids(tokenizer)
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=eot,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eot[0],
                  repetition_penalty=repetition_penalty)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


@torch.inference_mode()
def reply(model, tokenizer, messages, **settings) -> str:
    """The whole reply to the conversation `messages` (greedy unless temperature > 0)."""
    ids = torch.tensor([generation_prompt_ids(tokenizer, messages)], device=model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **generation_kwargs(tokenizer, **settings))
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


@torch.inference_mode()
def replies(model, tokenizer, prompts: list[str], batch_size: int = 8, **settings) -> list[str]:
    """Greedy single-turn replies to many prompts, batched with left padding."""
    results = []
    kwargs = generation_kwargs(tokenizer, **settings)
    for start in range(0, len(prompts), batch_size):
        batch = [generation_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in prompts[start:start + batch_size]]
        width = max(len(ids) for ids in batch)
        pad = kwargs["pad_token_id"]
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in batch], device=model.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=model.device)
        out = model.generate(input_ids, attention_mask=attention, **kwargs)
        results += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return results


def stream_reply(model, tokenizer, messages, **settings):
    """Yield the reply piece by piece as it is generated."""
    from transformers import TextIteratorStreamer

    ids = torch.tensor([generation_prompt_ids(tokenizer, messages)], device=model.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                  **generation_kwargs(tokenizer, **settings))
    errors = []

    def run():
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as error:  # surfaced to the reader below, not lost in the thread
            errors.append(error)
            streamer.on_finalized_text("", stream_end=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]
