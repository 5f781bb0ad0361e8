"""The trainer's CPU step with nfnet's own conv gradients switched off in turn, side by side.

    .venv/bin/python benchmarks/conv_grad_rules.py                                   # nano 32px batch 256
    .venv/bin/python benchmarks/conv_grad_rules.py --variant F0 --resolution 64 --batch-size 16 --rounds 3

The dense conv lowering (nfnet/layers.py) takes two gradients of its 3x3 convs on large maps
from `_conv_own_grads` rather than XLA: the weight gradient as nine per-tap dots, and a
strided conv's input gradient as one stride-1 conv per input parity. This compiles the
step three ways in one process (XLA's gradients throughout; per-tap weight gradients only;
both, the trainer's default) by raising the rules' map-size thresholds out of reach while
each is traced, then times them in alternating rounds and prints the medians. Figures go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import jax

import nfnet.layers as layers
from nfnet.errors import NFNetError
from nfnet.step import compile_train_step
from nfnet import host_allocator

import train_throughput  # benchmarks/train_throughput.py, beside this script


def build_all(variant: str, batch_size: int, resolution: int) -> dict[str, dict]:
    off = 10**12  # a map-size threshold no map reaches: the rule is off
    rules = {"XLA's gradients": (off, off),
             "per-tap weight gradients": (layers.PER_TAP_WGRAD_MIN_PIXELS, off),
             "per-tap + sub-pixel (default)": (layers.PER_TAP_WGRAD_MIN_PIXELS, layers.SUBPIXEL_DX_MIN_PIXELS)}
    saved = layers.PER_TAP_WGRAD_MIN_PIXELS, layers.SUBPIXEL_DX_MIN_PIXELS
    built = {}
    try:
        for name, thresholds in rules.items():
            layers.PER_TAP_WGRAD_MIN_PIXELS, layers.SUBPIXEL_DX_MIN_PIXELS = thresholds
            compile_train_step.cache_clear()  # the same spec must be traced again under these rules
            built[name] = train_throughput.build(variant, batch_size, resolution, "float32", conv_lowering="dense")
    finally:
        layers.PER_TAP_WGRAD_MIN_PIXELS, layers.SUBPIXEL_DX_MIN_PIXELS = saved
        compile_train_step.cache_clear()
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="nano")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (each times --steps steps of each)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    args = parser.parse_args(argv)
    if min(args.rounds, args.steps, args.batch_size, args.resolution) < 1:
        print("error: --rounds, --steps, --batch-size and --resolution must be >= 1", file=sys.stderr)
        return 2
    try:
        built = build_all(args.variant, args.batch_size, args.resolution)
    except (NFNetError, KeyError) as e:  # KeyError: an unknown variant
        print(f"error: {e}", file=sys.stderr)
        return 2
    times: dict[str, list[float]] = {name: [] for name in built}
    for b in built.values():
        train_throughput.time_steps(b, 1)
    for _ in range(args.rounds):
        for name, b in built.items():
            times[name].extend(train_throughput.time_steps(b, args.steps)[0])
    base = statistics.median(times["XLA's gradients"])
    print(f"{args.variant} {args.resolution}px batch {args.batch_size}, dense convs on {jax.devices()[0].device_kind}, "
          f"medians of {args.rounds} x {args.steps} steps")
    for name, t in times.items():
        m = statistics.median(t)
        print(f"  {name:30s} {m * 1e3:8.1f} ms  {args.batch_size / m:7,.0f} images/s  {base / m:5.2f}x")
    return 0


if __name__ == "__main__":
    host_allocator.command_start()  # jemalloc where installed: nfnet/host_allocator.py
    sys.exit(main())
