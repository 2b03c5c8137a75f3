"""The one chat-template contract: training, evaluation, terminal chat, web page and published app
all format conversations with the tokenizer's own chat template, through these functions.

Training labels cover exactly the assistant turns as the template renders them, including the
end-of-turn marker, so the model learns to stop where inference will stop.
"""
from __future__ import annotations

import re
import weakref

IGNORE_INDEX = -100
_control_tokens: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


class ChatTemplateError(ValueError):
    pass


def require_chat_template(tokenizer, where: str = "the tokenizer") -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"{where} has no chat template. xtuner-assistant formats every conversation with the "
            "model's own template; use a chat/instruct model, or set tokenizer.chat_template and "
            "save the tokenizer again."
        )


def control_tokens(tokenizer) -> re.Pattern | None:
    """What in a text this tokenizer reads as one of its special tokens (the template's turn markers,
    end of text, ...) wherever it stands; None when it has none."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    known = _control_tokens.get(tokenizer)
    if known is None or known[0] != len(decoder):  # tokens added since: look again
        texts = {token.content for token in decoder.values() if getattr(token, "special", False)}
        texts |= set(getattr(tokenizer, "all_special_tokens", None) or ())
        texts = sorted((text for text in texts if isinstance(text, str) and text.strip()), key=len, reverse=True)
        known = (len(decoder), re.compile("|".join(map(re.escape, texts))) if texts else None)
        _control_tokens[tokenizer] = known
    return known[1]


def check_plain_text(tokenizer, messages) -> None:
    """Refuse message text holding one of the tokenizer's special tokens: it would be read as the token
    itself, so a name, a data record or a chat message could end its turn and open another."""
    pattern = control_tokens(tokenizer)
    if pattern is None:
        return
    for number, message in enumerate(messages, 1):
        content = message.get("content") if isinstance(message, dict) else None
        found = pattern.search(content) if isinstance(content, str) else None
        if found:
            which = f"the {message.get('role')} message" + (f" {number}" if len(messages) > 1 else "")
            raise ChatTemplateError(
                f"{which} contains {found.group()!r}, which this model's "
                "tokenizer reads as a control token of its chat template (it would end the turn or open "
                "another); remove it or write it differently")


def render(tokenizer, messages, add_generation_prompt: bool) -> str:
    check_plain_text(tokenizer, messages)
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def encode_conversation(tokenizer, messages, max_length: int, encode_prompt=None) -> dict:
    """input_ids and labels for one conversation; labels are IGNORE_INDEX outside assistant turns.

    Each assistant turn is found by rendering the conversation up to the turn with the generation
    prompt (the prefix the model sees at inference) and up to the end of the turn.
    `encode_prompt(tokenizer, text)` tokenizes the prompt parts (LLaVA keeps image placeholders there).
    """
    input_ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        full = render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            raise ChatTemplateError(
                "the chat template does not render conversations as a growing prefix, so assistant "
                "turns cannot be located for training labels"
            )
        prompt_ids = (encode_prompt(tokenizer, prompt[len(rendered):]) if encode_prompt
                      else tokenizer.encode(prompt[len(rendered):], add_special_tokens=False))
        answer_ids = tokenizer.encode(full[len(prompt):], add_special_tokens=False)
        input_ids += prompt_ids + answer_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
        rendered = full
    input_ids, labels = input_ids[:max_length], labels[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def generation_prompt_ids(tokenizer, messages) -> list[int]:
    return tokenizer.encode(render(tokenizer, messages, add_generation_prompt=True), add_special_tokens=False)


def end_of_turn_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn in this template (plus the tokenizer's eos)."""
    marker = "\u2063XA\u2063"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
    text = render(tokenizer, messages, add_generation_prompt=False)
    after = text[text.index(marker) + len(marker):]
    ids = []
    after_ids = tokenizer.encode(after, add_special_tokens=False) if after.strip() else []
    if after_ids:
        ids.append(after_ids[0])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
