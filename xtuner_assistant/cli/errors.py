"""The one error type the commands raise for bad input."""


class UserError(Exception):
    """Bad input: printed as one clear message, no traceback, exit status 2."""
