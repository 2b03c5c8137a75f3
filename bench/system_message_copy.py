"""A model folder like MODEL whose chat template adds TEXT as the system message of a conversation that
has none, in place of the template's own default (SmolLM2's names SmolLM): the weights and every
other file are links to MODEL's, and MODEL's answers to the replay pool are cached for the copy, so
its runs replay the same answers as MODEL's. For issue 13's leak screen
(bench/gpu_session.sh leak, recipes N and S).

    python bench/system_message_copy.py MODEL OUT --text "You are a helpful AI assistant."
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from transformers import AutoTokenizer

from xtuner_assistant.chat_template import ChatTemplateError
from xtuner_assistant.data.replay import DEFAULT_MAX_NEW_TOKENS, replay_prompts
from xtuner_assistant.models.answers import base_model_answers, cached_answers


def default_system_message(tokenizer) -> str | None:
    """The system message the template puts before a conversation that has none, or None. SmolLM2's
    says "You are a helpful AI assistant named SmolLM, trained by Hugging Face", Qwen2.5's "You are
    Qwen, created by Alibaba Cloud. ...": every conversation trained or answered without a system
    message of its own is told the base model's identity."""
    marker = "\u2063XA-SYSTEM\u2063"
    user = [{"role": "user", "content": "hi"}]
    without = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    with_marker = tokenizer.apply_chat_template([{"role": "system", "content": marker}] + user, tokenize=False,
                                                add_generation_prompt=True)
    if with_marker.count(marker) != 1:
        return None
    before, after = with_marker.split(marker)
    if len(without) <= len(before) + len(after) or not (without.startswith(before) and without.endswith(after)):
        return None
    return without[len(before):len(without) - len(after)]


def replace_default_system_message(tokenizer, text: str) -> str | None:
    """Make `text` the system message the template adds to a conversation without one (the template's
    own default names the base model, so every identity conversation would be told two names). Sets
    `tokenizer.chat_template` and returns the default it replaced; None, changing nothing, where the
    template adds none. Raises ChatTemplateError where the default is not one literal string in the
    template, or the edited template does not render `text` in its place."""
    default = default_system_message(tokenizer)
    if default is None:
        return None
    if "\n" in text or "\r" in text:
        raise ChatTemplateError(f"a default system message is one line; {text!r} is not")
    template = tokenizer.chat_template
    if not isinstance(template, str) or default not in template:
        raise ChatTemplateError(f"the chat template's default system message {default!r} is not written literally "
                                "in it, so it cannot be replaced; give every conversation a system message instead")
    literal = text.replace("\\", "\\\\").replace("'", "\\'").replace('"', '\\"')
    tokenizer.chat_template = template.replace(default, literal)
    if default_system_message(tokenizer) != text:
        tokenizer.chat_template = template
        raise ChatTemplateError(f"replacing the chat template's default system message {default!r} did not render "
                                f"{text!r} in its place; give every conversation a system message instead")
    return default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--text", required=True)
    args = parser.parse_args()
    model, out = Path(args.model).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    tokenizer = AutoTokenizer.from_pretrained(model)
    replaced = replace_default_system_message(tokenizer, args.text)
    if replaced is None:
        raise SystemExit(f"{model}: its chat template adds no default system message")
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = tokenizer.chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))
    for path in model.iterdir():
        if path.name != "tokenizer_config.json":
            os.symlink(path, out / path.name)
    prompts = replay_prompts()
    answers = base_model_answers(model, prompts, DEFAULT_MAX_NEW_TOKENS)
    cached_answers(out, prompts, DEFAULT_MAX_NEW_TOKENS, lambda *_: answers)
    print(f"{out}: default system message {replaced!r} -> {args.text!r}")


if __name__ == "__main__":
    main()
