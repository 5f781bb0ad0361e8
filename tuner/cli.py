"""Flag helpers the commands share: `--lrs`-style LR lists and the repeatable `--set KEY=VALUE`.
"""

from __future__ import annotations

import argparse
import math

from tuner.errors import TunerError
from tuner.jobs.overrides import parse_override


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
