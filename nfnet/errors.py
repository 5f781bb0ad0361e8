"""The one exception type for mistakes a user of `nfnet` can make.

Command-line entry points print it as one line and exit non-zero; anything else
is a programming error and stays a traceback.
"""


class NFNetError(Exception):
    """A user-facing error: bad flag value, missing dataset, unknown variant, ..."""
