"""`vqa data | repeat | convert | chat | eval`: LLaVA (an LLM that sees) on easy-VQA.

Each sub-verb has its own `register_<verb>(subparsers)`, so other verbs can offer it under another
name (e.g. `data vqa`, `eval vqa`) with the same options and the same `run`.
"""
from __future__ import annotations

import sys
from pathlib import Path


def register(subparsers):
    parser = subparsers.add_parser("vqa", help="LLaVA: easy-VQA data, repeat, convert, chat with an image, eval")
    verbs = parser.add_subparsers(dest="vqa_command", required=True, metavar="SUBVERB")
    for add in (register_data, register_repeat, register_convert, register_chat, register_eval):
        add(verbs)


def register_data(subparsers, name: str = "data"):
    parser = subparsers.add_parser(name, help="easy-VQA -> LLaVA JSON (captions, train, held-out test) + images")
    parser.add_argument("--out", default="data/easy_vqa", help="output folder (default data/easy_vqa)")
    parser.add_argument("--train-images", type=int, default=0, help="keep a random subset of training images (0: all 4000)")
    parser.add_argument("--test-images", type=int, default=0, help="keep a random subset of test images (0: all 1000)")
    parser.add_argument("--turns", type=int, default=0,
                        help="questions per training conversation (0: all of an image's questions in one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true",
                        help="replace captions/train/test.json there even if xtuner-assistant did not write them")
    parser.set_defaults(run=run_data)


def run_data(args):
    from xtuner_assistant.llava.easy_vqa import write_easy_vqa

    result = write_easy_vqa(Path(args.out), args.train_images, args.test_images, args.turns, args.seed, args.force)
    print(f"images:   {result['image_folder']}")
    print(f"stage 1:  {result['captions']} ({result['caption_count']} captions of {result['train_images']} images)")
    print(f"stage 2:  {result['train']} ({result['train_questions']} questions in "
          f"{result['train_conversations']} conversations)")
    print(f"test:     {result['test']} ({result['test_questions']} held-out questions of {result['test_images']} "
          f"images: {', '.join(f'{k} {v}' for k, v in result['test_by_type'].items())})")
    return 0


def register_repeat(subparsers, name: str = "repeat"):
    parser = subparsers.add_parser(name, help="the tutorial's repeat.py: a LLaVA JSON list, n times over")
    parser.add_argument("-i", "--input", required=True, help="LLaVA JSON file (a list of records)")
    parser.add_argument("-o", "--output", required=True, help="where to write the repeated list")
    parser.add_argument("-n", "--times", type=int, default=200, help="repetitions (the tutorial uses 200)")
    parser.add_argument("--force", action="store_true", help="replace --output even if xtuner-assistant did not write it")
    parser.set_defaults(run=run_repeat)


def run_repeat(args):
    from xtuner_assistant.cli.errors import UserError
    from xtuner_assistant.llava.easy_vqa import load_records, repeat_records, repeat_warning
    from xtuner_assistant.paths import check_output_files, record_outputs, write_json_atomic

    if Path(args.output).resolve() == Path(args.input).resolve():
        raise UserError(f"--output {args.output} is the input file; write the repeated list to another file")
    check_output_files([Path(args.output)], args.force, "--output")
    records = load_records(Path(args.input))
    repeated = repeat_records(records, args.times)
    warning = repeat_warning(records, args.times)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    write_json_atomic(Path(args.output), repeated)
    record_outputs([Path(args.output)])
    print(f"{args.output}: {len(repeated)} records ({len(records)} x {args.times})")
    return 0


def register_convert(subparsers, name: str = "convert"):
    parser = subparsers.add_parser(name, help="a LLaVA work dir's checkpoint -> projector (+ LoRA adapters)")
    parser.add_argument("work_dir", help="the --work-dir of a LLaVA training run")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", help="iter_N.pth (default: the last one)")
    parser.add_argument("--force", action="store_true", help="replace --out even if xtuner-assistant did not write it")
    parser.set_defaults(run=run_convert)


def run_convert(args):
    from xtuner_assistant.llava.model import convert_llava_checkpoint

    out = convert_llava_checkpoint(Path(args.work_dir), Path(args.out), Path(args.checkpoint) if args.checkpoint else None,
                                   args.force)
    print(f"LLaVA model: {out}")
    return 0


def register_chat(subparsers, name: str = "chat"):
    parser = subparsers.add_parser(name, help="ask a converted LLaVA model about an image (= `chat MODEL --image`)")
    parser.add_argument("model", help="folder written by `vqa convert`")
    parser.add_argument("--image", required=True, help="image file to ask about")
    parser.add_argument("--prompt", help="answer this one question and exit (else: ask in a loop)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.set_defaults(run=run_chat)


def run_chat(args):
    from xtuner_assistant.serve.terminal import chat_about_image

    return chat_about_image(args.model, args.image, args.prompt, args.max_new_tokens)


def register_eval(subparsers, name: str = "eval"):
    parser = subparsers.add_parser(name, help="accuracy on the held-out easy-VQA test split, by question type")
    parser.add_argument("model", help="folder written by `vqa convert` (stage 1 = before, stage 2 = after)")
    parser.add_argument("--test", default="data/easy_vqa/test.json", help="test.json of `vqa data`")
    parser.add_argument("--image-folder", help="default: the images/ folder beside the test file")
    parser.add_argument("--per-type", type=int, default=0,
                        help="score a seeded random sample of N questions per type (0: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the report (JSON, with every answer) here")
    parser.add_argument("--force", action="store_true", help="replace --out even if xtuner-assistant did not write it")
    parser.set_defaults(run=run_eval)


def run_eval(args):
    from xtuner_assistant.llava.model import load_llava
    from xtuner_assistant.llava.vqa_eval import evaluate, format_report

    test = Path(args.test)
    if args.out:
        from xtuner_assistant.paths import check_output_files

        check_output_files([Path(args.out)], args.force)
    images = Path(args.image_folder) if args.image_folder else test.parent / "images"
    report = evaluate(load_llava(Path(args.model)), test, images, per_type=args.per_type,
                      batch_size=args.batch_size, seed=args.seed)
    print(format_report(report))
    if args.out:
        from xtuner_assistant.paths import record_outputs, write_json_atomic

        write_json_atomic(Path(args.out), report)
        record_outputs([Path(args.out)])
        print(f"report: {args.out}")
    return 0
