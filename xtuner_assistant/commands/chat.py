"""`chat MODEL`: talk to a model in the terminal, streamed, in the model's own chat template."""
import sys


def register(subparsers):
    parser = subparsers.add_parser("chat", help="chat in the terminal (or --prompt for one reply)")
    parser.add_argument("model", help="merged model folder, or a LoRA adapter folder")
    parser.add_argument("--base", help="base model for an adapter folder")
    parser.add_argument("--prompt", help="answer this one prompt and exit (for scripts)")
    parser.add_argument("--system", help="a system message to start the conversation with")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.set_defaults(run=run)


def run(args):
    from xtuner_assistant.generation import load_chat_model, stream_reply

    model, tokenizer = load_chat_model(args.model, args.base)
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    repetition_penalty=args.repetition_penalty)
    history = [{"role": "system", "content": args.system}] if args.system else []

    def answer(text):
        history.append({"role": "user", "content": text})
        pieces = []
        for piece in stream_reply(model, tokenizer, history, **settings):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(pieces).strip()})

    if args.prompt is not None:
        answer(args.prompt)
        return 0
    print("Chatting with", args.model, "- type /reset to start over, /exit (or Ctrl-D) to leave.")
    while True:
        try:
            text = input("\nyou> ").strip()
        except EOFError:
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            del history[1 if args.system else 0:]
            print("(conversation reset)")
            continue
        if text:
            sys.stdout.write("bot> ")
            answer(text)
