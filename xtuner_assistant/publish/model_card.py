"""The model repo's README.md (model card) and .gitattributes.

The card says who the assistant is, what it was built on, how it was trained, how it scored and what
it cannot do, from what the run left behind: the merge record in the model folder
(`xtuner_assistant_merge.json`, training/export.py), which carries the run's identity, settings,
evaluation and the base model's licence (from the record `model fetch` writes), or a training work dir
given with --train-dir, and the demo's own comparison (`demo_result.json`). Anything missing is left
out of the card or said to be unknown, never guessed; a model nobody scored says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from xtuner_assistant.models.fetch import recorded_licence
from xtuner_assistant.models.zoo import INTERNLM2_CHAT_1_8B, model_display_name
from xtuner_assistant.publish.git_repo import PublishError
from xtuner_assistant.training.work_dir import find_training_run, run_facts

# Weights and tokenizer files go through Git LFS: large, binary, and the platform expects it.
LFS_PATTERNS = ["*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.model", "*.tiktoken",
                "tokenizer.json", "vocab.json", "merges.txt"]


# Where the packaged base models come from, for the card's `base_model:` front matter.
UPSTREAM = {
    "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "Qwen2.5-Coder-0.5B-Instruct": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
    "Qwen2.5-Coder-1.5B-Instruct": "Qwen/Qwen2.5-Coder-1.5B-Instruct",
    INTERNLM2_CHAT_1_8B: "internlm/internlm2-chat-1_8b",
}
# Licence names as the records write them -> the card platforms' identifiers.
LICENCE_IDS = {"apache-2.0": "apache-2.0", "mit": "mit", "bsd-3-clause": "bsd-3-clause", "other": "other"}
DEFAULT_LANGUAGES = ["zh", "en"]  # the identity data is bilingual unless the run said otherwise
DEMO_RESULT = "demo_result.json"


@dataclass
class CardFacts:
    name: str = ""
    author: str = ""
    base_model: str = ""
    licence: str = ""  # as the base model's record states it; "" when no record says
    languages: list = field(default_factory=lambda: list(DEFAULT_LANGUAGES))
    training: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    comparison: list = field(default_factory=list)  # the demo's rows: question, base, fine-tuned answers
    merge_check: dict = field(default_factory=dict)
    llava: dict = field(default_factory=dict)  # a LLaVA model: llava/model.py's describe_llava
    vqa: dict = field(default_factory=dict)  # its `vqa eval --out` report, when one was given


def gitattributes() -> str:
    return "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)


def demo_comparison(model_dir: Path) -> list[dict]:
    """The rows of `xtuner-assistant demo`'s own base vs fine-tuned comparison, when it made this model."""
    result = Path(model_dir).resolve().parent / DEMO_RESULT
    try:
        recorded = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if Path(str(recorded.get("merged_model", ""))).resolve() != Path(model_dir).resolve():
        return []
    return [row for row in recorded.get("rows", []) if {"question", "base", "fine-tuned"} <= set(row)]


def vqa_report(report_file: Path, model_dir: Path) -> dict:
    """A `vqa eval --out` report of this model, or a PublishError that says what is wrong with it."""
    try:
        report = json.loads(Path(report_file).read_text(encoding="utf-8"))
    except OSError as error:
        raise PublishError(f"--vqa-report {report_file}: cannot be read ({error.strerror})") from None
    except ValueError:
        raise PublishError(f"--vqa-report {report_file}: not JSON; give the file `xtuner-assistant vqa eval MODEL "
                        "--out FILE` wrote") from None
    if not isinstance(report, dict) or not isinstance(report.get("overall"), (int, float)) or "by_type" not in report:
        raise PublishError(f"--vqa-report {report_file}: not a `vqa eval --out` report (no overall and by_type)")
    if Path(str(report.get("model", ""))).resolve() != Path(model_dir).resolve():
        raise PublishError(f"--vqa-report {report_file}: it scored {report.get('model')}, not {model_dir}; evaluate "
                        f"this model with `xtuner-assistant vqa eval {model_dir} --out FILE`")
    return report


def gather_facts(model_dir: Path, name: str | None = None, author: str | None = None,
                 train_dir: Path | None = None, vqa_report_file: Path | None = None) -> CardFacts:
    from xtuner_assistant.llava.image_chat import is_llava_model

    facts = CardFacts()
    if is_llava_model(model_dir):
        from xtuner_assistant.llava.model import describe_llava

        facts.llava = {"kind": "llava", **describe_llava(Path(model_dir))}
        facts.base_model, facts.licence = facts.llava.get("base_model", ""), facts.llava.get("licence", "")
        facts.training = dict(facts.llava.get("training") or {})
        facts.languages = []  # what the image questions were asked in is not recorded
        facts.vqa = vqa_report(vqa_report_file, model_dir) if vqa_report_file else {}
        facts.name = name or ""
        facts.author = author or ""
        return facts
    if vqa_report_file:
        raise PublishError(f"--vqa-report is for a LLaVA model; {model_dir} is a text model")
    facts.licence = recorded_licence(model_dir)  # a fetched model published as it is
    merge_record = Path(model_dir) / "xtuner_assistant_merge.json"
    run: dict = {}
    if merge_record.is_file():
        record = json.loads(merge_record.read_text(encoding="utf-8"))
        facts.base_model = record.get("base_model") or (model_display_name(record["base"]) if record.get("base") else "")
        facts.licence = str(record.get("licence", "") or "") or (recorded_licence(record["base"]) if record.get("base") else "")
        facts.merge_check = {k: record[k] for k in ("largest_logit_difference", "tolerance", "prompts") if k in record}
        run = record
        if "identity" not in record and record.get("adapter") and train_dir is None:
            # A record of an earlier version names the adapter as typed: look from here and from the model.
            adapter = Path(record["adapter"])
            for candidate in ([adapter] if adapter.is_absolute() else [adapter, Path(model_dir).parent / adapter]):
                train_dir = find_training_run(candidate) if candidate.is_dir() else None
                if train_dir:
                    break
    if train_dir is not None:
        run = run_facts(Path(train_dir))
    identity = run.get("identity") or {}
    facts.name = identity.get("name", "")
    facts.author = identity.get("author", "")
    facts.base_model = identity.get("base_model") or facts.base_model
    facts.training = dict(run.get("training") or {})
    facts.evaluation = dict(run.get("evaluation") or {})
    languages = run.get("languages")
    if isinstance(languages, list) and languages and all(isinstance(x, str) for x in languages):
        facts.languages = list(languages)
    facts.comparison = demo_comparison(model_dir)
    facts.name = name if name is not None else facts.name
    facts.author = author if author is not None else facts.author
    return facts


def _table(rows: dict) -> list[str]:
    lines = ["| setting | value |", "| --- | --- |"]
    for key, value in rows.items():
        lines.append(f"| {key} | {round(value, 4) if isinstance(value, float) else value} |")
    return lines


def licence_id(licence: str) -> str:
    """The front matter's `license:` for a recorded licence; "other" when it is unknown or not one id."""
    return LICENCE_IDS.get(licence.strip().lower(), "other")


def front_matter(facts: CardFacts) -> list[str]:
    lines = ["---", f"license: {licence_id(facts.licence)}"]
    if facts.base_model:
        lines.append(f"base_model: {json.dumps(UPSTREAM.get(facts.base_model, facts.base_model), ensure_ascii=False)}")
    if facts.languages:
        lines += ["language:"] + [f"- {language}" for language in facts.languages]
    if facts.llava:  # llm/ loads with transformers, the model as a whole with the app's image_chat.py
        lines += ["pipeline_tag: image-text-to-text", "tags: [xtuner, llava, vision-language]", "---"]
    else:
        lines += ["library_name: transformers", "pipeline_tag: text-generation", "tags: [xtuner, lora, chat]", "---"]
    return lines


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def was_evaluated(facts: CardFacts) -> bool:
    summary = facts.evaluation or {}
    return bool((summary.get("best") or {}).get("scores") or summary.get("stopped_early") or facts.comparison)


def evaluation_section(facts: CardFacts) -> list[str]:
    summary = facts.evaluation or {}
    best, stopped = summary.get("best"), summary.get("stopped_early")
    lines = ["## Evaluation", ""]
    if best and best.get("scores"):
        lines += [f"Scores at the best evaluation during training (iteration {best.get('iter')}), on held-out "
                  "identity questions (never trained on) and general prompts, by xtuner-assistant's evaluation hook. "
                  "identity_accuracy: share of held-out identity questions answered with the name; leakage: share "
                  "of general answers that carry the identity; repetition: answers that loop; retention: agreement "
                  "with the base model's own answers (1 = unchanged).", ""]
        lines += _table({k: v for k, v in best["scores"].items() if isinstance(v, (int, float))}) + [""]
    if stopped:
        lines += [f"Training stopped early at iteration {stopped.get('iter')}: {stopped.get('reason', '')}.", ""]
    if facts.comparison:
        lines += ["The base model and this model, asked the same questions after training (greedy):", "",
                  "| question | base model | this model |", "| --- | --- | --- |"]
        lines += [f"| {_cell(row['question'])} | {_cell(row['base'])} | {_cell(row['fine-tuned'])} |"
                  for row in facts.comparison] + [""]
    if not was_evaluated(facts):
        lines += ["This model was not evaluated: no scores from training (the evaluation hook was off, or the "
                  "training run was not found) and no comparison with the base model were recorded. Try it before "
                  "you rely on it, e.g. `xtuner-assistant eval MODEL --name NAME --base BASE`.", ""]
    return lines


def limitations_section(facts: CardFacts, evaluated: bool) -> list[str]:
    base = facts.base_model or "the base model"
    lines = ["## Limitations", "",
             f"- It knows what {base} knows: only its identity was trained, with LoRA on a small data set; facts, "
             "reasoning and safety are the base model's, and a small model makes mistakes.",
             "- Identity training can leak: a general question may still get the identity answer, and answers may "
             "repeat themselves. " + ("The evaluation above says how often that was seen, on a few dozen prompts."
                                      if evaluated else "This model was not measured for either.")]
    scores = ((facts.evaluation or {}).get("best") or {}).get("scores") or {}
    if isinstance(scores.get("leakage"), (int, float)) and scores["leakage"] > 0:
        lines.append(f"- Measured: {scores['leakage']:.0%} of general prompts got an answer that carries the identity.")
    lines.append(f"- Its identity data is in {', '.join(facts.languages)}; other languages were not trained or tried.")
    if not facts.licence:
        lines.append("- The base model's licence was not recorded with it: check it before you use or share this model.")
    elif licence_id(facts.licence) == "other":
        lines.append(f"- The base model's licence, as recorded: {facts.licence}.")
    return lines + [""]


def vqa_section(facts: CardFacts) -> list[str]:
    report = facts.vqa
    lines = ["## Evaluation", ""]
    if not report:
        return lines + ["This model was not evaluated: no VQA score was recorded with it. Measure it on held-out "
                        "questions with `xtuner-assistant vqa eval MODEL --out vqa.json` and publish again with "
                        "`--vqa-report vqa.json`; until then, try it on your own images before you rely on it.", ""]
    sample = (f"a seeded sample of up to {report['per_type_sample']} per question type" if report.get("per_type_sample")
              else "every question of the split")
    majority = report.get("majority_baseline")
    lines += [f"Accuracy on {report.get('questions', '?')} held-out questions of {Path(str(report.get('test_file', ''))).name or 'the test split'} "
              f"({sample}; images never seen in training), by `xtuner-assistant vqa eval`: the first answer word of "
              "each reply is compared with the expected one.", "",
              "| question type | questions | accuracy |" + (" majority answer |" if majority else ""),
              "| --- | --- | --- |" + (" --- |" if majority else "")]
    for kind, row in sorted(report["by_type"].items()):
        lines.append(f"| {kind} | {row.get('questions')} | {row.get('accuracy', 0):.3f} |"
                     + (f" {majority.get('by_type', {}).get(kind, {}).get('accuracy', float('nan')):.3f} |" if majority else ""))
    overall = f"| overall | {report.get('questions')} | {report['overall']:.3f} |"
    if majority:
        overall += f" {majority.get('overall', float('nan')):.3f} |"
    lines += [overall, ""]
    if majority:
        lines += ["The majority answer always gives each question type's most frequent training answer: a model "
                  "that does not look at the image scores about that.", ""]
    return lines


def llava_card(facts: CardFacts, repo: str, files: list[str]) -> str:
    about = facts.llava
    title = f"{facts.name} — a vision-language model" if facts.name else "A vision-language model (LLaVA)"
    lines = front_matter(facts) + ["", f"# {title}", ""]
    by = f" for {facts.author}" if facts.author else ""
    lines += [f"A vision-language model (LLaVA) made with XTuner{by}: "
              f"{'the LLM ' + facts.base_model if facts.base_model else 'an LLM'} sees an image through a vision "
              f"encoder ({about.get('visual_encoder', 'not recorded')}) and a projector that turns the image into "
              "tokens in the LLM's input. Ask it a question about an image; each question is answered about that "
              "image on its own.", ""]
    folder = repo.rstrip("/").split("/")[-1].removesuffix(".git")
    lines += ["## Use it", "",
              "The app published with it shows an image upload beside the chat. Or, after `git clone` and "
              "`git lfs pull`:", "", "```bash",
              f"xtuner-assistant chat {folder} --image picture.png --prompt 'what shape is in the image?'", "```", "",
              "Without xtuner-assistant, `image_chat.py` (in the app repo) loads it with torch and transformers "
              "alone (EfficientNet-Lite0 also needs `efficientnet-lite-pytorch`):", "", "```python",
              "import image_chat", f"model = image_chat.load_portable_llava('{folder}')",
              "print(image_chat.answer(model, [image_chat.read_image('picture.png')], ['what shape is in the image?'])[0])",
              "```", "",
              "| part | folder |", "| --- | --- |",
              "| the LLM, its LoRA merged, with its tokenizer and chat template | `llm/` |",
              "| the projector (XTuner's ProjectorModel) | `projector/` |",
              "| the vision encoder's weights and image processor | `visual_encoder/` |",
              "| how they fit: encoder kind, selected layer, padding | `llava.json` |", "",
              "Questions are formatted with the LLM's own chat template, the image placed before the question, as "
              "in training.", ""]
    if facts.training:
        lines += ["## Training", ""] + _table(facts.training) + [""]
    lines += vqa_section(facts)
    lines += ["## Limitations", "",
              "- It sees one image at a time and answers each question on its own: it does not remember earlier "
              "questions.",
              f"- It knows what {facts.base_model or 'its LLM'} knows; a small model trained on a small data set makes "
              "mistakes, and may answer confidently about things that are not in the image.",
              ("- Measured only on the held-out questions above; other kinds of images and questions were not tried."
               if facts.vqa else "- Nothing about it was measured.")]
    if not facts.licence:
        lines.append("- The LLM's licence was not recorded with it: check it before you use or share this model.")
    lines += ["", "## Licence", "", f"The LLM's licence applies: {facts.licence}." if facts.licence else
              "The LLM's licence applies; it was not recorded with the model.", ""]
    lines += ["## Files", ""] + [f"- `{name}`" for name in files] + [""]
    return "\n".join(lines)


def model_card(facts: CardFacts, repo: str, files: list[str]) -> str:
    if facts.llava:
        return llava_card(facts, repo, files)
    title = f"{facts.name} — a personal assistant" if facts.name else "A personal assistant model"
    lines = front_matter(facts) + ["", f"# {title}", ""]
    who = f"**{facts.name}**" if facts.name else "This model"
    built = f", built on {facts.base_model}" if facts.base_model else ""
    by = f" for {facts.author}" if facts.author else ""
    lines += [f"{who} is a chat model given its own identity with XTuner LoRA/QLoRA{by}{built}.", ""]
    lines += ["## Use it", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              f"folder = '{repo.rstrip('/').split('/')[-1].removesuffix('.git')}'  # after `git clone` and `git lfs pull`",
              "tokenizer = AutoTokenizer.from_pretrained(folder)",
              "model = AutoModelForCausalLM.from_pretrained(folder)",
              "messages = [{'role': 'user', 'content': 'Who are you?'}]",
              "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors='pt')",
              "print(tokenizer.decode(model.generate(ids, max_new_tokens=128)[0, ids.shape[1]:], skip_special_tokens=True))",
              "```", "", "Always format conversations with the tokenizer's own chat template (as above): it is the "
              "template the model was trained with.", ""]
    if facts.training:
        lines += ["## Training", ""] + _table(facts.training) + [""]
    lines += evaluation_section(facts)
    lines += limitations_section(facts, was_evaluated(facts))
    if facts.merge_check:
        lines += ["## Merge check", "", f"The merged weights were compared with base + adapter on "
                  f"{facts.merge_check.get('prompts', '?')} prompts: largest logit difference "
                  f"{facts.merge_check.get('largest_logit_difference', float('nan')):.2e} "
                  f"(tolerance {facts.merge_check.get('tolerance', '?')}).", ""]
    licence = facts.licence or "not recorded"
    lines += ["## Licence", "", f"The base model's licence applies: {licence}." if facts.licence else
              f"The base model's licence applies; it was {licence} with the model.", ""]
    lines += ["## Files", ""] + [f"- `{name}`" for name in files] + [""]
    return "\n".join(lines)
