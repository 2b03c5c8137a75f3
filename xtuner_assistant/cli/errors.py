"""The one error type the commands raise for bad input, and the checks every command shares."""

# Text a user types that is inserted into data, cards and answers (paths are not: any bytes name a file).
TEXT_OPTIONS = ("name", "author", "base_model", "base_model_name", "title", "prompt", "system")
TEXT_SETTINGS = ("name", "author", "base_model")


class UserError(Exception):
    """Bad input: printed as one clear message, no traceback, exit status 2."""


def undecodable(text: str) -> bool:
    """Python keeps bytes it could not decode in the locale's encoding as lone surrogates (U+DC80-U+DCFF)."""
    return any("\udc80" <= character <= "\udcff" for character in text)


def check_text_arguments(args) -> None:
    """Refuse text the terminal could not decode, saying that the locale is the cause."""
    given = [(f"--{option.replace('_', '-')}", getattr(args, option, None)) for option in TEXT_OPTIONS]
    for pair in getattr(args, "settings", None) or ():
        key, _, value = pair.partition("=")
        if key.strip() in TEXT_SETTINGS:
            given.append((f"--set {key.strip()}", value))
    for option, value in given:
        if isinstance(value, str) and undecodable(value):
            raise UserError(f"{option}: the terminal's encoding could not decode this text (the locale is not "
                            "UTF-8, e.g. LC_ALL=C); run with a UTF-8 locale such as LC_ALL=C.UTF-8, or set PYTHONUTF8=1")
