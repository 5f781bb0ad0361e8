"""Counting an NFNet's size and cost without allocating it.

- Parameters: `jax.eval_shape` of `init`, so F7+ is counted in seconds with no
  weights in memory and no device touched.
- MACs: the forward pass is traced to a jaxpr (abstract shapes only) and every
  convolution and matrix product in it is counted; "FLOPs" in [P2]'s tables are
  these multiply-adds.
- Training FLOPs: XLA's own cost analysis of the compiled training step
  (`jit(...).lower(...).compile().cost_analysis()`), which the tuner multiplies
  by the number of steps to account compute. A backend whose cost analysis gives
  no figure (or 0) gives None, never 0: a FLOPs budget counted from zeros would
  never run out.
"""

from __future__ import annotations

import math
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


def compiled_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled XLA computation, from XLA's cost analysis;
    None when the backend reports no positive finite figure (no cost analysis, no
    `flops` entry, or 0), so that callers cannot mistake "unknown" for "free"."""
    try:
        analysis = compiled.cost_analysis()
    except NotImplementedError:  # some PJRT plugins do not implement it
        return None
    if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    if flops is None:
        return None
    flops = float(flops)
    return flops if math.isfinite(flops) and flops > 0 else None
