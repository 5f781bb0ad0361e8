"""Counting an NFNet's size and cost without allocating it.

- Parameters: `jax.eval_shape` of `init`, so F7+ is counted in seconds with no
  weights in memory and no device touched.
- MACs: the forward pass is traced to a jaxpr (abstract shapes only) and every
  convolution and matrix product in it is counted, every kernel tap included (taps
  on padding too); "FLOPs" in [P2]'s tables are these multiply-adds.
- Training FLOPs (`jaxpr_flops`): 2 x the multiply-adds of every convolution and
  matrix product of the traced training step, each counted as XLA's cost analysis
  counts it (a kernel tap that lands on padding or between the taps of a dilated
  input is not a multiply-add), with work whose result is unused left out, as XLA
  leaves it out. Elementwise work is not counted. The figure is the same on every
  backend: XLA:GPU's own cost analysis counts a convolution it hands to cuDNN as
  nothing (F0's step at 224px: 0.56 GFLOP an image instead of 55.1), and on a CPU
  the count would move with how convs are lowered. The tuner multiplies it by the
  number of steps to account compute. A program it cannot count (a `while` loop,
  whose trip count is not known when traced) gives None, never 0: a FLOPs budget
  counted from zeros would never run out.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from nfnet.model import NFNet
from nfnet.variants import Variant, get_variant


def _as_variant(variant: Variant | str) -> Variant:
    return get_variant(variant) if isinstance(variant, str) else variant


def abstract_variables(model: NFNet, resolution: int = 32):
    """The model's variables as ShapeDtypeStructs (nothing allocated)."""
    x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)


def count_params(variant: Variant | str, num_classes: int = 1000) -> int:
    """Parameter count with a `num_classes`-way head, by shape evaluation; touches no device."""
    # Parameter shapes depend neither on the input resolution (32px is cheapest to trace) nor on
    # how convs are lowered; "native" asks for no backend, where "auto" would start JAX's default
    # one (a driver that did would hold the TPU its trials need).
    variables = abstract_variables(NFNet(_as_variant(variant), num_classes, conv_lowering="native"), 32)
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(variables)))


def _eqn_macs(eqn) -> int:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        lhs, rhs = (v.aval for v in eqn.invars)
        out = eqn.outvars[0].aval
        dn = eqn.params["dimension_numbers"]
        rhs_spec = dn.rhs_spec  # (out_ch, in_ch, spatial...)
        k_in = rhs.shape[rhs_spec[1]]
        k_spatial = int(np.prod([rhs.shape[d] for d in rhs_spec[2:]]))
        return int(np.prod(out.shape)) * k_in * k_spatial
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval
        contract = int(np.prod([lhs.shape[d] for d in lhs_contract]))
        return int(np.prod(eqn.outvars[0].aval.shape)) * contract
    return 0


def _walk(jaxpr, totals: dict[str, int], scope: tuple[str, ...] = ()) -> None:
    for eqn in jaxpr.eqns:
        macs = _eqn_macs(eqn)
        if macs:
            stack = str(eqn.source_info.name_stack)
            totals[stack] = totals.get(stack, 0) + macs
        for sub in jex_core.jaxprs_in_params(eqn.params):
            _walk(sub, totals)


def macs_by_scope(variant: Variant | str, resolution: int, num_classes: int = 1000) -> dict[str, int]:
    """Multiply-adds of one forward pass of one image, keyed by module scope."""
    model = NFNet(_as_variant(variant), num_classes)
    variables = abstract_variables(model, resolution)
    x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    totals: dict[str, int] = {}
    _walk(closed.jaxpr, totals)
    return totals


def count_macs(variant: Variant | str, resolution: int, num_classes: int = 1000) -> int:
    """Multiply-adds of one forward pass of one image at `resolution` px."""
    return sum(macs_by_scope(variant, resolution, num_classes).values())


@dataclass(frozen=True)
class StageRow:
    name: str
    blocks: int
    width: int
    out_resolution: int
    params: int
    macs: int


def _stage_of(scope: str) -> str:
    for part in scope.split("/"):
        if part.startswith("stage"):
            return part.split("_")[0]
        if part.startswith("stem"):
            return "stem"
        if part in ("final_conv", "classifier"):
            return "head"
    return "head"


def stage_table(variant: Variant | str, resolution: int, num_classes: int = 1000) -> list[StageRow]:
    """Per-stage parameters and MACs: stem, stage0..3, head."""
    v = _as_variant(variant)
    model = NFNet(v, num_classes)
    params = abstract_variables(model, 32)["params"]
    param_counts: dict[str, int] = {}
    for key, sub in params.items():
        stage = _stage_of(key)
        param_counts[stage] = param_counts.get(stage, 0) + int(sum(np.prod(x.shape) for x in jax.tree.leaves(sub)))
    mac_counts: dict[str, int] = {}
    for scope, macs in macs_by_scope(v, resolution, num_classes).items():
        stage = _stage_of(scope)
        mac_counts[stage] = mac_counts.get(stage, 0) + macs

    def out_res(n_stride2: int) -> int:
        r = resolution
        for _ in range(n_stride2):
            r = -(-r // 2)  # SAME padding: ceil
        return r

    rows = [StageRow("stem", 4, v.widths[0] // 2, out_res(2), param_counts.get("stem", 0), mac_counts.get("stem", 0))]
    for i, (depth, width) in enumerate(zip(v.depths, v.widths)):
        name = f"stage{i}"
        rows.append(StageRow(name, depth, width, out_res(2 + min(i, 3)), param_counts.get(name, 0), mac_counts.get(name, 0)))
    rows.append(StageRow("head", 2, 2 * v.widths[-1], 1, param_counts.get("head", 0), mac_counts.get("head", 0)))
    return rows


def _conv_fmas(eqn) -> int:
    """Multiply-adds of one `conv_general_dilated`, as XLA's HloCostAnalysis counts them:
    input features per group x output features x batch per batch group x, for each
    spatial dimension, the (output position, kernel tap) pairs whose input index falls
    on a real input element (not on padding, not between the elements of a dilated input)."""
    p = eqn.params
    lhs, rhs = (v.aval for v in eqn.invars)
    out = eqn.outvars[0].aval
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    pairs = 1
    for d in range(len(lhs_spec) - 2):
        size, taps, positions = lhs.shape[lhs_spec[2 + d]], rhs.shape[rhs_spec[2 + d]], out.shape[out_spec[2 + d]]
        index = (np.arange(positions)[:, None] * p["window_strides"][d] - p["padding"][d][0]
                 + np.arange(taps)[None, :] * p["rhs_dilation"][d])  # in the dilated, padded input
        dilation = p["lhs_dilation"][d]
        pairs *= int(((index >= 0) & (index % dilation == 0) & (index // dilation < size)).sum())
    return (lhs.shape[lhs_spec[1]] // p["feature_group_count"] * rhs.shape[rhs_spec[0]]
            * (lhs.shape[lhs_spec[0]] // p["batch_group_count"]) * pairs)


def _live_eqns(jaxpr) -> list:
    """The equations an output depends on (or that have effects): what XLA keeps."""
    live = {v for v in jaxpr.outvars if not isinstance(v, jex_core.Literal)}
    kept = []
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in live for v in eqn.outvars):
            kept.append(eqn)
            live.update(v for v in eqn.invars if not isinstance(v, jex_core.Literal))
    return kept[::-1]


class _Uncountable(Exception):
    pass


def _program_fmas(jaxpr) -> int:
    total = 0
    for eqn in _live_eqns(jaxpr):
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_fmas(eqn)
        elif name == "dot_general":
            total += _eqn_macs(eqn)
        elif name == "while":
            raise _Uncountable(name)
        subs = [_program_fmas(sub) for sub in jex_core.jaxprs_in_params(eqn.params)]
        if name == "cond":  # one branch runs; XLA counts the dearest
            total += max(subs, default=0)
        elif name == "scan":
            total += eqn.params["length"] * sum(subs)
        else:
            total += sum(subs)
    return total


def jaxpr_flops(closed_jaxpr) -> float | None:
    """FLOPs of one run of a traced program (a ClosedJaxpr): 2 x the multiply-adds of its
    convolutions and matrix products (the module docstring says how they are counted);
    None when it cannot be counted (a `while` loop), so that callers cannot mistake
    "unknown" for "free"."""
    try:
        return 2.0 * _program_fmas(closed_jaxpr.jaxpr)
    except _Uncountable:
        return None
