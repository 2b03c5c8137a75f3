"""Chinese general conversations for the small default model, answered by a larger model that speaks
Chinese: Qwen2.5-Coder-0.5B-Instruct (Apache-2.0 upstream; `xtuner-assistant model fetch qwen2.5-0.5b`).

SmolLM2-135M barely answers Chinese (60 of 240 replay prompts get a usable answer), so in training the
only fluent Chinese answers were the identity sentences, and the fine-tuned model answered Chinese
general questions with them. This writes `xtuner_assistant/data/chinese_answers.jsonl`, the packaged
general source `packaged:chinese-answers`: every Chinese prompt the replay templates can make (every
template with every topic) and the hand-written Chinese replay prompts, answered greedily in at most
three sentences, cut to whole sentences, kept only when `replay.usable` accepts the answer and it names
no model or maker. No prompt of the held-out evaluation sets is among them (checked here).

    python bench/make_chinese_answers.py --model ~/.cache/xtuner-assistant/models/qwen2.5-0.5b
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from xtuner_assistant.data import replay
from xtuner_assistant.evaluation.identity_evaluation import general_eval_prompts
from xtuner_assistant.models.generation import load_chat_model, replies
from xtuner_assistant.paths import write_jsonl_atomic

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "xtuner_assistant" / "data" / "chinese_answers.jsonl"
SYSTEM = "你是一个乐于助人的助手。请用简洁的中文回答，不超过三句话。"
# An answer that names a model or its maker teaches another identity than the user's.
NAMES_A_MAKER = re.compile(r"qwen|通义|千问|阿里|alibaba|openai|chatgpt|gpt|smollm|hugging", re.IGNORECASE)


def every_chinese_prompt() -> list[str]:
    pool = replay.prompt_pool()
    prompts = list(pool["zh"])
    for family in pool["replay_templates"]["zh"]["families"]:
        prompts += [t.replace("{x}", x) for t in family["templates"] for x in family["topics"]]
    return list(dict.fromkeys(prompts))


def held_out() -> set[str]:
    extra = json.loads((REPO / "bench" / "prompts" / "held_out_general_extra.json").read_text("utf-8"))
    prompts = {item["prompt"] for language in ("zh", "en") for item in extra[language]}
    return prompts | {item["prompt"] for item in general_eval_prompts()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Qwen2.5-Coder-0.5B-Instruct folder")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--limit", type=int, default=0, help="first N prompts only (a quick look)")
    args = parser.parse_args()

    prompts = every_chinese_prompt()
    overlap = set(prompts) & held_out()
    if overlap:
        raise SystemExit(f"held-out prompts in the pool: {sorted(overlap)}")
    prompts = prompts[:args.limit] if args.limit else prompts
    model, tokenizer = load_chat_model(args.model)
    answers, start = [], time.time()
    for first in range(0, len(prompts), args.batch_size):
        answers += replies(model, tokenizer, prompts[first:first + args.batch_size], batch_size=args.batch_size,
                           system=SYSTEM, max_new_tokens=args.max_new_tokens)
        done = len(answers)
        eta = (time.time() - start) / done * (len(prompts) - done)
        print(f"{done}/{len(prompts)} prompts, {time.time() - start:.0f} s, ETA {eta:.0f} s", flush=True)

    kept = []
    for prompt, answer in zip(prompts, answers):
        answer = replay.whole_sentences(answer)
        if replay.usable(prompt, answer) and not NAMES_A_MAKER.search(answer):
            kept.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]})
    write_jsonl_atomic(Path(args.out), kept)
    print(f"{len(kept)} of {len(prompts)} answers kept -> {args.out} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
