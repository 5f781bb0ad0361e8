"""Per-trial placement: resources, hosts and slices derived from the variant and flags (no Ray)."""

from __future__ import annotations

import pickle

import pytest

from nfnet.variants import get_variant
from tuner.errors import TunerError
from tuner.placement.trial import HBM_BYTES_PER_V4_CHIP, HBM_USABLE_FRACTION, TrialPlacement, activation_elements, estimate_device_memory, placement_for_config, trial_placement


def params(variant, num_classes=1000):
    """The parameter count the memory estimate uses."""
    return estimate_device_memory(variant, 1, 1, num_classes=num_classes).params


def test_param_count_matches_the_model_table():
    # [P2] Table 1 / PAPER.md: F0 has 71.49M parameters with a 1000-way head.
    assert params(get_variant("F0")) == pytest.approx(71.49e6, rel=1e-3)
    assert params(get_variant("F7")) == pytest.approx(499.50e6, rel=1e-3)


@pytest.mark.parametrize("name, classes", [("nano", 10), ("mini", 10), ("nano-w2-d2", 7), ("F0", 1000)])
def test_param_count_matches_the_flax_model(name, classes):
    from nfnet.counting import count_params as flax_count

    variant = get_variant(name)
    assert params(variant, classes) == flax_count(variant, classes)


def test_activations_grow_with_resolution_squared_and_depth():
    f0 = get_variant("F0")
    small, large = activation_elements(f0, 112), activation_elements(f0, 224)
    assert large == pytest.approx(4 * small, rel=0.05)
    assert activation_elements(get_variant("F3"), 224) > 2 * large


@pytest.mark.slow
def test_activation_estimate_matches_xla_memory_analysis():
    """ACTIVATION_COPIES: XLA's temporaries per extra example of a compiled training gradient,
    with native convs as on the TPUs and GPUs the estimate places trials on. The CPU's dense
    lowering holds more (its per-tap weight gradients keep nine shifted input slices: 1.8x
    for nano, docs/benchmarks.md); host memory, which the placement does not budget, pays it."""
    import jax
    import jax.numpy as jnp
    import optax

    from nfnet.model import NFNet

    variant = get_variant("nano")

    def per_example_temporaries(lowering: str) -> float:
        model = NFNet(variant, 10, conv_lowering=lowering)
        params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)["params"]

        def loss(p, x, y):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x, train=True), y).mean()

        grad = jax.jit(jax.value_and_grad(loss))
        temp = []
        for batch in (8, 24):
            compiled = grad.lower(params, jnp.zeros((batch, 32, 32, 3)), jnp.zeros((batch,), jnp.int32)).compile()
            temp.append(compiled.memory_analysis().temp_size_in_bytes)
        return (temp[1] - temp[0]) / 16

    estimate = estimate_device_memory(variant, 1, 1, resolution=32, dtype="float32", num_classes=10)
    assert estimate.activation_bytes_per_example == pytest.approx(per_example_temporaries("native"), rel=0.25)
    assert per_example_temporaries("dense") < 2.5 * estimate.activation_bytes_per_example


def test_memory_estimate_is_replicated_state_plus_the_local_batch():
    f0 = get_variant("F0")
    one = estimate_device_memory(f0, 256, 4, resolution=224, dtype="bfloat16")
    assert one.state_bytes == one.params * 12
    assert one.local_batch == 64
    four = estimate_device_memory(f0, 256, 16, resolution=224, dtype="bfloat16")
    assert four.state_bytes == one.state_bytes and four.local_batch == 16
    assert four.total_bytes < one.total_bytes
    f32 = estimate_device_memory(f0, 256, 4, resolution=224, dtype="float32")
    assert f32.activation_bytes_per_example == 2 * one.activation_bytes_per_example
    ema = estimate_device_memory(f0, 256, 4, resolution=224, ema=True)
    assert ema.state_bytes == one.params * 16


# ---------------------------------------------------------------- CPU and GPU


def test_cpu_trial_asks_for_its_cpus_only():
    p = trial_placement("nano", "cpu", cpus_per_trial=2)
    assert p.kind == "cpu" and p.resources == {"CPU": 2.0}
    assert (p.hosts, p.chips, p.accelerator_type, p.topology, p.worker_resources) == (1, 0, "cpu", None, None)
    assert "nano on CPU: trial {CPU: 2}" in p.describe()


def test_gpu_trial_asks_for_one_gpu_and_cpus():
    p = trial_placement("F0", "GPU", cpus_per_trial=4)
    assert p.kind == "gpu" and p.resources == {"CPU": 4.0, "GPU": 1.0} and p.chips == 1


# ---------------------------------------------------------------- TPU hosts and slices


def test_small_variant_on_v4_8_asks_for_the_whole_host_and_its_head():
    p = trial_placement("nano", "v4-8", cpus_per_trial=8)
    assert p.kind == "tpu-host"
    assert p.resources == {"CPU": 8.0, "TPU": 4.0, "TPU-v4-8-head": 1.0}
    assert (p.hosts, p.chips, p.topology, p.worker_resources) == (1, 4, "2x2x1", None)


def test_auto_tpu_keeps_a_variant_that_fits_on_one_host():
    p = trial_placement("F0", "tpu", cpus_per_trial=8, batch_size=256, resolution=224, dtype="bfloat16")
    assert p.kind == "tpu-host" and p.accelerator_type == "v4-8"
    assert p.memory.fits()


def test_auto_tpu_moves_a_variant_that_outgrows_a_host_onto_a_slice():
    # F0 at the paper's batch 4096: ~1024 images per chip on a v4-8 do not fit in 32 GiB.
    p = trial_placement("F0", "tpu", cpus_per_trial=8, batch_size=4096, resolution=224, dtype="bfloat16")
    assert p.kind == "tpu-slice" and p.accelerator_type == "v4-32"
    assert (p.hosts, p.chips, p.topology) == (4, 16, "2x2x4")
    assert p.resources == {"CPU": 1.0}                       # the trial only drives Ray Train
    assert p.worker_resources == {"CPU": 8.0, "TPU": 4.0}    # one worker per host
    assert p.memory.total_bytes <= HBM_USABLE_FRACTION * HBM_BYTES_PER_V4_CHIP
    assert "slice of 4 hosts" in p.describe() and "each host {CPU: 8, TPU: 4}" in p.describe()


def test_f7_plus_needs_a_large_slice_and_the_pick_is_the_smallest_that_fits():
    p = trial_placement("F7+", "tpu", batch_size=4096, resolution=224, dtype="bfloat16")
    assert p.kind == "tpu-slice" and p.hosts > 4
    smaller = {"v4-128": 64, "v4-256": 128}
    for name, chips in smaller.items():
        if chips < p.chips:
            est = estimate_device_memory(get_variant("F7+"), 4096, chips, resolution=224, dtype="bfloat16")
            assert not est.fits(), name


def test_explicit_slice_is_used_even_for_a_small_variant():
    p = trial_placement("nano", "v4-32", cpus_per_trial=2)
    assert p.kind == "tpu-slice" and p.hosts == 4 and p.topology == "2x2x4"
    assert p.worker_resources == {"CPU": 2.0, "TPU": 4.0}


def test_explicit_slice_too_small_names_the_one_that_fits():
    with pytest.raises(TunerError, match=r"F7\+ at batch 4096 needs .* on a v4-8.*--accelerator v4-\d+"):
        trial_placement("F7+", "v4-8", batch_size=4096, resolution=224, dtype="bfloat16")


def test_batch_that_does_not_divide_over_the_chips_is_refused():
    with pytest.raises(TunerError, match="does not divide over the 16 chips of a v4-32; use a multiple of 16"):
        trial_placement("nano", "v4-32", batch_size=100)


@pytest.mark.parametrize("bad", ["v5e-8", "tpu-v4-8", "a100", "", "v4-12"])
def test_unknown_accelerator_is_a_one_line_tuner_error(bad):
    with pytest.raises(TunerError) as info:
        trial_placement("nano", bad)
    message = str(info.value)
    assert "\n" not in message and repr(bad) in message
    assert "v4-8" in message


@pytest.mark.parametrize("kwargs, text", [
    ({"variant": "F99"}, "unknown variant"),
    ({"cpus_per_trial": 0}, "--cpus-per-trial must be a number > 0"),
    ({"batch_size": 0}, "--batch-size must be an integer >= 1"),
    ({"dtype": "float16"}, "dtype must be one of"),
])
def test_other_mistakes_are_tuner_errors(kwargs, text):
    args = {"variant": "nano", **kwargs}
    with pytest.raises(TunerError, match=text):
        trial_placement(**args)


def test_placement_from_a_trial_config_and_back_through_plain_data():
    config = {"variant": "F0", "batch_size": 4096, "resolution": 224, "dtype": "bfloat16", "lr": 1.6}
    p = placement_for_config(config, accelerator="tpu", cpus_per_trial=8)
    assert p.accelerator_type == "v4-32"
    again = TrialPlacement.from_dict(p.to_dict())
    assert again == p and again.memory == p.memory
    assert pickle.loads(pickle.dumps(p)) == p
