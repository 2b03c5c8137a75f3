"""`xtuner-assistant VERB ...`: main.py builds the parser, errors.py holds UserError, and each verb
is its own module exposing `register(subparsers)`, which adds its parser and sets `run(args)`."""
