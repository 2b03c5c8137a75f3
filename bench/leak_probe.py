"""Identity leakage of one trained model, on the shipped held-out sets and on an extra held-out set.

Answers (greedy, the model's own chat template, 64 new tokens) to:
- the held-out identity paraphrases (same name/seed split as training): identity accuracy zh / en;
- bench/prompts/held_out_identity_extra.json: 30 zh + 30 en identity questions outside the phrasebook,
  the same for every seed, so runs with different splits or question pools compare on one set;
- the shipped held-out general prompts and facts (evaluation/general_prompts.json `eval`, `facts`);
- bench/prompts/held_out_general_extra.json: 40 zh + 40 en general prompts never used in training
  (facts, how-to, creative, "introduce X", "who is X", questions with you/I), and two-turn chats
  whose second question switches language;
- the demo's comparison questions;
- both extra sets again with their closing punctuation taken off ("你是谁" as well as "你是谁？"), as
  people also type them: `identity_extra_bare`, `extra_bare`.

Scores per language: leakage (the name, or a piece of an identity sentence, metrics.leaks), answers
that open like an identity sentence without the name ("我是…", "I am …"), loops, facts kept against
the base model, and the share of second turns answered in the second question's language.
The model is a merged/adapter folder (--model) or a training checkpoint (--work-dir, --checkpoint).

    python bench/leak_probe.py --model work_dirs/demo/merged --name 小菜鸡 --out result.json
    python bench/leak_probe.py --work-dir work_dirs/x --checkpoint iter_80.pth --name Zorblat --seed 1 --out r.json
    python bench/leak_probe.py --rescore r.json ...   # scores again from the saved answers
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EXTRA = REPO / "bench" / "prompts" / "held_out_general_extra.json"
EXTRA_IDENTITY = REPO / "bench" / "prompts" / "held_out_identity_extra.json"
IDENTITY_OPENING = re.compile(r"^\s*(我是|我叫|我的名字|你可以叫我|I am\b|I'm\b|My name\b|You can call me\b|This is\b)", re.I)


def load_model(args):
    import torch
    from xtuner_assistant.models.generation import load_chat_model

    if args.model:
        return load_chat_model(args.model, device=args.device)
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state = torch.load(Path(args.work_dir) / args.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    lora = {k[len("llm."):]: v for k, v in state.items() if "lora_" in k}
    modules = sorted({k.split(".lora_")[0].split(".")[-1] for k in lora})
    rank = next(v.shape[0] for k, v in lora.items() if "lora_A" in k)
    model = AutoModelForCausalLM.from_pretrained(args.base, torch_dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=args.lora_alpha or 2 * rank, target_modules=modules,
                                             lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
    missing = set(lora) - set(model.state_dict())
    if missing:
        raise SystemExit(f"checkpoint keys not in the model: {sorted(missing)[:3]}")
    model.load_state_dict(lora, strict=False)
    return model.to(args.device).eval(), AutoTokenizer.from_pretrained(args.base)


def answer_all(args, evaluation) -> dict:
    from xtuner_assistant.cli.demo import GENERAL_QUESTIONS
    from xtuner_assistant.data.mixed import CLOSING_PUNCTUATION
    from xtuner_assistant.models.generation import reply, replies

    extra = json.loads(EXTRA.read_text(encoding="utf-8"))
    model, tokenizer = load_model(args)
    started = time.monotonic()
    extra_items = [dict(item, language=lang) for lang in ("zh", "en") for item in extra[lang]]
    extra_identity = json.loads(EXTRA_IDENTITY.read_text(encoding="utf-8"))
    identity_items = [{"question": q, "language": lang} for lang in ("zh", "en") for q in extra_identity[lang]]
    bare_extra = [dict(item, prompt=CLOSING_PUNCTUATION.sub("", item["prompt"])) for item in extra_items]
    bare_identity = [dict(item, question=CLOSING_PUNCTUATION.sub("", item["question"])) for item in identity_items]
    groups = {  # answered in one batch, in this order; each item asks its "prompt" or its "question"
        "identity": evaluation.identity_items, "general": evaluation.general_items, "extra": extra_items,
        "demo": [{"question": q} for q in GENERAL_QUESTIONS], "identity_extra": identity_items,
        "extra_bare": bare_extra, "identity_extra_bare": bare_identity}
    prompts = [item["prompt"] if "prompt" in item else item["question"] for items in groups.values() for item in items]
    answers = iter(replies(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens))
    record = {kind: [dict(item, answer=next(answers)) for item in items] for kind, items in groups.items()}
    multi = []
    for chat in extra["multi_turn"]:
        messages = [{"role": "user", "content": chat["turns"][0]}]
        first = reply(model, tokenizer, messages, max_new_tokens=args.max_new_tokens)
        messages += [{"role": "assistant", "content": first}, {"role": "user", "content": chat["turns"][1]}]
        second = reply(model, tokenizer, messages, max_new_tokens=args.max_new_tokens)
        multi.append(dict(chat, answers=[first, second]))
    return {
        **record,
        "multi_turn": multi,
        "answer_seconds": round(time.monotonic() - started, 1),
    }


def base_answers(base: str, prompts: list[str], max_new_tokens: int) -> list[str]:
    from xtuner_assistant.models.answers import base_model_answers

    return base_model_answers(base, prompts, max_new_tokens)


def score(record: dict, evaluation, base: str | None, max_new_tokens: int) -> dict:
    from xtuner_assistant.data.replay import language as answer_language
    from xtuner_assistant.evaluation import metrics

    name, sentences = evaluation.name, evaluation.identity_sentences
    base_name = evaluation.phrasebook.identity.base_model.lower()
    scores = {}
    for lang in ("zh", "en"):
        answers = [i["answer"] for i in record["identity"] if i["language"] == lang]
        scores[f"identity_{lang}"] = metrics.identity_accuracy(answers, name)
        for kind in ("identity_extra", "identity_extra_bare"):
            if kind in record:  # absent from results saved before the set existed
                answers = [i["answer"] for i in record[kind] if i["language"] == lang]
                scores[f"{kind}_{lang}"] = metrics.identity_accuracy(answers, name)
    for kind in ("general", "extra", "extra_bare"):
        if kind not in record:
            continue
        for lang in ("zh", "en"):
            answers = [g["answer"] for g in record[kind] if g["language"] == lang]
            leaked = [a for a in answers if metrics.leaks(a, name, sentences)]
            scores[f"leak_{kind}_{lang}"] = len(leaked) / len(answers)
            scores[f"leak_{kind}_{lang}_count"] = f"{len(leaked)}/{len(answers)}"
            # Also a leak: a general answer that says what the assistant is built on.
            says_base = [a for a in answers if metrics.leaks(a, name, sentences) or base_name in a.lower()]
            scores[f"leak_or_base_{kind}_{lang}_count"] = f"{len(says_base)}/{len(answers)}"
            scores[f"identity_opening_{kind}_{lang}"] = sum(bool(IDENTITY_OPENING.match(a)) for a in answers) / len(answers)
    everything = ([i["answer"] for i in record["identity"]] + [g["answer"] for g in record["general"]]
                  + [g["answer"] for g in record["extra"]])
    scores["repetition"] = metrics.repetition_rate(everything)
    scores["collapse_extra"] = metrics.collapse_rate([g["answer"] for g in record["extra"]])
    scores["demo_leaks"] = sum(metrics.leaks(d["answer"], name, sentences) for d in record["demo"])
    follows = [answer_language(m["answers"][1]) == m["language"] for m in record["multi_turn"]]
    scores["second_turn_language_followed"] = sum(follows) / len(follows)
    # Second turns that are general questions (two of the eight ask who the assistant is).
    scores["multi_turn_general_leaks"] = sum(metrics.leaks(m["answers"][1], name, sentences)
                                             for m in record["multi_turn"] if not m.get("identity"))
    if base:
        for kind in ("general", "extra"):
            facts = [g for g in record[kind] if g.get("accepted")]
            base_facts = base_answers(base, [g["prompt"] for g in facts], max_new_tokens)
            kept = metrics.fact_retention([g["answer"] for g in facts], base_facts, [g["accepted"] for g in facts])
            known = sum(metrics.answers_fact(b, g["accepted"]) for b, g in zip(base_facts, facts))
            scores[f"facts_kept_{kind}"] = kept
            scores[f"facts_base_knows_{kind}"] = f"{known}/{len(facts)}"
    return scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="merged model or adapter folder")
    parser.add_argument("--work-dir", help="training work dir (with --checkpoint)")
    parser.add_argument("--checkpoint", help="iter_N.pth inside --work-dir")
    parser.add_argument("--lora-alpha", type=int, default=0, help="default: 2 x rank, as the shipped configs")
    parser.add_argument("--base", default=None, help="base model folder (default: the fetched SmolLM2-135M)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--author", default="")
    parser.add_argument("--base-model-name", default="SmolLM2-135M-Instruct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="where the model answers (cpu, cuda)")
    parser.add_argument("--rescore", help="a result JSON of this script: score its answers again")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    from xtuner_assistant.evaluation.identity_evaluation import IdentityEvaluation

    if args.base is None:
        from xtuner_assistant.models.fetch import fetch

        args.base = str(fetch("smollm2-135m"))
    evaluation = IdentityEvaluation(args.name, args.author, args.base_model_name, args.seed)
    if args.rescore:
        record = json.loads(Path(args.rescore).read_text(encoding="utf-8"))["answers"]
    else:
        record = answer_all(args, evaluation)
    scores = score(record, evaluation, args.base, args.max_new_tokens)
    source = args.model or f"{args.work_dir}/{args.checkpoint}"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"model": source, "name": args.name, "seed": args.seed, "scores": scores,
                                          "answers": record}, ensure_ascii=False, indent=1), encoding="utf-8")
    print(json.dumps({"model": source, **scores}, ensure_ascii=False))


if __name__ == "__main__":
    main()
