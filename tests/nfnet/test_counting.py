import jax
import jax.numpy as jnp
import optax
import pytest

from nfnet.counting import compiled_flops, count_macs, count_params, stage_table
from nfnet.model import NFNet, bottleneck_width
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


def test_training_step_flops_from_xla_cost_analysis_are_about_three_forward_passes():
    batch, res = 4, 32
    model = NFNet(get_variant("nano"), num_classes=10)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, res, res, 3)))["params"]

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    step = jax.jit(jax.grad(loss_fn))
    compiled = step.lower(params, jnp.zeros((batch, res, res, 3)), jnp.zeros((batch,), jnp.int32)).compile()
    flops = compiled_flops(compiled)
    forward_flops = 2 * count_macs("nano", res, 10) * batch
    # Backward costs about twice the forward; elementwise work adds a little.
    assert 2.5 * forward_flops < flops < 6 * forward_flops


class _NoCostAnalysis:
    """Stands in for a compiled computation on a backend whose XLA cost analysis has no
    figure (some PJRT plugins return nothing, or no `flops` entry, or 0)."""

    def __init__(self, analysis):
        self.analysis = analysis

    def cost_analysis(self):
        if isinstance(self.analysis, Exception):
            raise self.analysis
        return self.analysis


@pytest.mark.parametrize(
    "analysis", [None, {}, [], [{}], {"bytes accessed": 1e6}, {"flops": 0.0}, {"flops": -1.0},
                 {"flops": float("nan")}, NotImplementedError("no cost analysis")])
def test_compiled_flops_is_none_when_xla_gives_no_figure(analysis):
    assert compiled_flops(_NoCostAnalysis(analysis)) is None


def test_compiled_flops_reads_the_figure_of_old_and_new_jax():
    assert compiled_flops(_NoCostAnalysis({"flops": 5.0})) == 5.0
    assert compiled_flops(_NoCostAnalysis([{"flops": 7.0}])) == 7.0
