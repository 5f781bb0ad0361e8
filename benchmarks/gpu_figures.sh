#!/usr/bin/env bash
# The trainer's figures on one GPU, in one run (docs/benchmarks.md, "On a GPU"):
#   1. F0 at 224px in bfloat16 at growing batches until one no longer fits: images/s and
#      MFU against the chip's bf16 peak (PEAK_BF16_TFLOPS, default 989: H100/H200 SXM,
#      dense, from the spec sheet);
#   2. F0 at 224px batch 32 in bfloat16: beside the NFNet paper's 56.7 ms training step
#      of F0 on one V100 (batch 32, fp16, its Table 3);
#   3. the same as 1 in float32 at the largest batch that fitted, halved;
#   each with the trainer's FLOPs count beside XLA's own cost analysis of the same step;
#   4. the main job, `python -m tuner.lr_search --accelerator gpu`, when Ray and Optuna
#      import (carry their wheels where the machine lacks them).
#
#     bash benchmarks/gpu_figures.sh                  # logs and JSON lines into $OUT (default gpu-figures/)
#     PYTHON=python3 BATCHES="64 128 256" bash benchmarks/gpu_figures.sh
#     MAIN_JOB_FLAGS="--dataset fashion_mnist --data-dir .fmnist" bash benchmarks/gpu_figures.sh
#     ALLOW_CPU=1 VARIANT=nano RESOLUTION=16 BATCHES="8 16" STEPS=1 bash benchmarks/gpu_figures.sh  # a smoke run
#
# The main job trains on Fashion-MNIST where the Debian package is installed, else on
# scikit-learn's digits: on a machine without it, carry the four .gz files and point
# MAIN_JOB_FLAGS at them, or its figures are not comparable with the CPU's.
#
# Needs jax with a CUDA backend, flax and optax on PYTHON; nfscale from this checkout
# (PYTHONPATH). Each figure is one process, so a batch that runs out of memory ends
# only its own line. About 6-8 minutes on an H200, most of it compiling.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
OUT=${OUT:-gpu-figures}
PEAK=${PEAK_BF16_TFLOPS:-989}
BATCHES=${BATCHES:-"64 128 256 512"}
STEPS=${STEPS:-10}
VARIANT=${VARIANT:-F0}
RES=${RESOLUTION:-224}
read -r -a MAIN <<< "${MAIN_JOB_FLAGS:-}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

"$PY" -c "import jax; d = jax.devices(); print(len(d), 'x', d[0].device_kind, d[0].platform)" | tee "$OUT/devices.txt"
if ! grep -qi gpu "$OUT/devices.txt" && [ -z "${ALLOW_CPU:-}" ]; then
    echo "error: JAX sees no GPU here ($(cat "$OUT/devices.txt")); run this on the GPU machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$OUT/devices.txt"

# figure NAME ARGS...: one train_throughput run, its JSON line appended to figures.jsonl.
figure() {
    local name=$1
    shift
    stamp "$name: train_throughput.py $*"
    if "$PY" benchmarks/train_throughput.py --steps "$STEPS" --json "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"; then
        tail -n 1 "$OUT/$name.json" | tee -a "$OUT/figures.jsonl"
        return 0
    fi
    echo "  $name did not run (out of memory?): $(grep -m1 -iE 'error|resource' "$OUT/$name.log" | cut -c1-200)"
    return 1
}

fitted=""
for batch in $BATCHES; do
    figure "$VARIANT-$RES-bf16-b$batch" --variant "$VARIANT" --resolution "$RES" --batch-size "$batch" \
        --dtype bfloat16 --peak-tflops "$PEAK" || break
    fitted=$batch
done
figure "$VARIANT-$RES-bf16-b32" --variant "$VARIANT" --resolution "$RES" --batch-size 32 --dtype bfloat16 \
    --peak-tflops "$PEAK"
if [ -n "$fitted" ]; then
    figure "$VARIANT-$RES-f32-b$((fitted / 2))" --variant "$VARIANT" --resolution "$RES" \
        --batch-size "$((fitted / 2))" --dtype float32 --peak-tflops "$PEAK"
fi

if "$PY" -c "import ray, optuna" 2>/dev/null; then
    stamp "main job: python -m tuner.lr_search --accelerator gpu"
    start=$(date +%s)
    # The driver and each trial's process are JAX clients of the one GPU: none takes 75% of it up front.
    XLA_PYTHON_CLIENT_PREALLOCATE=false \
        "$PY" -m tuner.lr_search --accelerator gpu --storage "$OUT/runs" --ledger "$OUT/ledger" "${MAIN[@]}" \
        > "$OUT/main-job.log" 2> "$OUT/main-job.err"
    echo "main job: exit $?, $(( $(date +%s) - start )) s wall; $(tail -n 3 "$OUT/main-job.log")"
else
    stamp "main job skipped: ray and optuna do not import here (carry their wheels)"
fi
"$PY" - "$OUT/figures.jsonl" <<'PYEOF'
import json, sys
print("| run | images/s | step (ms) | achieved TFLOP/s | MFU | compile (s) | GFLOP/step: counted, XLA's |")
print("|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"| {r['variant']} {r['resolution']}px {r['dtype']} batch {r['batch_size']} | {r['images_per_s']:,.0f} | "
          f"{r['step_s'] * 1e3:,.1f} | {r['flop_per_s'] / 1e12:,.1f} | {r.get('mfu', float('nan')):.1%} | "
          f"{r['compile_s']:.0f} | {r['flops_per_step'] / 1e9:,.1f}, "
          + ("none" if r.get("xla_flops_per_step") is None else f"{r['xla_flops_per_step'] / 1e9:,.1f}") + " |")
PYEOF
