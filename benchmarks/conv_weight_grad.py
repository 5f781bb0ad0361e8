"""A 3x3 conv's weight gradient on XLA:CPU three ways: XLA's own, nine per-tap dots, im2col.

    .venv/bin/python benchmarks/conv_weight_grad.py                      # nano's 32->64 stem conv, batch 256
    .venv/bin/python benchmarks/conv_weight_grad.py --batch 16 --pixels 16 --cin 128 --cout 128
    .venv/bin/python benchmarks/conv_weight_grad.py --batch 16 --pixels 32 --cin 64 --cout 128 --stride 2

dW[i, j] = sum over (b, h, w) of x_pad[b, s*h+i, s*w+j, :]^T dy[b, h, w, :] (stride s, SAME).
XLA lowers it as a convolution with the batch as the contraction; here it is also written
as nine dots (dy^T as a [cout, B*H*W] matrix times each shifted, strided input slice:
`nfnet.layers._per_tap_weight_grad`, what the trainer computes on large maps) and as one
matmul over an im2col patch matrix. Each is checked against XLA's to 1e-5 (relative) and timed alternately (median of
--rounds). The figures go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from nfnet import host_allocator
from nfnet.layers import _dense_conv, _per_tap_weight_grad, _same_taps


def xla_grad(x, g, stride):
    w0 = jnp.zeros((3, 3, x.shape[-1], g.shape[-1]), x.dtype)
    _, vjp = jax.vjp(lambda w: _dense_conv(x, w, stride), w0)
    return vjp(g)[0]


def per_tap(x, g, stride):
    return _per_tap_weight_grad(x, g, 3, stride)  # the trainer's own


def im2col(x, g, stride):
    cin = x.shape[-1]
    cols = jnp.concatenate(_same_taps(x, 3, stride), axis=-1)
    return (cols.reshape(-1, 9 * cin).T @ g.reshape(-1, g.shape[-1])).reshape(3, 3, cin, g.shape[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="images in the batch")
    parser.add_argument("--pixels", type=int, default=16, help="the input map's height and width")
    parser.add_argument("--cin", type=int, default=32, help="input channels")
    parser.add_argument("--cout", type=int, default=64, help="output channels")
    parser.add_argument("--stride", type=int, default=1, choices=(1, 2), help="the conv's stride")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls of each (the median is reported)")
    args = parser.parse_args(argv)
    if min(args.batch, args.pixels, args.cin, args.cout, args.rounds) < 1:
        print("error: --batch, --pixels, --cin, --cout and --rounds must be >= 1", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch, args.pixels, args.pixels, args.cin), np.float32))
    out = -(-args.pixels // args.stride)
    g = jnp.asarray(rng.standard_normal((args.batch, out, out, args.cout), np.float32))
    fns = {name: jax.jit(f, static_argnums=2)
           for name, f in (("XLA", xla_grad), ("per-tap dots", per_tap), ("im2col", im2col))}
    ref = fns["XLA"](x, g, args.stride)
    for name, f in fns.items():
        err = float(jnp.max(jnp.abs(f(x, g, args.stride) - ref)) / jnp.max(jnp.abs(ref)))
        if err > 1e-5:
            print(f"error: {name} differs from XLA's gradient by {err:.2e} (relative)", file=sys.stderr)
            return 1
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(x, g, args.stride))
            times[name].append(time.perf_counter() - t)
    flops = 2 * args.batch * out**2 * args.cin * args.cout * 9
    print(f"3x3 conv weight gradient, batch {args.batch}, {args.pixels}x{args.pixels} stride {args.stride}, "
          f"{args.cin}->{args.cout} "
          f"({flops / 1e9:.2f} GFLOP), jax {jax.__version__}, {len(jax.devices())} x {jax.devices()[0].platform}")
    for name, ts in times.items():
        s = statistics.median(ts)
        print(f"  {name:13s} {s * 1e3:8.1f} ms  {flops / s / 1e9:6.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    host_allocator.command_start()  # jemalloc where installed: nfnet/host_allocator.py
    sys.exit(main())
