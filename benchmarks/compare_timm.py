"""nfscale's training step against timm's NFNet on the same machine, side by side in one run.

    .venv/bin/pip install -e ".[bench]"          # torch, torchvision, timm (CPU is enough)
    .venv/bin/python benchmarks/compare_timm.py                                   # F0, 64px, batch 16
    .venv/bin/python benchmarks/compare_timm.py --variant nano --resolution 32 --batch-size 256
    .venv/bin/python benchmarks/compare_timm.py --lowerings dense,native          # both of nfscale's lowerings
    .venv/bin/python benchmarks/compare_timm.py --parts     # + forward/backward alone, one conv's rate, the 1.5x bound

Each framework runs in a worker process of its own that builds its model once (and, for
nfscale, compiles its step), then waits; the parent asks the workers in turn for a round of
`--steps` timed steps after `--warmup` untimed ones, `--rounds` times, alternating, so both
see the same machine load and never run at the same time. Figures are medians over every
timed step of every round.

The step is the same work on both sides: forward, backward, AGC at 0.01 on every weight but
the classifier (timm.utils.agc.adaptive_clip_grad, nfscale.agc), SGD with Nesterov momentum
0.9 and weight decay, 10 classes, float32, batches already in memory. timm is torch eager
with `torch.set_num_threads(--threads)`; nfscale's XLA uses the process's cores, which the
parent restricts to the same `--threads` cores (os.sched_setaffinity) for both workers.
F0...F7 are timm's `dm_nfnet_f*`; the small variants (nano, micro, mini, small, and width or
depth multiples) are timm `NormFreeNet`s built from the same `NfCfg` with nfscale's depths,
widths and group width and nfscale's stem channels (16, 32, 64, width/2); the parameter
counts of the two models are printed and must match.

Also measured in the JAX worker: XLA's f32 matmul (2048 x 2048) rate, the machine's ceiling
for the achieved-FLOP/s figure. Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- workers

def _serve(build, run) -> None:
    """Worker loop: build once, report, then answer "run N" lines with JSON lines."""
    info = build()
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        print(json.dumps(run(int(command[1]), int(command[2]))), flush=True)


def _jax_worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import jax
    import jax.numpy as jnp
    import numpy as np

    import train_throughput

    built: dict = {}

    def median_seconds(f, *inputs, repeats: int = 7) -> float:
        """Median wall time of `repeats` waited-on calls of f, after one untimed call."""
        jax.block_until_ready(f(*inputs))
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            jax.block_until_ready(f(*inputs))
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def matmul_rate() -> float:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((2048, 2048), np.float32))
        return 2 * 2048**3 / median_seconds(jax.jit(lambda x: x @ x), a)

    def conv_rate(pixels: int, channels: int) -> float:
        """FLOP/s of one 3x3 dense conv, forward and both gradients: a group of the model's convs."""
        from nfnet.layers import conv2d

        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((args.batch_size, pixels, pixels, channels), np.float32))
        w = jnp.asarray(rng.standard_normal((3, 3, channels, channels), np.float32))
        f = jax.jit(jax.grad(lambda x, w: jnp.sum(conv2d(x, w)), argnums=(0, 1)))
        return 3 * 2 * args.batch_size * pixels * pixels * channels * channels * 9 / median_seconds(f, x, w)

    def grad_program():
        """Forward and backward alone (the step without AGC, weight decay and the update), with
        its FLOPs counted as the trainer counts its step's (on the native lowering)."""
        import dataclasses

        from nfnet.counting import jaxpr_flops
        from nfnet.data import normalise_on_device
        from nfnet.step import cross_entropy

        x, y = built["batch"]

        def loss_of(spec):
            def loss(params):
                logits = spec.model.apply({"params": params}, normalise_on_device(x), train=True,
                                          rngs={"dropout": jax.random.PRNGKey(0)})
                return cross_entropy(logits, y, spec.num_classes)
            return jax.value_and_grad(loss)

        params = built["state"]["params"]
        compiled = jax.jit(loss_of(built["spec"])).lower(params).compile()
        native = dataclasses.replace(built["spec"], conv_lowering="native")
        return compiled, jaxpr_flops(jax.make_jaxpr(loss_of(native))(params))

    def build() -> dict:
        built.update(train_throughput.build(args.variant, args.batch_size, args.resolution, "float32",
                                            conv_lowering=args.lowering))
        params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(built["state"]["params"]))
        info = {"params": params, "compile_s": built["compile_s"], "flops_per_step": built["flops_per_step"],
                "lowering": built["conv_lowering"], "jax": jax.__version__, "matmul_flop_per_s": matmul_rate()}
        if args.parts:
            built["grad"], info["grad_flops"] = grad_program()
            group = built["spec"].variant.group_width
            info["conv_flop_per_s"] = {str(px): conv_rate(px, group) for px in (16, 8, 4)}
        return info

    def run(warmup: int, steps: int) -> dict:
        train_throughput.time_steps(built, warmup)
        times, _, loss = train_throughput.time_steps(built, steps)
        result = {"times": times, "loss": loss}
        if args.parts:
            grad_times = []
            for _ in range(warmup + steps):
                t = time.perf_counter()
                jax.block_until_ready(built["grad"](built["state"]["params"]))
                grad_times.append(time.perf_counter() - t)
            result["grad_times"] = grad_times[warmup:]
        return result

    _serve(build, run)


def _timm_model(variant_name: str):
    """timm's model with nfscale's layout for `variant_name`, 10 classes."""
    import timm
    import torch.nn as nn
    from timm.layers import ScaledStdConv2dSame
    from timm.models import nfnet as timm_nfnet

    sys.path.insert(0, str(ROOT))
    from nfnet.variants import get_variant

    v = get_variant(variant_name)
    reference = v.name.startswith("F") and v.width_mult == 1.0 and v.depth_mult == 1.0 and not v.name.endswith("+")
    if reference:
        return timm.create_model(f"dm_nfnet_f{v.name[1:]}", num_classes=10)
    cfg = timm_nfnet._dm_nfnet_cfg(depths=tuple(v.depths), channels=tuple(v.widths))
    # ch_div=1: nfscale's widths already hold whole groups; no rounding to multiples of 8.
    cfg = dataclasses.replace(cfg, stem_chs=v.widths[0] // 2, group_size=v.group_width, ch_div=1)
    model = timm_nfnet.NormFreeNet(cfg, num_classes=10)
    # nfscale's stem (the reference code's): 16, 32, 64, width/2 channels; timm's deep_quad
    # stem would scale all four with width/2. Rebuilt from timm's own layers.
    act = timm_nfnet.act_with_gamma("gelu", gamma=timm_nfnet._nonlin_gamma["gelu"])
    layers, in_ch = [], 3
    for i, (ch, stride) in enumerate(zip((16, 32, 64, v.widths[0] // 2), (2, 1, 1, 2))):
        layers.append((f"conv{i + 1}", ScaledStdConv2dSame(in_ch, ch, kernel_size=3, stride=stride, eps=1e-5)))
        if i < 3:
            layers.append((f"act{i + 2}", act(inplace=i < 2)))
        in_ch = ch
    model.stem = nn.Sequential(OrderedDict(layers))
    return model


def _timm_worker(args: argparse.Namespace) -> None:
    import torch
    import timm
    from timm.utils.agc import adaptive_clip_grad

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = _timm_model(args.variant)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-6)
    clipped = [p for n, p in model.named_parameters() if not n.startswith("head.fc")]
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution)
    y = torch.randint(0, 10, (args.batch_size,))

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        adaptive_clip_grad(clipped, 0.01)
        opt.step()
        return loss.item()

    def build() -> dict:
        return {"params": sum(p.numel() for p in model.parameters()), "torch": torch.__version__,
                "timm": timm.__version__, "threads": torch.get_num_threads()}

    def run(warmup: int, steps: int) -> dict:
        for _ in range(warmup):
            step()
        times, loss = [], float("nan")
        for _ in range(steps):
            t = time.perf_counter()
            loss = step()
            times.append(time.perf_counter() - t)
        return {"times": times, "loss": loss}

    _serve(build, run)


# ---------------------------------------------------------------- parent

class Worker:
    def __init__(self, kind: str, args: argparse.Namespace, lowering: str = "auto") -> None:
        cmd = [sys.executable, __file__, "--worker", kind, "--variant", args.variant, "--resolution",
               str(args.resolution), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--lowering", lowering] + (["--parts"] if args.parts else [])
        self.name = "timm" if kind == "timm" else f"nfscale ({lowering})"
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()
        self.times: list[float] = []
        self.grad_times: list[float] = []

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"error: the {self.name} worker exited (status {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def round(self, warmup: int, steps: int) -> dict:
        self.proc.stdin.write(f"run {warmup} {steps}\n")
        self.proc.stdin.flush()
        result = self._read()
        self.times += result["times"]
        self.grad_times += result.get("grad_times", [])
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def print_parts(workers: list[Worker], timm_s: float, batch_size: int) -> None:
    """Where nfscale's step goes, and the FLOP rate a step 1.5x faster than timm's would need."""
    for w in workers[1:]:
        info, step_s = w.info, statistics.median(w.times)
        grad_s = statistics.median(w.grad_times)
        need_s = timm_s / 1.5
        need_rate = info["flops_per_step"] / need_s
        matmul = info["matmul_flop_per_s"]
        convs = ", ".join(f"{px}px {rate / 1e9:.0f}" for px, rate in info["conv_flop_per_s"].items())
        print(f"{w.name}: forward+backward alone {grad_s * 1e3:,.0f} ms ({info['grad_flops'] / grad_s / 1e9:.1f} "
              f"GFLOP/s), so AGC, weight decay and the update take {(step_s - grad_s) * 1e3:,.0f} ms of the "
              f"{step_s * 1e3:,.0f} ms step")
        print(f"  one group's 3x3 dense conv, forward and both gradients, batch {batch_size}: {convs} GFLOP/s")
        print(f"  1.5x timm needs a step of {need_s * 1e3:,.0f} ms: {need_rate / 1e9:.1f} GFLOP/s over the whole "
              f"step, {need_rate / matmul:.0%} of the matmul rate; forward+backward alone would have to run at "
              f"{info['grad_flops'] / need_s / 1e9:.1f} GFLOP/s with the update free")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="F0")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                        help="cores for each framework (torch threads; the workers' CPU affinity)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per framework")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each round")
    parser.add_argument("--lowerings", default="auto", help="nfscale conv lowerings to run, comma-separated")
    parser.add_argument("--parts", action="store_true",
                        help="also time nfscale's forward+backward alone and a 3x3 dense conv of one group "
                             "(forward and both gradients) at 16, 8 and 4 px maps, and print what 1.5x timm "
                             "would need")
    parser.add_argument("--worker", choices=("jax", "timm"), help=argparse.SUPPRESS)
    parser.add_argument("--lowering", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "jax":
        _jax_worker(args)
        return 0
    if args.worker == "timm":
        _timm_worker(args)
        return 0
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        print('error: torch and timm are not installed; pip install -e ".[bench]"', file=sys.stderr)
        return 2
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0 or args.threads < 1:
        print("error: need --rounds >= 1, --steps >= 1, --warmup >= 0, --threads >= 1", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    from nfnet import host_allocator
    from nfnet.errors import NFNetError
    from nfnet.layers import CONV_LOWERINGS
    from nfnet.variants import get_variant

    lowerings = [name.strip() for name in args.lowerings.split(",")]
    if any(name not in CONV_LOWERINGS for name in lowerings):
        print(f"error: --lowerings takes names from {', '.join(CONV_LOWERINGS)}, got {args.lowerings!r}",
              file=sys.stderr)
        return 2
    try:
        get_variant(args.variant)
    except NFNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cores = sorted(os.sched_getaffinity(0))
    if args.threads > len(cores):
        print(f"error: --threads {args.threads} but this process may use {len(cores)} cores", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, cores[:args.threads])  # inherited by both workers
    workers = []
    try:
        workers.append(Worker("timm", args))
        for lowering in lowerings:
            workers.append(Worker("jax", args, lowering))
        jax_info = workers[1].info
        print(f"{args.variant} {args.resolution}px batch {args.batch_size}, float32, {args.threads} threads; "
              f"torch {workers[0].info['torch']} timm {workers[0].info['timm']} ({workers[0].info['threads']} "
              f"threads), jax {jax_info['jax']}; params timm {workers[0].info['params']:,} nfscale "
              f"{jax_info['params']:,}; XLA f32 matmul {jax_info['matmul_flop_per_s'] / 1e9:.0f} GFLOP/s; "
              f"host allocator: {host_allocator.describe()}",
              flush=True)
        for r in range(args.rounds):
            for w in workers:
                res = w.round(args.warmup, args.steps)
                print(f"  round {r + 1} {w.name}: {statistics.median(res['times']) * 1e3:,.0f} ms/step "
                      f"(loss {res['loss']:.3f})", flush=True)
        base = statistics.median(workers[0].times)
        for w in workers:
            s = statistics.median(w.times)
            line = f"{w.name:18s} {s * 1e3:8,.0f} ms/step {args.batch_size / s:8,.1f} images/s  {base / s:5.2f}x timm"
            if "flops_per_step" in w.info:
                achieved = w.info["flops_per_step"] / s
                line += (f"  {achieved / 1e9:6.1f} GFLOP/s = {achieved / w.info['matmul_flop_per_s']:.0%} of "
                         f"the matmul rate (compile {w.info['compile_s']:.0f} s)")
            print(line)
        if args.parts:
            print_parts(workers, base, args.batch_size)
    finally:
        for w in workers:
            w.close()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from nfnet import host_allocator

    host_allocator.command_start()  # jemalloc where installed, for both workers: nfnet/host_allocator.py
    sys.exit(main())
