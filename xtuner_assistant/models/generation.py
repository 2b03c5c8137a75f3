"""Load a chat model (merged folder, or base + LoRA adapter) and stream replies through its own chat
template: the one path the terminal chat, the web page and evaluation share."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from xtuner_assistant.chat_template import end_of_turn_token_ids, generation_prompt_ids, require_chat_template
from xtuner_assistant.models import static_decoding
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


# Prompts decoded together unless a caller says otherwise. A decoding step reads every weight once whatever
# the batch, so a larger batch costs little more a step until the arithmetic catches up: on a CPU too
# (docs/BENCHMARKS.md, "The two commands").
BATCH_SIZE = 64


def left_padded(rows: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token rows padded on the left to the longest, as decoding a batch needs."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in rows], device=device)
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=device)
    return input_ids, attention


@torch.inference_mode()
def replies(model, tokenizer, prompts: list[str], batch_size: int = BATCH_SIZE, system: str = "",
            **settings) -> list[str]:
    """Greedy single-turn replies to many prompts (after `system`, if given), batched with left padding; on a
    GPU each token is one replay of a CUDA graph where the model allows it (static_decoding.py)."""
    results = []
    kwargs = generation_kwargs(tokenizer, **settings)
    opening = [{"role": "system", "content": system}] if system else []
    for start in range(0, len(prompts), batch_size):
        batch = [generation_prompt_ids(tokenizer, opening + [{"role": "user", "content": p}])
                 for p in prompts[start:start + batch_size]]
        input_ids, attention = left_padded(batch, kwargs["pad_token_id"], model.device)
        out = None
        if static_decoding.usable(model, kwargs):
            try:
                out = static_decoding.greedy_decode(model, input_ids, attention, kwargs["max_new_tokens"],
                                                    kwargs["eos_token_id"], kwargs["pad_token_id"])
            except Exception as error:  # noqa: BLE001 -- an architecture whose forward the static loop does not fit
                static_decoding.give_up(model, error)
        if out is None:
            out = model.generate(input_ids, attention_mask=attention, **kwargs)
        width = input_ids.shape[1]
        results += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return results


def _dequantized_4bit_weight(layer):
    """The frozen weight of a bitsandbytes 4-bit linear layer in its compute dtype, or None for any other layer."""
    weight = getattr(layer, "weight", None)
    quant_state = getattr(weight, "quant_state", None)
    if quant_state is None:
        return None
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(weight.data, quant_state)


def _plain_linear(weight, bias):
    def forward(x, *args, **kwargs):
        return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).to(x.dtype)

    return forward


@contextmanager
def adapter_merged_for_generation(model, dequantize=_dequantized_4bit_weight, free_memory_share: float = 0.5):
    """Inside the block, each LoRA layer over a 4-bit frozen weight answers through one matrix product of
    its weight dequantized once plus the adapter's update, the weights `merge` writes. Token by token, a
    4-bit layer dequantizes its weight again at every step and the adapter adds four operations: on a
    GPU the launches, not the arithmetic, set the pace (docs/BENCHMARKS.md). Yields how many layers
    were merged: none where nothing is 4-bit, where adapters are merged, disabled or DoRA, or where the
    dequantized weights would take more than `free_memory_share` of the GPU's free memory (the 4-bit
    path, slower, stays). Everything is as before afterwards."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer) and not m.merged and not m.disable_adapters
              and not any(getattr(m, "use_dora", {}).values())]
    merged, budget = [], None
    try:
        for layer in layers:
            base = layer.get_base_layer()
            quant_state = getattr(getattr(base, "weight", None), "quant_state", None)
            if quant_state is not None and base.weight.is_cuda:
                if budget is None:  # free on the card, and kept free by PyTorch's allocator
                    device = base.weight.device
                    budget = free_memory_share * (torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
                                                  - torch.cuda.memory_allocated(device))
                budget -= quant_state.shape.numel() * torch.finfo(quant_state.dtype).bits // 8
                if budget < 0:
                    break
            with torch.no_grad():  # the adapter's weights require grad; the merged copy must not keep a graph
                weight = dequantize(base)
                if weight is None:
                    continue
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
                bias = base.bias.to(weight.dtype) if getattr(base, "bias", None) is not None else None
            layer.forward = _plain_linear(weight, bias)  # an instance attribute: the class's forward comes back on del
            merged.append(layer)
        yield len(merged)
    finally:
        for layer in merged:
            del layer.forward


class ContextError(ValueError):
    """A prompt that does not fit in the model's context, even with every earlier turn left out."""


def context_length(model, tokenizer=None) -> int:
    """How many tokens the model reads at most: its position limit (or the tokenizer's, when smaller)."""
    config = model.config
    limits = [getattr(config, key, None) for key in ("max_position_embeddings", "n_positions", "seq_length")]
    limits = [int(limit) for limit in limits if isinstance(limit, int) and limit > 0]
    from_tokenizer = getattr(tokenizer, "model_max_length", None)
    if isinstance(from_tokenizer, int) and 0 < from_tokenizer < 10_000_000:
        limits.append(from_tokenizer)
    return min(limits) if limits else 2048


def fit_to_context(tokenizer, messages: list[dict], context: int, max_new_tokens: int):
    """What of `messages` (system?, turns..., the new question) is sent so the prompt fits the context.

    The oldest turns are left out first; the system message and the new question always stay.
    Returns (messages to send, prompt tokens, turns left out, max new tokens that still fit); raises
    ContextError when the system message and the question alone do not fit."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):-1]
    question = messages[-1:]
    dropped = 0
    while True:
        kept = system + turns[dropped:] + question
        tokens = len(generation_prompt_ids(tokenizer, kept))
        if tokens < context:
            return kept, tokens, dropped // 2, min(max_new_tokens, context - tokens)
        if dropped >= len(turns):
            raise ContextError(f"the question is {tokens:,} tokens with the chat template"
                               f"{' and the system message' if system else ''}; this model reads at most "
                               f"{context:,}. Shorten it.")
        dropped += 2  # a question and its answer


class _StopWhenSet:
    """A StoppingCriteria that ends generation as soon as `event` is set (checked after every token)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ReplyStream:
    """One reply generated in a background thread. Iterate for the pieces as they come, or `take()`
    what arrived so far without waiting; `stop()` ends generation within one token, so a reader that
    goes away never leaves the model computing."""

    def __init__(self, model, tokenizer, messages, stop_event: threading.Event | None = None, **settings):
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        self.stop_event = stop_event or threading.Event()
        ids = torch.tensor([generation_prompt_ids(tokenizer, messages)], device=model.device)
        self.streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=self.streamer,
                      stopping_criteria=StoppingCriteriaList([_StopWhenSet(self.stop_event)]),
                      **generation_kwargs(tokenizer, **settings))
        self.errors: list[BaseException] = []
        self.finished = False

        def run():
            try:
                with torch.inference_mode():
                    model.generate(**kwargs)
            except BaseException as error:  # surfaced to the reader, not lost in the thread
                self.errors.append(error)
                self.streamer.on_finalized_text("", stream_end=True)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def take(self) -> str:
        """The text that arrived since the last call, without waiting; sets `finished` at the end."""
        import queue

        pieces = []
        while not self.finished:
            try:
                piece = self.streamer.text_queue.get_nowait()
            except queue.Empty:
                break
            if piece is self.streamer.stop_signal:
                self.finished = True
                self._raise_error()
            else:
                pieces.append(piece)
        return "".join(pieces)

    def __iter__(self):
        for piece in self.streamer:
            yield piece
        self.finished = True
        self._raise_error()

    def _raise_error(self) -> None:
        self.thread.join()
        if self.errors:
            raise self.errors[0]


def stream_reply(model, tokenizer, messages, stop_event: threading.Event | None = None, **settings):
    """Yield the reply piece by piece as it is generated. Closing the generator early (a reader that
    stops reading, Ctrl-C) stops the generation too."""
    stream = ReplyStream(model, tokenizer, messages, stop_event, **settings)
    try:
        yield from stream
    finally:
        stream.stop()
