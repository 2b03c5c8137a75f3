"""`chat MODEL`: talk to a model in the terminal, streamed, in the model's own chat template;
`chat LLAVA_MODEL --image FILE`: ask a LLaVA model (a `vqa convert` folder) about an image."""
from xtuner_assistant.cli.errors import UserError


def register(subparsers):
    parser = subparsers.add_parser("chat", help="chat in the terminal (or --prompt for one reply); "
                                                "--image for a LLaVA model")
    parser.add_argument("model", help="merged model folder, a LoRA adapter folder, or a LLaVA folder (`vqa convert`)")
    parser.add_argument("--image", help="image file to ask a LLaVA model about")
    parser.add_argument("--base", help="base model for an adapter folder")
    parser.add_argument("--prompt", help="answer this one prompt and exit (for scripts)")
    parser.add_argument("--system", help="a system message to start the conversation with")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.set_defaults(run=run)


def run(args):
    from xtuner_assistant.llava.image_chat import is_llava_model
    from xtuner_assistant.serve.terminal import chat_about_image, chat_with_text

    if is_llava_model(args.model):
        if not args.image:
            raise UserError(f"{args.model} is a LLaVA model: give the image to ask about with --image FILE")
        if args.base or args.system:
            raise UserError("--base and --system are for text models; a LLaVA folder names its LLM in "
                            "xtuner_config.py and answers each question about the image on its own")
        return chat_about_image(args.model, args.image, args.prompt, args.max_new_tokens)
    if args.image:
        raise UserError(f"--image needs a LLaVA model folder (projector/ and xtuner_config.py, written by "
                        f"`xtuner-assistant vqa convert`); {args.model} is not one")
    return chat_with_text(args.model, args.base, args.prompt, args.system, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty)
