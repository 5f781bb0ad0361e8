"""A 3x3 conv's weight gradient on XLA:CPU three ways: XLA's own, nine per-tap dots, im2col.

    .venv/bin/python benchmarks/conv_weight_grad.py                      # nano's 32->64 stem conv, batch 256
    .venv/bin/python benchmarks/conv_weight_grad.py --batch 16 --pixels 16 --cin 128 --cout 128

dW[i, j] = sum over (b, h, w) of x_pad[b, h+i, w+j, :]^T dy[b, h, w, :] (stride 1, SAME).
XLA lowers it as a convolution with the batch as the contraction; here it is also written
as nine dots (dy^T as a [cout, B*H*W] matrix times each shifted input slice) and as one
matmul over an im2col patch matrix. Each is checked against XLA's to 1e-5 (relative) and
timed alternately (median of --rounds). The figures go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

DN = ("NHWC", "HWIO", "NHWC")


def xla_grad(x, g):
    w0 = jnp.zeros((3, 3, x.shape[-1], g.shape[-1]), x.dtype)
    _, vjp = jax.vjp(lambda w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN), w0)
    return vjp(g)[0]


def per_tap(x, g):
    b, h, w, cin = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    g_t = g.reshape(-1, g.shape[-1]).T
    taps = [g_t @ xp[:, i:i + h, j:j + w, :].reshape(-1, cin) for i in range(3) for j in range(3)]
    return jnp.stack(taps).reshape(3, 3, g.shape[-1], cin).transpose(0, 1, 3, 2)


def im2col(x, g):
    b, h, w, cin = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)], axis=-1)
    return (cols.reshape(-1, 9 * cin).T @ g.reshape(-1, g.shape[-1])).reshape(3, 3, cin, g.shape[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="images in the batch")
    parser.add_argument("--pixels", type=int, default=16, help="the output map's height and width")
    parser.add_argument("--cin", type=int, default=32, help="input channels")
    parser.add_argument("--cout", type=int, default=64, help="output channels")
    parser.add_argument("--rounds", type=int, default=5, help="timed calls of each (the median is reported)")
    args = parser.parse_args(argv)
    if min(args.batch, args.pixels, args.cin, args.cout, args.rounds) < 1:
        print("error: --batch, --pixels, --cin, --cout and --rounds must be >= 1", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((args.batch, args.pixels, args.pixels, args.cin), np.float32))
    g = jnp.asarray(rng.standard_normal((args.batch, args.pixels, args.pixels, args.cout), np.float32))
    fns = {"XLA": jax.jit(xla_grad), "per-tap dots": jax.jit(per_tap), "im2col": jax.jit(im2col)}
    ref = fns["XLA"](x, g)
    for name, f in fns.items():
        err = float(jnp.max(jnp.abs(f(x, g) - ref)) / jnp.max(jnp.abs(ref)))
        if err > 1e-5:
            print(f"error: {name} differs from XLA's gradient by {err:.2e} (relative)", file=sys.stderr)
            return 1
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.rounds):
        for name, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(x, g))
            times[name].append(time.perf_counter() - t)
    flops = 2 * args.batch * args.pixels**2 * args.cin * args.cout * 9
    print(f"3x3 conv weight gradient, batch {args.batch}, {args.pixels}x{args.pixels}, {args.cin}->{args.cout} "
          f"({flops / 1e9:.2f} GFLOP), jax {jax.__version__}, {len(jax.devices())} x {jax.devices()[0].platform}")
    for name, ts in times.items():
        s = statistics.median(ts)
        print(f"  {name:13s} {s * 1e3:8.1f} ms  {flops / s / 1e9:6.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
