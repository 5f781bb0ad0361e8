"""Where a traced training step's time goes: XLA ops grouped by kind and by phase.

    .venv/bin/python benchmarks/train_throughput.py --variant F0 --resolution 64 --batch-size 16 \\
        --profile prof/ --op-summary          # one table after the timed steps
    taskset -c 0 .venv/bin/python benchmarks/train_throughput.py ... --profile prof/ --op-summary

`jax.profiler.trace(..., create_perfetto_trace=True)` writes every XLA:CPU thunk it runs
as an event named after its HLO instruction (`ynn_fusion.12`, `convolution.3`,
`multiply_add_fusion.7`, ...). This reads that trace and the compiled step's HLO text:
the instruction's `op_name` metadata says which part of the program it came from (JAX
names the backward pass `transpose(jvp(...))`, the forward `jvp(...)`; the rest is
AGC, weight decay, the update and the step's bookkeeping), and the ops inside a fusion say
what kind it is (a conv, a matmul, a reduction, data movement only, or elementwise). The
weight-gradient convs XLA builds in its own passes carry no metadata; they are counted in
the backward, as the update has no convs or matmuls. Times are summed per kind and phase and divided by the steps traced.
The convs' and matmuls' FLOPs are read from the same HLO (each dot's and convolution's
operand shapes), so `format_dots` gives their achieved rate by phase and what every other
op (the memory-bound rest) takes: the step's floor if the rest cost nothing.

On more than one core XLA runs independent ops at once, so the sums exceed the step's
wall time; pinned to one core (`taskset -c 0`) they add up to it. TensorBoard's profile
plugin shows the same trace op by op; this is the summary it lacks for the CPU backend.
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import re
from pathlib import Path

KINDS = ("conv", "matmul", "reduction", "data movement", "elementwise", "other")
PHASES = ("forward", "backward", "update and rest")

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*->.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(?:\([^=]*?\)|\S+)\s+([\w\-]+)\(")
_CALLS = re.compile(r"(?:calls|to_apply)=%?([\w.\-]+)")
_OP_NAME = re.compile(r"op_name=\"([^\"]*)\"")
_MODULE = re.compile(r"^HloModule\s+([\w.\-]+)", re.M)
# An instruction with an array result: its name, element type and dimensions.
_ARRAY = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\w+\[([0-9,]*)\]")
_OPERANDS = re.compile(r"\b(?:dot|convolution)\(([^)]*)\)")
_LHS_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([0-9,]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=\w+_(\w+)->")
# Opcodes that only move or reshape data.
_MOVES = {"transpose", "copy", "bitcast", "reshape", "broadcast", "slice", "dynamic-slice", "concatenate", "pad",
          "parameter", "constant", "tuple", "get-tuple-element", "reverse", "dynamic-update-slice", "iota"}


def phase_of(op_name: str) -> str:
    """forward / backward / update from JAX's op_name path (`jit(f)/transpose(jvp(...))/...`)."""
    if "transpose(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "update and rest"


class Hlo:
    """The parts of a compiled module's HLO text the summary needs."""

    def __init__(self, hlo_text: str) -> None:
        module = _MODULE.search(hlo_text)
        self.module = module.group(1) if module else None
        self.opcodes: dict[str, set[str]] = collections.defaultdict(set)  # computation -> its opcodes
        self.op_names: dict[str, set[str]] = collections.defaultdict(set)  # computation -> its op_names
        # instruction -> (opcode, the computation it calls, its own op_name)
        self.instructions: dict[str, tuple[str, str | None, str | None]] = {}
        self.flops: dict[str, float] = collections.defaultdict(float)  # instruction or computation -> dot/conv FLOPs
        self.entry: str | None = None  # the entry computation's name
        # Instruction -> its array result's dimensions. HLO text defines an operand before the
        # instructions that use it (a fused computation before its fusion), so one pass serves.
        shapes: dict[str, list[int]] = {}
        current = None
        for line in hlo_text.splitlines():
            array = _ARRAY.match(line)
            if array:
                shapes[array.group(1)] = _dims(array.group(2))
            header = _HEADER.match(line)
            if header:
                current = header.group(1)
                if line.lstrip().startswith("ENTRY"):
                    self.entry = current
                continue
            m = _INSTRUCTION.match(line)
            if not m or current is None:
                continue
            calls = _CALLS.search(line)
            op_name = _OP_NAME.search(line)
            self.opcodes[current].add(m.group(2))
            if op_name:
                self.op_names[current].add(op_name.group(1))
            self.instructions.setdefault(m.group(1), (m.group(2), calls.group(1) if calls else None,
                                                      op_name.group(1) if op_name else None))
            if m.group(2) in ("dot", "convolution") and m.group(1) in shapes:
                flops = _dot_conv_flops(m.group(2), shapes[m.group(1)], line, shapes)
                self.flops[m.group(1)] += flops
                self.flops[current] += flops

    def dot_conv_flops(self, instruction: str) -> float:
        """FLOPs of the dots and convolutions an instruction runs (inside it, for a fusion)."""
        _, called, _ = self.instructions.get(instruction, ("", None, None))
        return self.flops.get(instruction, 0.0) + (self.flops.get(called, 0.0) if called else 0.0)


def _dims(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _dot_conv_flops(opcode: str, out: list[int], line: str, shapes: dict[str, list[int]]) -> float:
    """2 x (output elements) x (products summed into each): a dot's contracted size, a
    convolution's kernel elements per output feature (its spatial taps x input features of a group)."""
    operands = _OPERANDS.search(line)
    names = re.findall(r"%?([\w.\-]+)", operands.group(1)) if operands else []
    if len(names) < 2 or any(n not in shapes for n in names[:2]):
        return 0.0
    lhs, rhs = shapes[names[0]], shapes[names[1]]
    if opcode == "dot":
        contracting = _LHS_CONTRACTING.search(line)
        per_output = math.prod(lhs[int(i)] for i in _dims(contracting.group(1))) if contracting else 1
    else:
        labels = _DIM_LABELS.search(line)
        if not labels or len(labels.group(1)) != len(rhs):
            return 0.0
        per_output = math.prod(rhs) // rhs[labels.group(1).index("o")]
    return 2.0 * math.prod(out) * per_output


def kind_of(opcodes: set[str]) -> str:
    if "convolution" in opcodes:
        return "conv"
    if "dot" in opcodes or "custom-call" in opcodes:
        return "matmul"
    if opcodes & {"reduce", "reduce-window"}:
        return "reduction"
    if opcodes and opcodes <= _MOVES:
        return "data movement"
    if opcodes:
        return "elementwise"
    return "other"


def classify(hlo: Hlo) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (kind, phase); a fusion is classed by what it computes."""
    out: dict[str, tuple[str, str]] = {}
    for name, (opcode, called, op_name) in hlo.instructions.items():
        fusion = opcode == "fusion" and called
        kind = kind_of(hlo.opcodes[called] if fusion else {opcode})
        names = ({op_name} if op_name else set()) | (hlo.op_names[called] if fusion else set())
        phases = {phase_of(n) for n in names}
        phase = next((p for p in ("backward", "forward") if p in phases), "update and rest")
        if not names and kind in ("conv", "matmul"):
            # XLA builds the weight-gradient convs (and the YNNPACK fusions around them) in
            # its own passes, without JAX's metadata; the update has neither convs nor dots.
            phase = "backward"
        out[name] = (kind, phase)
    return out


def latest_trace(profile_dir: str | Path) -> Path:
    traces = sorted(Path(profile_dir).glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not traces:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {profile_dir}/plugins/profile/")
    return traces[-1]


def summarise(trace_path: str | Path, hlo_text: str, steps: int) -> dict:
    """{(phase, kind): ms per step} and the total, from one trace and the step's HLO (only
    the events of that HLO module count)."""
    with gzip.open(trace_path, "rt") as f:
        events = json.load(f)["traceEvents"]
    hlo = Hlo(hlo_text)
    classes = classify(hlo)
    table: dict[tuple[str, str], float] = collections.defaultdict(float)
    dots: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])  # phase -> [ms, FLOPs] per step
    for e in events:
        args = e.get("args") or {}
        if e.get("ph") != "X" or "hlo_op" not in args:
            continue
        if hlo.module is not None and args.get("hlo_module") != hlo.module:
            continue
        kind, phase = classes.get(args["hlo_op"], ("other", "update and rest"))
        ms = e.get("dur", 0.0) / 1e3 / steps
        table[(phase, kind)] += ms
        if kind in ("conv", "matmul"):
            dots[phase][0] += ms
            dots[phase][1] += hlo.dot_conv_flops(args["hlo_op"]) / steps
    return {"ms_per_step": dict(table), "total_ms": sum(table.values()),
            "dots": {phase: {"ms": ms, "flops": flops} for phase, (ms, flops) in dots.items()}}


def format_dots(summary: dict) -> str:
    """The convs' and matmuls' time, FLOPs and rate by phase, and what the rest of the ops take.

    FLOPs here are XLA's operations as compiled (a padded or zero-dilated conv counts its
    zeros), so they can exceed the trainer's count of the model's FLOPs."""
    dots = summary.get("dots", {})
    lines = ["| phase | conv and matmul ms | GFLOP | GFLOP/s |", "|---|---|---|---|"]
    for phase in PHASES:
        if phase in dots and dots[phase]["ms"] > 0:
            d = dots[phase]
            lines.append(f"| {phase} | {d['ms']:,.1f} | {d['flops'] / 1e9:,.2f} | {d['flops'] / d['ms'] / 1e6:,.1f} |")
    ms, flops = sum(d["ms"] for d in dots.values()), sum(d["flops"] for d in dots.values())
    if ms > 0:
        lines.append(f"| all | {ms:,.1f} | {flops / 1e9:,.2f} | {flops / ms / 1e6:,.1f} |")
    rest = summary["total_ms"] - ms
    lines.append(f"\nconvs and matmuls: {ms:,.1f} of {summary['total_ms']:,.1f} ms of ops; every other op: {rest:,.1f} ms "
                 f"({rest / summary['total_ms']:.0%})" if summary["total_ms"] > 0 else "\nno ops traced")
    return "\n".join(lines)


def format_table(summary: dict) -> str:
    table = summary["ms_per_step"]
    lines = ["| op kind | " + " | ".join(PHASES) + " | all |", "|---" * (len(PHASES) + 2) + "|"]
    for kind in KINDS:
        row = [table.get((p, kind), 0.0) for p in PHASES]
        if sum(row):
            lines.append(f"| {kind} | " + " | ".join(f"{v:,.1f}" for v in row) + f" | {sum(row):,.1f} |")
    totals = [sum(v for (p, _), v in table.items() if p == phase) for phase in PHASES]
    lines.append("| all | " + " | ".join(f"{v:,.1f}" for v in totals) + f" | {sum(totals):,.1f} |")
    return "\n".join(lines)
