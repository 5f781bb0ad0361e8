"""What the commands share: `run_command` (a user mistake as one `error: ...` line and exit
status 2, a second Ctrl-C as a short note and status 130), and the flag helpers for
`--lrs`-style LR lists and the repeatable `--set KEY=VALUE`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from nfnet.cli import run_main
from tuner.errors import TunerError
from tuner.jobs.overrides import parse_override
from tuner.raytune.experiment import INTERRUPTED_EXIT


def run_command(
    body: Callable[[], int],
    interrupted: str | None = None,
    errors: type[BaseException] | tuple[type[BaseException], ...] = TunerError,
) -> int:
    """A command's exit status: `body()`'s, or 2 after a user mistake (one of `errors`: a
    TunerError unless told) printed as one `error: ...` line on stderr. With `interrupted`, a Ctrl-C that
    reaches here (Tune takes the first one and stops the run) prints that text on stderr and
    exits INTERRUPTED_EXIT; without it, Ctrl-C stays Python's."""
    if interrupted is None:
        return run_main(body, errors)
    try:
        return run_main(body, errors)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return INTERRUPTED_EXIT


class SetOverride(argparse.Action):
    """`--set KEY=VALUE` (repeatable): collects the items, each checked as `parse_override` checks it."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            parse_override(values)
        except TunerError as exc:
            parser.error(str(exc))
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])


def parse_lrs(text: str) -> tuple[float, ...]:
    """`0.05,0.1` -> (0.05, 0.1): an argparse type for LR lists."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise argparse.ArgumentTypeError(f"learning rates must be positive numbers, got {text!r}")
    return values
