import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nfnet.counting import count_macs, count_params, jaxpr_flops, stage_table
from nfnet.model import bottleneck_width
from nfnet.variants import VARIANTS, get_variant

# Published counts with a 1000-class head ([P2] Table 1 / [P1]); F2, F4-F6 to 0.1M.
PUBLISHED_M = {
    "F0": (71.49, 0.005), "F1": (132.63, 0.005), "F3": (254.92, 0.005), "F3+": (423.42, 0.005),
    "F7": (499.50, 0.005), "F7+": (829.55, 0.005),
    "F2": (193.8, 0.05), "F4": (316.1, 0.05), "F5": (377.2, 0.05), "F6": (438.4, 0.05),
}


def hand_count(v, num_classes=1000) -> int:
    """An independent count from the architecture description, no Flax involved."""
    conv = lambda k, cin, cout, groups=1: k * k * (cin // groups) * cout + 2 * cout  # + gain, bias
    dense = lambda cin, cout: cin * cout + cout
    n = conv(3, 3, 16) + conv(3, 16, 32) + conv(3, 32, 64) + conv(3, 64, v.widths[0] // 2)
    ch = v.widths[0] // 2
    for depth, out in zip(v.depths, v.widths):
        for i in range(depth):
            width, groups = bottleneck_width(out, v.group_width)
            n += conv(1, ch, width) + 2 * conv(3, width, width, groups) + conv(1, width, out)
            if i == 0:  # transition block: stride or channel change
                n += conv(1, ch, out)
            hidden = int(out * 0.5)
            n += dense(out, hidden) + dense(hidden, out) + 1  # SE + skip gain
            ch = out
    return n + conv(1, ch, 2 * ch) + dense(2 * ch, num_classes)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_count_of_every_named_variant(name):
    counted = count_params(name, num_classes=1000)
    assert counted == hand_count(VARIANTS[name])
    if name in PUBLISHED_M:
        published, tol = PUBLISHED_M[name]
        assert counted / 1e6 == pytest.approx(published, abs=tol)


def test_parameter_count_with_multipliers_and_other_heads():
    v = get_variant("F0", width_mult=0.5, depth_mult=2)
    assert count_params(v, 10) == hand_count(v, 10)
    assert count_params("F7+", 30000) - count_params("F7+", 1000) == 29000 * (2 * 2048 + 1)


def test_macs_reproduce_the_published_figures():
    assert count_macs("F0", 256) / 1e9 == pytest.approx(12.38, abs=0.005)
    assert count_macs("F7+", 224) / 1e9 == pytest.approx(100.74, abs=0.005)
    assert count_macs("F0", 224) / 1e9 == pytest.approx(9.49, abs=0.005)


def test_stage_table_adds_up_to_the_totals():
    rows = stage_table("micro", 32, num_classes=10)
    assert [r.name for r in rows] == ["stem", "stage0", "stage1", "stage2", "stage3", "head"]
    assert sum(r.params for r in rows) == count_params("micro", 10)
    assert sum(r.macs for r in rows) == count_macs("micro", 32, 10)
    assert [r.out_resolution for r in rows] == [8, 8, 4, 2, 1, 1]


def xla_flops(f, *args) -> float:
    """XLA:CPU's cost analysis of the compiled program (it counts convs; XLA:GPU's does not)."""
    return jax.jit(f).lower(*args).compile().cost_analysis()["flops"]


@pytest.mark.parametrize("size,cin,cout,kernel,stride,groups", [
    (9, 4, 6, 3, 1, 1), (9, 4, 6, 3, 2, 1), (8, 8, 8, 3, 2, 4), (7, 6, 4, 1, 1, 2), (10, 4, 4, 3, 2, 2),
    (5, 3, 3, 5, 2, 1)])
def test_conv_flops_are_counted_as_xla_counts_them(size, cin, cout, kernel, stride, groups):
    """A conv alone, its input gradient alone (a dilated conv when strided) and its weight
    gradient alone (batch-grouped when grouped): the count equals XLA:CPU's exactly. The
    gradient programs trace a forward conv whose result is unused; it must not be counted."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, size, size + 1, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((kernel, kernel, cin // groups, cout), np.float32))

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", feature_group_count=groups,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    programs = {"forward": conv, "input gradient": lambda x, w: jax.grad(lambda x: jnp.sum(conv(x, w)))(x),
                "weight gradient": lambda x, w: jax.grad(lambda w: jnp.sum(conv(x, w)))(w)}
    for name, f in programs.items():
        assert jaxpr_flops(jax.make_jaxpr(f)(x, w)) == xla_flops(f, x, w), name


def test_loops_and_branches_are_counted_as_they_run():
    a = jnp.ones((4, 8))
    b = jnp.ones((8, 3))
    matmul = 2 * 4 * 8 * 3
    assert jaxpr_flops(jax.make_jaxpr(lambda a, b: a @ b)(a, b)) == matmul
    scanned = jax.make_jaxpr(lambda a, b: jax.lax.scan(lambda c, _: (c, c @ b), a, None, length=5)[1])(a, b)
    assert jaxpr_flops(scanned) == 5 * matmul
    branches = jax.make_jaxpr(lambda p, a, b: jax.lax.cond(p, lambda: a @ b, lambda: a[:, :3]))(True, a, b)
    assert jaxpr_flops(branches) == matmul  # the dearer branch, as XLA counts a conditional
    looped = jax.make_jaxpr(lambda a, b: jax.lax.while_loop(lambda c: c.sum() < 10, lambda c: c @ (b @ b.T), a))(a, b)
    assert jaxpr_flops(looped) is None  # unknown trip count: unknown, never 0


def test_training_step_flops_are_the_same_on_every_lowering_and_below_xlas_figure():
    """The trainer's step (nfnet.step): its count is XLA:CPU's figure less elementwise work
    (XLA counts every add and multiply; a little of the whole for a conv net), the same
    for both conv lowerings, and about three forward passes."""
    from jax.sharding import Mesh

    from nfnet.optim import OptimConfig
    from nfnet.step import DATA_AXIS, StepSpec, abstract_state_key, compile_train_step, init_state

    batch, res = 8, 32
    figures = {}
    for lowering in ("native", "dense"):
        spec = StepSpec(variant=get_variant("nano"), num_classes=10, dtype="float32", stochdepth_rate=0.0,
                        dropout_rate=0.0, label_smoothing=0.0, optim=OptimConfig(lr=0.1, total_steps=10),
                        sam_rho=0.0, sam_fraction=0.2, ema_decay=0.0,
                        mesh=Mesh(np.array(jax.devices()[:1]), (DATA_AXIS,)), batch_size=batch,
                        resolution=res, eval_resolution=res, conv_lowering=lowering)
        compiled, flops = compile_train_step(spec, abstract_state_key(init_state(spec, 0)))
        figures[lowering] = (flops, compiled.cost_analysis()["flops"])
    (native, native_xla), (dense, dense_xla) = figures["native"], figures["dense"]
    assert native == dense
    assert 0.9 * native_xla < native < native_xla and 0.9 * dense_xla < dense < dense_xla
    forward_flops = 2 * count_macs("nano", res, 10) * batch  # counts taps on padding: a little high
    assert 2.5 * forward_flops < native < 3.2 * forward_flops
