"""`python -m nfnet.summary`: parameters, MACs and a per-stage table of a variant.

    python -m nfnet.summary F7+ --resolution 224 --num-classes 30000
    python -m nfnet.summary --list
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # counting needs no accelerator

from nfnet.counting import count_macs, count_params, stage_table  # noqa: E402
from nfnet.errors import NFNetError  # noqa: E402
from nfnet.cli import FlagParser, run_main  # noqa: E402
from nfnet.variants import MIN_RESOLUTION, VARIANTS, check_resolution, get_variant  # noqa: E402


def _human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def list_variants(num_classes: int) -> list[str]:
    """Every named variant, smallest first, one line each with its size."""
    sized = sorted((count_params(v, num_classes), name) for name, v in VARIANTS.items())
    lines = []
    for params, name in sized:
        v = VARIANTS[name]
        lines.append(
            f"{name:<6} {_human(params):>8} params  depths {','.join(map(str, v.depths)):<12} "
            f"widths {','.join(map(str, v.widths)):<18} train/test {v.train_resolution}/{v.test_resolution}px"
        )
    return lines


def describe(name: str, resolution: int | None, num_classes: int, width_mult: float, depth_mult: float) -> list[str]:
    v = get_variant(name, width_mult, depth_mult)
    res = resolution or v.test_resolution
    params = count_params(v, num_classes)
    macs = count_macs(v, res, num_classes)
    lines = [
        f"variant     {v.label}  (depths {list(v.depths)}, widths {list(v.widths)}, group width {v.group_width})",
        f"classes     {num_classes}",
        f"resolution  {res}px",
        f"parameters  {params:,} ({params / 1e6:.2f}M)",
        f"MACs        {macs:,} ({macs / 1e9:.2f}B multiply-adds per image)",
        "",
        f"{'stage':<8}{'blocks':>7}{'width':>7}{'out px':>8}{'params':>14}{'MACs':>16}",
    ]
    for row in stage_table(v, res, num_classes):
        lines.append(
            f"{row.name:<8}{row.blocks:>7}{row.width:>7}{row.out_resolution:>8}{row.params:>14,}{row.macs:>16,}"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = FlagParser(prog="python -m nfnet.summary",
                        description="Print the parameter count, the multiply-adds per image and a per-stage "
                        "table of an NFNet variant at a resolution, or list every named variant.")
    parser.add_argument("variant", nargs="?",
                        help="variant to describe, e.g. F0, F7+, nano, F0-w0.5 (width 0.5x) or F0-d2 (depth 2x)")
    parser.add_argument("--list", action="store_true", help="list every named variant with its size, smallest first")
    parser.add_argument("--resolution", type=int,
                        help=f"input image size in px, at least {MIN_RESOLUTION} (default: the variant's test "
                        "resolution)")
    parser.add_argument("--num-classes", type=int, default=1000,
                        help="classes of the classifier, which sets its size (default: 1000)")
    parser.add_argument("--width-mult", type=float, default=1.0,
                        help="multiply every stage's width (channels) by this factor (default: 1.0)")
    parser.add_argument("--depth-mult", type=float, default=1.0,
                        help="multiply every stage's number of blocks by this factor (default: 1.0)")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.num_classes < 1:
        raise NFNetError(f"--num-classes must be >= 1, got {args.num_classes}")
    if args.resolution is not None:
        check_resolution(args.resolution, "--resolution")
    if args.list:
        lines = list_variants(args.num_classes)
    elif args.variant:
        lines = describe(args.variant, args.resolution, args.num_classes, args.width_mult, args.depth_mult)
    else:
        raise NFNetError("name a variant (e.g. F0) or pass --list")
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
