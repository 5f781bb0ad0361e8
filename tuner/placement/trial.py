"""Where one trial runs and what it asks Ray for, derived from the variant and the flags.

    placement = trial_placement("F3", accelerator="tpu", cpus_per_trial=8, batch_size=4096,
                                resolution=224, dtype="bfloat16")
    placement.describe()
    # 'F3 on v4-128 (slice of 16 hosts, 4x4x4, 64 chips): trial {CPU: 1}, each host
    #  {CPU: 8, TPU: 4}; ~22.7 GiB per device of 28.8 GiB usable'

`--accelerator` takes `cpu`, `gpu`, `tpu` (the smallest TPU v4 slice the trial
fits on) or a TPU v4 slice type (`v4-8`, `v4-32`, ...). What a trial occupies, as
cluster/README.md explains:

- `cpu`: `{"CPU": n}`; `gpu`: `{"CPU": n, "GPU": 1}`.
- one TPU host (`v4-8`): `{"CPU": n, "TPU": 4, "TPU-v4-8-head": 1}`. The head key
  keeps the trial off the hosts of multi-host slices (they advertise `TPU: 4` too)
  and is the demand the autoscaler answers by starting a v4-8 VM.
- a multi-host slice (`v4-16` and up): the Tune trial is a driver that asks for one
  CPU and no TPU; it runs Ray Train's `JaxTrainer` (tuner/raytune/slice_trial.py), which
  gang-schedules one worker per host, each `{"CPU": n, "TPU": 4}`, on one whole slice.

The memory-fit rule that picks the slice: training is data-parallel (params,
momentum and gradients replicated on every chip; the global batch split over
chips), so per chip

    bytes ≈ params × (4 param + 4 momentum + 4 grad [+ 4 EMA])
          + (global batch / chips) × activation bytes per example

with activation bytes per example ≈ ACTIVATION_COPIES × (elements of every conv
and dense output of the forward pass) × (2 for bf16 activations, 4 for f32). A
trial fits when that is at most HBM_USABLE_FRACTION of a v4 chip's 32 GiB. It is
a rough rule (no rematerialisation, no fusion savings, XLA's own buffers only
through the usable fraction): it errs large, so an auto-picked slice may be
bigger than the least that would run, never smaller. No variant is split across
chips (no model parallelism): a model whose replicated state alone does not fit
is refused. The parameter count is nfnet's own (`nfnet.counting.count_params`: a
`jax.eval_shape` of the model's init, which allocates nothing and runs on no device),
counted once per variant, multipliers and head (`tuner.records.cells.variant_params`);
the activations are arithmetic on the variant table (`activation_elements`). Importing
this module imports neither JAX nor Ray, and nothing here touches a device (the
driver must not take a TPU its trials need).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from nfnet.errors import NFNetError
from nfnet.variants import Variant, get_variant
from tuner.placement.tpu import V4_CHIPS_PER_HOST, V4_TOPOLOGIES, tpu_slice
from tuner.errors import TunerError
from tuner.records.cells import variant_params

# TPU v4: 32 GiB of HBM per chip (Google Cloud, "TPU v4" system architecture).
HBM_BYTES_PER_V4_CHIP = 32 * 2**30
# Share of HBM the trial's buffers may use; the rest is XLA's and the runtime's.
HBM_USABLE_FRACTION = 0.9
# f32 parameter, Nesterov momentum buffer and gradient per parameter (nfnet/optim.py);
# EMA (fine-tuning) keeps one more f32 copy.
BYTES_PER_PARAM = 4 + 4 + 4
BYTES_PER_PARAM_EMA = 4
ACTIVATION_BYTES = {"float32": 4, "bfloat16": 2}
# Tensors kept for the backward pass per conv/dense output: the output itself, the
# activation applied to it and its scaled copy (the next layer's input). Calibrated
# against XLA's memory analysis of the compiled CPU train step (tests/tuner/test_placement.py).
ACTIVATION_COPIES = 3
# The Tune trial of a multi-host slice only drives Ray Train: one CPU, no TPU.
SLICE_DRIVER_CPUS = 1.0
# num_classes when the caller does not know the dataset's: ImageNet's head.
DEFAULT_NUM_CLASSES = 1000
# Stem and block layout of nfnet/model.py ([P2] Fig. 7 and Sec. 4.1), for the activation count.
_STEM = ((16, 3, 2), (32, 3, 1), (64, 3, 1))
_STRIDES = (1, 2, 2, 2)
_BOTTLENECK = 0.5

ACCELERATOR_HELP = (
    "cpu, gpu, tpu (the smallest TPU v4 slice the trial fits on), or a TPU v4 slice type "
    "such as v4-8 (one host) or v4-32 (four hosts)"
)
KINDS = ("cpu", "gpu", "tpu-host", "tpu-slice")


# ---------------------------------------------------------------- the variant's activations


def _bottleneck(out_ch: int, group_width: int) -> tuple[int, int]:
    groups = int(out_ch * _BOTTLENECK) // group_width
    return groups * group_width, groups


def _out_size(size: int, stride: int) -> int:
    return -(-size // stride)  # SAME padding


def activation_elements(variant: Variant, resolution: int) -> int:
    """Elements of every conv/dense output in one example's forward pass."""
    size, total = resolution, 0
    for out_ch, _, stride in _STEM:
        size = _out_size(size, stride)
        total += out_ch * size * size
    size = _out_size(size, 2)
    total += variant.widths[0] // 2 * size * size
    ch = variant.widths[0] // 2
    for depth, out_ch, stride in zip(variant.depths, variant.widths, _STRIDES):
        for i in range(depth):
            s = stride if i == 0 else 1
            width, _ = _bottleneck(out_ch, variant.group_width)
            out_size = _out_size(size, s)
            if s > 1 or ch != out_ch:
                total += out_ch * out_size * out_size          # shortcut conv
            total += width * size * size                       # conv0
            total += 2 * width * out_size * out_size           # conv1, conv1b
            total += 2 * out_ch * out_size * out_size          # conv2, SE-scaled output
            size, ch = out_size, out_ch
    return total + 2 * ch * size * size  # final conv


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one device holds while training (see the module docstring for the rule)."""

    params: int
    state_bytes: int                  # params, momentum, grads (and EMA), replicated
    activation_bytes_per_example: int
    local_batch: int

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.local_batch * self.activation_bytes_per_example

    def fits(self, device_bytes: int = HBM_BYTES_PER_V4_CHIP) -> bool:
        return self.total_bytes <= HBM_USABLE_FRACTION * device_bytes


def estimate_device_memory(
    variant: Variant,
    batch_size: int,
    devices: int,
    resolution: int | None = None,
    dtype: str = "float32",
    num_classes: int = DEFAULT_NUM_CLASSES,
    ema: bool = False,
) -> MemoryEstimate:
    """Per-device training memory of `variant` (as nfnet.variants.get_variant gives it) with a global
    batch split over `devices`; its parameters are nfnet's count with a `num_classes`-way head."""
    if dtype not in ACTIVATION_BYTES:
        raise TunerError(f"dtype must be one of {', '.join(ACTIVATION_BYTES)}, got {dtype!r}")
    params = variant_params(variant.name, variant.width_mult, variant.depth_mult, num_classes)
    if params is None:
        raise TunerError(f"cannot count the parameters of {variant.label}: nfnet.counting (JAX) is not importable")
    per_param = BYTES_PER_PARAM + (BYTES_PER_PARAM_EMA if ema else 0)
    per_example = ACTIVATION_COPIES * activation_elements(variant, resolution or variant.train_resolution)
    return MemoryEstimate(
        params=params,
        state_bytes=params * per_param,
        activation_bytes_per_example=per_example * ACTIVATION_BYTES[dtype],
        local_batch=math.ceil(batch_size / max(1, devices)),
    )


# ---------------------------------------------------------------- the placement


@dataclass(frozen=True)
class TrialPlacement:
    """What one trial occupies and asks Ray for.

    `resources` is the Tune trial's own request (`tune.with_resources(fn, resources)`);
    for a multi-host slice, `worker_resources` is what each of the `hosts` Ray Train
    workers asks for. `chips` counts accelerator devices of the whole trial.
    """

    kind: str                               # "cpu" | "gpu" | "tpu-host" | "tpu-slice"
    resources: dict[str, float]
    hosts: int = 1
    chips: int = 0
    accelerator_type: str = "cpu"           # "cpu", "gpu" or a TPU v4 slice type
    topology: str | None = None
    worker_resources: dict[str, float] | None = None
    variant: str = ""
    memory: MemoryEstimate | None = field(default=None, compare=False)

    @property
    def is_slice(self) -> bool:
        return self.kind == "tpu-slice"

    def describe(self) -> str:
        """One line for `--dry-run`: where the trial runs and what it asks for."""
        where = {
            "cpu": "CPU",
            "gpu": "one GPU",
            "tpu-host": f"{self.accelerator_type} (one host, {self.chips} chips)",
            "tpu-slice": f"{self.accelerator_type} (slice of {self.hosts} hosts, {self.topology}, {self.chips} chips)",
        }[self.kind]
        text = f"{self.variant} on {where}: trial {_fmt(self.resources)}"
        if self.worker_resources:
            text += f", each host {_fmt(self.worker_resources)}"
        if self.memory is not None:
            text += f"; ~{_gib(self.memory.total_bytes)} GiB per device"
            if self.kind.startswith("tpu"):
                text += f" of {_gib(HBM_USABLE_FRACTION * HBM_BYTES_PER_V4_CHIP)} GiB usable"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for a trial's config or JSON); `from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialPlacement:
        values = dict(data)
        if values.get("memory") is not None:
            values["memory"] = MemoryEstimate(**values["memory"])
        return cls(**values)


def _fmt(resources: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def _variant(name: str, width_mult: float, depth_mult: float) -> Variant:
    try:
        return get_variant(name, width_mult, depth_mult)
    except NFNetError as exc:
        raise TunerError(str(exc)) from None


def _tpu_placement(variant: Variant, accelerator_type: str, cpus_per_trial: float,
                   memory: MemoryEstimate) -> TrialPlacement:
    shape = tpu_slice(accelerator_type)
    if shape.hosts == 1:
        resources = {"CPU": cpus_per_trial, "TPU": float(shape.chips), shape.head_resource: 1.0}
        return TrialPlacement("tpu-host", resources, 1, shape.chips, shape.accelerator_type, shape.topology,
                              None, variant.label, memory)
    worker = {"CPU": cpus_per_trial, "TPU": float(V4_CHIPS_PER_HOST)}
    return TrialPlacement("tpu-slice", {"CPU": SLICE_DRIVER_CPUS}, shape.hosts, shape.chips, shape.accelerator_type,
                          shape.topology, worker, variant.label, memory)


def trial_placement(
    variant: str,
    accelerator: str = "cpu",
    cpus_per_trial: float = 1.0,
    batch_size: int = 256,
    resolution: int | None = None,
    dtype: str = "float32",
    num_classes: int = DEFAULT_NUM_CLASSES,
    ema: bool = False,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
) -> TrialPlacement:
    """The placement of one trial of `variant` on `accelerator` (see the module docstring)."""
    v = _variant(variant, width_mult, depth_mult)
    if not (isinstance(cpus_per_trial, (int, float)) and math.isfinite(cpus_per_trial) and cpus_per_trial > 0):
        raise TunerError(f"--cpus-per-trial must be a number > 0, got {cpus_per_trial}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise TunerError(f"--batch-size must be an integer >= 1, got {batch_size}")
    cpus = float(cpus_per_trial)
    name = str(accelerator).strip().lower()

    def estimate(devices: int) -> MemoryEstimate:
        return estimate_device_memory(v, batch_size, devices, resolution, dtype, num_classes, ema)

    if name == "cpu":
        return TrialPlacement("cpu", {"CPU": cpus}, 1, 0, "cpu", variant=v.label, memory=estimate(1))
    if name == "gpu":
        return TrialPlacement("gpu", {"CPU": cpus, "GPU": 1.0}, 1, 1, "gpu", variant=v.label, memory=estimate(1))
    if name in ("tpu", "v4"):
        return _auto_tpu(v, batch_size, cpus, estimate)
    if not name.startswith("v4-"):
        raise TunerError(f"unknown --accelerator {accelerator!r}: use {ACCELERATOR_HELP}")
    shape = tpu_slice(name)
    if batch_size % shape.chips:
        raise TunerError(f"--batch-size {batch_size} does not divide over the {shape.chips} chips of a "
                         f"{shape.accelerator_type}; use a multiple of {shape.chips}")
    memory = estimate(shape.chips)
    if not memory.fits():
        smallest = _smallest_slice(v, batch_size, estimate)
        hint = f"use --accelerator {smallest} (or tpu) or a smaller --batch-size" if smallest else \
            "use a smaller --batch-size"
        raise TunerError(f"{v.label} at batch {batch_size} needs ~{_gib(memory.total_bytes)} GiB per chip on a "
                         f"{shape.accelerator_type}, more than its {_gib(HBM_USABLE_FRACTION * HBM_BYTES_PER_V4_CHIP)} "
                         f"GiB usable; {hint}")
    return _tpu_placement(v, shape.accelerator_type, cpus, memory)


def _smallest_slice(variant: Variant, batch_size: int, estimate) -> str | None:
    """The smallest TPU v4 slice whose chips divide the batch and hold the trial, or None."""
    for name in V4_TOPOLOGIES:
        chips = tpu_slice(name).chips
        if batch_size % chips == 0 and estimate(chips).fits():
            return name
    return None


def _auto_tpu(variant: Variant, batch_size: int, cpus: float, estimate) -> TrialPlacement:
    name = _smallest_slice(variant, batch_size, estimate)
    if name is None:
        state = estimate(1).state_bytes
        if state > HBM_USABLE_FRACTION * HBM_BYTES_PER_V4_CHIP:
            raise TunerError(f"{variant.label} alone needs ~{_gib(state)} GiB per chip for its parameters, "
                             "momentum and gradients, more than a TPU v4 chip holds; nfscale trains data-parallel "
                             "only, so choose a smaller variant")
        raise TunerError(f"{variant.label} at batch {batch_size} fits on no TPU v4 slice whose chip count divides "
                         "the batch; use a smaller --batch-size or a power-of-two one")
    return _tpu_placement(variant, name, cpus, estimate(tpu_slice(name).chips))


def placement_for_config(config: Mapping[str, Any], accelerator: str = "cpu", cpus_per_trial: float = 1.0,
                         num_classes: int = DEFAULT_NUM_CLASSES) -> TrialPlacement:
    """`trial_placement` from a trial's config (TrainConfig field names, defaults as TrainConfig's)."""
    return trial_placement(
        str(config.get("variant", "nano")),
        accelerator=accelerator,
        cpus_per_trial=cpus_per_trial,
        batch_size=int(config.get("batch_size", 256)),
        resolution=config.get("resolution"),
        dtype=str(config.get("dtype", "float32")),
        num_classes=num_classes,
        ema=float(config.get("ema_decay", 0.0) or 0.0) > 0,
        width_mult=float(config.get("width_mult", 1.0)),
        depth_mult=float(config.get("depth_mult", 1.0)),
    )


