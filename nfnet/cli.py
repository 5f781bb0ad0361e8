"""Command-line plumbing shared by nfscale's commands (nfnet.* and tuner.*): no JAX here.

`FlagParser` reports a flag mistake as one line, `error: --flag: what it wants`, with
exit status 2; `int` and `float` flag types say "expected an integer/a number" instead
of argparse's "invalid int value". The type functions below raise
`argparse.ArgumentTypeError` with a sentence a user can act on. `run_main` does the
same for a mistake found after the flags parse: one `error: ...` line, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

from nfnet.errors import NFNetError, one_line
from nfnet.variants import resolution_problem


def _shown(text: str) -> str:
    return repr(text)


def integer(text: str) -> int:
    """An argparse type: a whole number."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {_shown(text)}") from None


def number(text: str) -> float:
    """An argparse type: a number (3, 0.5, 1e-4)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {_shown(text)}") from None


NONE_WORDS = ("none", "off")


def number_or_none(text: str) -> float | None:
    """An argparse type: a number, or 'none' (also 'off') for None."""
    if text.strip().lower() in NONE_WORDS:
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {_shown(text)}") from None


def resolution(text: str) -> int:
    """An argparse type: an input resolution in px, by nfnet.variants' one rule."""
    try:
        value: object = int(text)
    except ValueError:
        value = text
    problem = resolution_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return int(text)


_ARGUMENT_PREFIX = re.compile(r"^argument ([^:]+): ")


class FlagParser(argparse.ArgumentParser):
    """argparse that reports mistakes as one `error: ...` line and exit status 2.

    "argument --x: ..." reads "--x: ..."; flags declared `type=int` / `type=float`
    parse with `integer` / `number`, so a bad value says what the flag wants.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register("type", int, integer)
        self.register("type", float, number)

    def error(self, message: str):  # type: ignore[override]
        message = _ARGUMENT_PREFIX.sub(r"\1: ", " ".join(message.split()))
        self.exit(2, f"error: {message}\n")


def run_main(body: Callable[[], int],
             errors: type[BaseException] | tuple[type[BaseException], ...] = NFNetError) -> int:
    """A command's exit status: `body()`'s, or 2 after a user mistake (one of `errors`),
    which is printed as one `error: ...` line on stderr. Output piped into a reader that
    stops early (`| head`) ends the command quietly, with status 1, not a traceback."""
    try:
        return body()
    except errors as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Python's own advice (signal docs, "Note on SIGPIPE"): point stdout at devnull so
        # the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
