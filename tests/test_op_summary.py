"""benchmarks/op_summary.py on a real trace: a conv layer's step, traced by jax.profiler."""

import jax
import jax.numpy as jnp
import numpy as np
from bench_modules import load_benchmark


def load_op_summary():
    return load_benchmark("op_summary")


def step(params, mom, x):
    """A conv, a dense head, its gradient, and a momentum update (elementwise only)."""
    def loss(p):
        y = jax.lax.conv_general_dilated(x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = jax.nn.gelu(y).reshape(x.shape[0], -1) @ p["head"]
        return jnp.mean(y ** 2)

    value, grads = jax.value_and_grad(loss)(params)
    mom = jax.tree.map(lambda m, g: 0.9 * m + g, mom, grads)
    params = jax.tree.map(lambda p, m: p - 0.01 * m, params, mom)
    return params, mom, value


# The traced step's shapes: batch, map size, conv channels in and out, head outputs.
N, HW, CIN, COUT, CLASSES = 4, 16, 8, 16, 4


def compile_conv_step(seed: int = 0):
    """`step` compiled for a 3x3 conv and a dense head; its first inputs."""
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.standard_normal((3, 3, CIN, COUT), np.float32)),
              "head": jnp.asarray(rng.standard_normal((HW * HW * COUT, CLASSES), np.float32))}
    mom = jax.tree.map(jnp.zeros_like, params)
    x = jnp.asarray(rng.standard_normal((N, HW, HW, CIN), np.float32))
    return jax.jit(step).lower(params, mom, x).compile(), (params, mom, x)


def trace_steps(ops, tmp_path, compiled, inputs, steps: int) -> dict:
    """Run the compiled step `steps` times under jax.profiler; op_summary's summary of the trace."""
    params, mom, x = inputs
    jax.block_until_ready(compiled(params, mom, x))
    with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
        for _ in range(steps):
            params, mom, _ = jax.block_until_ready(compiled(params, mom, x))
    return ops.summarise(ops.latest_trace(tmp_path), compiled.as_text(), steps=steps)


def test_trace_is_split_by_phase_and_kind(tmp_path):
    ops = load_op_summary()
    compiled, inputs = compile_conv_step()
    summary = trace_steps(ops, tmp_path, compiled, inputs, steps=3)
    table = summary["ms_per_step"]
    assert table.get(("forward", "conv"), 0) > 0
    assert table.get(("backward", "conv"), 0) + table.get(("backward", "matmul"), 0) > 0
    # The update is elementwise: no conv or matmul may be put there.
    assert table.get(("update and rest", "conv"), 0) == 0
    assert table.get(("update and rest", "matmul"), 0) == 0
    assert summary["total_ms"] == sum(table.values()) > 0
    text = ops.format_table(summary)
    assert text.splitlines()[0].startswith("| op kind | forward | backward | update and rest")


def test_no_trace_is_a_clear_error(tmp_path):
    ops = load_op_summary()
    try:
        ops.latest_trace(tmp_path)
    except FileNotFoundError as e:
        assert "perfetto_trace.json.gz" in str(e)
    else:
        raise AssertionError("latest_trace found a trace in an empty directory")


def test_phase_and_kind_rules():
    ops = load_op_summary()
    assert ops.phase_of("jit(step)/transpose(jvp(conv_general_dilated))") == "backward"
    assert ops.phase_of("jit(step)/jvp(gelu)/tanh") == "forward"
    assert ops.phase_of("jit(step)/mul") == "update and rest"
    assert ops.kind_of({"convolution", "add"}) == "conv"
    assert ops.kind_of({"dot", "parameter"}) == "matmul"
    assert ops.kind_of({"reduce", "multiply"}) == "reduction"
    assert ops.kind_of({"transpose", "copy", "parameter"}) == "data movement"
    assert ops.kind_of({"multiply", "add", "parameter"}) == "elementwise"
    # "convert" is not a conv.
    assert ops.kind_of({"convert", "parameter"}) == "elementwise"


def test_dot_and_conv_flops_are_read_from_the_hlo(tmp_path):
    """The convs' and matmuls' FLOPs equal the maths: forward conv and head, and their gradients."""
    ops = load_op_summary()
    compiled, inputs = compile_conv_step(seed=1)
    hlo = ops.Hlo(compiled.as_text())
    total = hlo.flops[hlo.entry] + sum(hlo.flops[called] for opcode, called, _ in hlo.instructions.values()
                                       if opcode == "fusion" and called)
    conv = 2 * N * HW * HW * 9 * CIN * COUT  # the forward conv; its weight gradient is the same count
    head = 2 * N * HW * HW * COUT * CLASSES  # the head's forward; its two gradients the same each
    # x's gradient is never taken (x is not differentiated), so: conv forward + weight gradient, head x 3.
    assert total == 2 * conv + 3 * head

    summary = trace_steps(ops, tmp_path, compiled, inputs, steps=2)
    dots = summary["dots"]
    assert dots["forward"]["flops"] == conv + head
    assert sum(d["flops"] for d in dots.values()) == 2 * conv + 3 * head
    assert all(d["ms"] > 0 for d in dots.values())
    text = ops.format_dots(summary)
    assert text.splitlines()[0] == "| phase | conv and matmul ms | GFLOP | GFLOP/s |"
    assert "every other op" in text
