"""The one exception type for mistakes a user of `nfnet` can make, and its one-line form.

Command-line entry points print it as one line and exit non-zero; anything else
is a programming error and stays a traceback.
"""


class NFNetError(Exception):
    """A user-facing error: bad flag value, missing dataset, unknown variant, ..."""


def one_line(error: BaseException) -> str:
    """An error's message on one line (each run of whitespace, newlines too, as one space),
    or its type's name when it has no message (Arrow's and YAML's messages can span several lines)."""
    return " ".join(str(error).split()) or type(error).__name__
