"""Training-step throughput of an NFNet on whatever `jax.devices()` is: images/s, FLOP/s, step time.

    .venv/bin/python benchmarks/train_throughput.py                          # small, 32px, batch 256
    .venv/bin/python benchmarks/train_throughput.py --variant nano --steps 20
    .venv/bin/python benchmarks/train_throughput.py --variant F0 --resolution 192 --batch-size 128 --dtype bfloat16
    .venv/bin/python benchmarks/train_throughput.py --variant F0 --resolution 64 --batch-size 16 --profile prof/
    taskset -c 0 .venv/bin/python benchmarks/train_throughput.py --variant F0 --resolution 64 --batch-size 16 \
        --profile prof/ --op-summary      # ms per step by op kind (conv, matmul, ...) and phase
    .venv/bin/python benchmarks/train_throughput.py --conv-lowering native    # XLA's grouped conv, as on GPU/TPU

The step is the trainer's own (nfnet.step: forward, backward, AGC, weight decay,
Nesterov SGD, clip fraction), compiled once ahead of time and sharded over every local
device; batches are random arrays already on the devices, so the figures are of the
model and optimizer alone (benchmarks/data_throughput.py measures the input side). The
batches are uint8, as the loader ships them; the step normalises them on the device.
Step time is the median of `--steps` timed steps after `--warmup` untimed ones, each
waited on (the process's CPU time per step is printed too: on a shared machine it
shows how much of the wall time was spent computing). FLOPs per step are the trainer's own
count (`nfnet.step.step_flops`: 2 x the multiply-adds of the step's convs and matmuls, the
number it accounts compute with), so achieved FLOP/s = FLOPs / step time; XLA's own cost
analysis of the compiled step is printed beside it.
Results go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax
import numpy as np
from jax.sharding import Mesh

from nfnet.config import DTYPES
from nfnet.errors import NFNetError
from nfnet.layers import CONV_LOWERINGS, resolve_conv_lowering
from nfnet.optim import OptimConfig
from nfnet.step import DATA_AXIS, StepSpec, abstract_state_key, compile_train_step, init_state
from nfnet.variants import get_variant
from nfnet import host_allocator

import op_summary  # benchmarks/op_summary.py, beside this script


def build(variant: str, batch_size: int, resolution: int, dtype: str, num_classes: int = 10,
          conv_lowering: str = "auto", total_steps: int = 1000) -> dict:
    """Compile the trainer's step for this shape; returns it with a fresh state and a random uint8 batch."""
    devices = jax.devices()
    if batch_size % len(devices):
        raise NFNetError(f"batch size {batch_size} does not divide over {len(devices)} devices")
    if dtype not in DTYPES:
        raise NFNetError(f"--dtype must be one of {', '.join(DTYPES)}")
    if conv_lowering not in CONV_LOWERINGS:
        raise NFNetError(f"--conv-lowering must be one of {', '.join(CONV_LOWERINGS)}")
    spec = StepSpec(variant=get_variant(variant), num_classes=num_classes, dtype=dtype, stochdepth_rate=0.0,
                    dropout_rate=0.0, label_smoothing=0.0, optim=OptimConfig(lr=0.1, total_steps=total_steps),
                    sam_rho=0.0, sam_fraction=0.2, ema_decay=0.0, mesh=Mesh(np.array(devices), (DATA_AXIS,)),
                    batch_size=batch_size, resolution=resolution, eval_resolution=resolution,
                    conv_lowering=conv_lowering)
    state = init_state(spec, 0)
    jax.block_until_ready(state)
    start = time.perf_counter()
    step, flops = compile_train_step(spec, abstract_state_key(state))
    compile_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    # uint8 images, as the loader ships them (the step normalises on the device).
    batch = (jax.device_put(rng.integers(0, 256, (batch_size, resolution, resolution, 3), dtype=np.uint8),
                            spec.batch_sharding),
             jax.device_put(rng.integers(0, num_classes, batch_size).astype(np.int32), spec.batch_sharding))
    return {"step": step, "state": state, "batch": batch, "flops_per_step": flops, "compile_s": compile_s,
            "spec": spec,
            "devices": f"{len(devices)} x {devices[0].device_kind}",
            "conv_lowering": resolve_conv_lowering(conv_lowering, devices[0].platform)}


def time_steps(built: dict, steps: int) -> tuple[list[float], list[float], float]:
    """(wall seconds, CPU seconds) of each of `steps` steps, each waited on; the last loss."""
    times, cpu_times = [], []
    out = None
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        built["state"], out = built["step"](built["state"], built["batch"])
        jax.block_until_ready((built["state"], out))
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    return times, cpu_times, float(out["loss"]) if out is not None else float("nan")


def measure(variant: str, batch_size: int, resolution: int, steps: int, warmup: int, dtype: str,
            num_classes: int = 10, conv_lowering: str = "auto", profile_dir: str | None = None,
            summarise_ops: bool = False) -> dict:
    """Compile the train step and time it; returns the figures as a dict.

    With `profile_dir`, the timed steps run under `jax.profiler.trace`: open the directory
    with TensorBoard's profile plugin (`pip install tensorboard-plugin-profile`) to see
    every XLA op of the step; with `summarise_ops` too, the result's `op_summary` is the
    traced time by op kind and phase (op_summary.summarise).
    """
    if steps < 1 or warmup < 0:
        raise NFNetError("need --steps >= 1 and --warmup >= 0")
    built = build(variant, batch_size, resolution, dtype, num_classes, conv_lowering, 10 * (steps + warmup))
    time_steps(built, warmup)
    if profile_dir:
        with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
            times, cpu_times, loss = time_steps(built, steps)
    else:
        times, cpu_times, loss = time_steps(built, steps)
    step_s = statistics.median(times)
    cpu_s = statistics.median(cpu_times)
    flops = built["flops_per_step"]
    result = {
        "variant": variant, "resolution": resolution, "batch_size": batch_size, "dtype": dtype,
        "conv_lowering": built["conv_lowering"], "devices": built["devices"], "compile_s": built["compile_s"],
        "step_s": step_s, "step_cpu_s": cpu_s, "images_per_s": batch_size / step_s, "flops_per_step": flops,
        "flop_per_s": flops / step_s, "loss": loss, "xla_flops_per_step": xla_flops(built["step"]),
        "host_allocator": host_allocator.describe(),
    }
    if profile_dir and summarise_ops:
        trace = op_summary.latest_trace(profile_dir)
        result["op_summary"] = op_summary.summarise(trace, built["step"].as_text(), steps)
    return result


def xla_flops(compiled) -> float | None:
    """XLA's own cost analysis of the compiled step, reported beside the trainer's count: it
    includes elementwise work, and XLA:GPU's counts a conv it hands to cuDNN as nothing."""
    try:
        analysis = compiled.cost_analysis()
    except NotImplementedError:  # some PJRT plugins have none
        return None
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per device
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return None if flops is None else float(flops)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="small")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--conv-lowering", default="auto", choices=CONV_LOWERINGS,
                        help="auto: dense on CPU, XLA's native grouped conv elsewhere")
    parser.add_argument("--profile", metavar="DIR", help="trace the timed steps with jax.profiler into DIR "
                        "(TensorBoard's profile plugin shows it)")
    parser.add_argument("--op-summary", action="store_true",
                        help="with --profile: print the traced step's time by op kind (conv, matmul, reduction, "
                             "data movement, elementwise) and phase (forward, backward, update); see op_summary.py")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s (all local devices together) for the dtype: prints the "
                             "model FLOP utilisation, achieved / peak")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args(argv)
    if args.op_summary and not args.profile:
        print("error: --op-summary reads the trace of --profile DIR: give --profile too", file=sys.stderr)
        return 2
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        print(f"error: --peak-tflops must be positive, got {args.peak_tflops}", file=sys.stderr)
        return 2
    try:
        r = measure(args.variant, args.batch_size, args.resolution, args.steps, args.warmup, args.dtype,
                    conv_lowering=args.conv_lowering, profile_dir=args.profile, summarise_ops=args.op_summary)
    except (NFNetError, FileNotFoundError) as e:  # FileNotFoundError: --op-summary found no trace
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.peak_tflops is not None and r["flops_per_step"] is not None:
        r["mfu"] = r["flop_per_s"] / (args.peak_tflops * 1e12)
    if args.json:
        if "op_summary" in r:
            dots = r["op_summary"]["dots"]
            r["op_summary"] = {f"{phase}/{kind}": ms for (phase, kind), ms in r["op_summary"]["ms_per_step"].items()}
            r["op_summary_dots"] = dots
        print(json.dumps(r))
        return 0
    print(f"{r['variant']} {r['resolution']}px batch {r['batch_size']} {r['dtype']} {r['conv_lowering']} convs "
          f"on {r['devices']}: "
          f"{r['images_per_s']:,.0f} images/s, step {r['step_s'] * 1e3:,.1f} ms (median of {args.steps}), "
          f"{r['flops_per_step'] / 1e9:,.2f} GFLOP/step (XLA's cost analysis: "
          + ("none" if r["xla_flops_per_step"] is None else f"{r['xla_flops_per_step'] / 1e9:,.2f}")
          + f"), {r['flop_per_s'] / 1e9:,.1f} GFLOP/s achieved, "
          f"compile {r['compile_s']:.1f} s; CPU time {r['step_cpu_s']:,.2f} s/step "
          f"({r['flops_per_step'] / r['step_cpu_s'] / 1e9:,.1f} GFLOP per CPU-second)"
          + (f"; MFU {r['mfu']:.1%} of {args.peak_tflops:g} TFLOP/s" if "mfu" in r else "")
          + f"; host allocator: {r['host_allocator']}")
    if "op_summary" in r:
        print(f"\nms per step by op kind and phase (summed over threads; {r['op_summary']['total_ms']:,.1f} ms "
              f"of ops against a {r['step_s'] * 1e3:,.1f} ms step):")
        print(op_summary.format_table(r["op_summary"]))
        print("\nconvs and matmuls by phase (FLOPs as XLA compiled them, read from the step's HLO):")
        print(op_summary.format_dots(r["op_summary"]))
    return 0


if __name__ == "__main__":
    host_allocator.command_start()  # jemalloc where installed: nfnet/host_allocator.py
    sys.exit(main())
