"""`eval TARGET`: identity accuracy, leakage, repetition, collapse and retention of a model or a run.

- a work dir trained with IdentityEvalHook: a JSON report of every evaluation, a PNG plot of the
  metrics over the iterations, and the best checkpoint named;
- a model folder (merged, or a LoRA adapter): the same held-out questions and general prompts
  answered now, scored, and written as a JSON report plus a readable text file.
"""
import sys
from pathlib import Path

from xtuner_assistant.evaluation import records


def register(subparsers):
    parser = subparsers.add_parser("eval", help="score identity/leakage/collapse/retention of a model or work dir")
    parser.add_argument("target", help="a work dir of `xtuner-assistant train`, or a model/adapter folder")
    parser.add_argument("--name", help="the assistant's name (model folders; a work dir knows it)")
    parser.add_argument("--author", default="", help="as given to training (sets the identity sentences)")
    parser.add_argument("--base-model-name", default="", help="what the identity says it is built on")
    parser.add_argument("--seed", type=int, default=0, help="identity data seed: decides the held-out questions")
    parser.add_argument("--base", help="base model folder: its answers are the retention reference "
                                       "(default for an adapter: its base model)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rescore", action="store_true",
                        help="work dir: score the saved answers again with the current metrics")
    parser.add_argument("--out", help="folder for the report (default: WORK_DIR/identity_eval, or MODEL/../eval_NAME)")
    parser.add_argument("--force", action="store_true",
                        help="replace report files in --out even if xtuner-assistant did not write them")
    parser.set_defaults(run=run)


def run(args):
    target = Path(args.target)
    if records.history_file(target).is_file():
        # The default folder is the evaluation hook's own, where earlier reports are ours to replace.
        return report_work_dir(target, Path(args.out) if args.out else records.eval_dir(target), args.rescore,
                               args.force or not args.out)
    if (target / "config.json").is_file() or (target / "adapter_config.json").is_file():
        return report_model(args, target)
    if target.is_dir() and (any(target.glob("*.py")) or any(target.glob("iter_*.pth"))):
        raise FileNotFoundError(
            f"{records.history_file(target)}: this work dir was trained without the evaluation hook. "
            "Turn it on (--set evaluation_freq=N in the shipped configs, or custom_hooks = [dict(type='IdentityEvalHook', "
            "name=..., every_n_iters=N)] in your own) and train again, or convert+merge and run `eval` on the merged model.")
    raise FileNotFoundError(f"{target}: neither a work dir with {records.EVAL_DIR}/history.jsonl nor a model folder "
                            "(config.json or adapter_config.json)")


def report_work_dir(work_dir: Path, out: Path, rescore: bool = False, force: bool = False) -> int:
    from xtuner_assistant.evaluation.plots import plot_history
    from xtuner_assistant.paths import check_output_files, record_outputs, write_json_atomic

    check_output_files([out / "report.json", out / "metrics.png"], force)
    history = records.read_history(work_dir)
    if not history:
        raise ValueError(f"{records.history_file(work_dir)}: no evaluations yet; wait for the first one "
                         "(every_n_iters)")
    if rescore:
        from xtuner_assistant.evaluation.identity_evaluation import rescored_history

        history = rescored_history(work_dir)
    summary = records.read_summary(work_dir)
    best, stopped = summary.get("best"), summary.get("stopped_early")
    name = summary.get("name", work_dir.name)
    # The name stays out of the title: matplotlib's own font has no CJK glyphs.
    plot = plot_history(history, out / "metrics.png", f"identity metrics over training: {work_dir.name}",
                        best["iter"] if best else None, stopped["iter"] if stopped else None)
    report = {"work_dir": str(work_dir), "name": name, "rule": summary.get("rule"), "rescored": rescore,
              "best": best, "stopped_early": stopped, "plot": str(plot), "history": history}
    write_json_atomic(out / "report.json", report)
    record_outputs([out / "report.json", plot])
    print(_table(history))
    if stopped:
        print(f"training stopped early: {stopped['message']}")
    if best:
        print(f"best checkpoint: {best['checkpoint'] or 'not saved'} (iteration {best['iter']}, "
              f"score {best['scores']['combined']:.3f})")
        if best["checkpoint"]:
            print(f"  convert it: xtuner-assistant convert {work_dir} --checkpoint {best['checkpoint']}")
    else:
        print("best checkpoint: none (no evaluation after training began was free of collapse and loops)")
    print(f"report: {out / 'report.json'}\nplot: {plot}")
    return 0


def report_model(args, model_dir: Path) -> int:
    from xtuner_assistant.evaluation.identity_evaluation import IdentityEvaluation
    from xtuner_assistant.models.answers import base_model_answers
    from xtuner_assistant.models.folder import adapter_base
    from xtuner_assistant.models.generation import load_chat_model
    from xtuner_assistant.paths import check_output_files, record_outputs, write_json_atomic, write_text_atomic

    if not args.name:
        raise ValueError(f"{model_dir}: give --name, the assistant's name the model was trained with")
    out = Path(args.out) if args.out else model_dir.parent / f"eval_{model_dir.name}"
    check_output_files([out / "report.json", out / "answers.txt"], args.force)
    evaluation = IdentityEvaluation(args.name, args.author, args.base_model_name, args.seed,
                                    max_new_tokens=args.max_new_tokens)
    base = args.base
    if base is None and (model_dir / "adapter_config.json").is_file():
        base = adapter_base(model_dir) or None
    model, tokenizer = load_chat_model(model_dir, args.base)
    generate = evaluation.generator(model, tokenizer)
    print(f"answering {len(evaluation.identity_prompts)} held-out identity questions and "
          f"{len(evaluation.general_prompts)} general prompts ...", file=sys.stderr)
    identity_answers = generate(evaluation.identity_prompts, args.max_new_tokens)
    general_answers = generate(evaluation.general_prompts, args.max_new_tokens)
    del model
    base_answers = base_model_answers(base, evaluation.general_prompts, args.max_new_tokens) if base else None
    scores = evaluation.score(identity_answers, general_answers, base_answers)
    write_json_atomic(out / "report.json", {"model": str(model_dir), "base": base, "scores": scores,
                                            **evaluation.answers_record(identity_answers, general_answers, base_answers)})
    write_text_atomic(out / "answers.txt", evaluation.readable(str(model_dir), scores, identity_answers,
                                                               general_answers, base_answers))
    record_outputs([out / "report.json", out / "answers.txt"])
    print(_table([{"iter": "-", **scores}]))
    if base is None:
        print("retention: not measured (give --base BASE_MODEL_FOLDER to compare with the base model)")
    print(f"report: {out / 'report.json'}\nanswers: {out / 'answers.txt'}")
    return 0


def _table(rows: list[dict]) -> str:
    columns = ["iter", "identity_accuracy_zh", "identity_accuracy_en", "leakage", "repetition", "collapse",
               "retention", "fact_retention", "combined"]
    present = [c for c in columns if any(c in r for r in rows)]

    def cell(value):
        return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

    headers = {"identity_accuracy_zh": "identity zh", "identity_accuracy_en": "identity en",
               "fact_retention": "facts kept"}
    lines = ["  ".join(f"{headers.get(c, c):>11}" for c in present)]
    lines += ["  ".join(f"{cell(r.get(c)):>11}" for c in present) for r in rows]
    return "\n".join(lines)
