"""The one exception type for mistakes a user of `tuner` can make."""


class TunerError(Exception):
    """A user-facing error printed as one line by the command-line entry points."""
