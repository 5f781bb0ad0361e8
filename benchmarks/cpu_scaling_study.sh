#!/usr/bin/env bash
# The CPU-scale reproduction study of docs/cpu_scaling_study.md, end to end, with
# nfscale's own commands. Rerun it to continue after an interruption: the grid
# resumes from Ray's experiment state, the LR walk skips cells its ledger already
# holds, and finished stages are not repeated.
#
#     bash benchmarks/cpu_scaling_study.sh            # everything, ~1.5 h on 2 cores
#     STUDY_DIR=elsewhere bash benchmarks/cpu_scaling_study.sh
#
# Stages: (1) the full grid with tuner.sweep, (2) tuner.lr_search walked through
# the cells in order of size then epoch budget, (3) tuner.promote of the best
# pre-trained model to digits at 32px, (4) tuner.report and tuner.lr_audit.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
OUT=${STUDY_DIR:-results/study}
GRID_LEDGER=$OUT/grid-ledger
WALK_LEDGER=$OUT/walk-ledger
VARIANTS=(nano mini small)
EPOCHS=(0.125 0.25 0.5 1)
mkdir -p "$OUT/walk"
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

# (1) The grid: 3 sizes x 4 epoch budgets x 6 LRs, every run to its end.
if [ ! -f "$OUT/grid.done" ]; then
    resume=()
    [ -d "$OUT/cpu-scaling-grid" ] && resume=(--resume)
    stamp "grid: tuner.sweep --preset cpu-scaling --grid ${resume[*]}"
    "$PY" -m tuner.sweep --preset cpu-scaling --grid --name cpu-scaling-grid \
        --storage "$OUT" --ledger "$GRID_LEDGER" "${resume[@]}"
    touch "$OUT/grid.done"
fi

# (2) The two-trial LR search, cell by cell, smallest model and shortest budget first;
# each cell's bound comes from the cells the walk has already tuned (its own ledger).
# The trials use the grid's trainer settings, so a found LR's loss is the grid's.
for variant in "${VARIANTS[@]}"; do
    for epochs in "${EPOCHS[@]}"; do
        common=(--variant "$variant" --epochs "$epochs" --batch-size 128 --resolution 16
                --dataset fashion_mnist --max-eval-examples 5000 --evals-per-run 4
                --fast-compile --ledger "$WALK_LEDGER" --storage "$OUT")
        tuned=$("$PY" -m tuner.lr_search "${common[@]}" --dry-run --json |
                "$PY" -c 'import json,sys; print(json.load(sys.stdin)["plan"]["already_tuned"])')
        if [ "$tuned" = "True" ]; then
            stamp "walk: $variant at $epochs epochs already tuned"
            continue
        fi
        stamp "walk: tuner.lr_search --variant $variant --epochs $epochs"
        "$PY" -m tuner.lr_search "${common[@]}" --experiment-name "walk-$variant-e$epochs" --json \
            > "$OUT/walk/$variant-e$epochs.json"
    done
done

# (3) Promote the best pre-trained model (lowest final held-out loss) to digits at 32px.
if [ ! -f "$OUT/promote.done" ]; then
    stamp "promote: tuner.promote --dataset digits --resolution 32"
    "$PY" -m tuner.promote --ledger "$GRID_LEDGER" --dataset digits --resolution 32 \
        --name cpu-scaling-finetune --storage "$OUT" --json > "$OUT/promote.json"
    touch "$OUT/promote.done"
fi

# (4) Scaling laws, the optimal-LR table and the walk against the grid.
stamp "report: tuner.report and tuner.lr_audit"
"$PY" -m tuner.report --ledger "$GRID_LEDGER" --lr-search-ledger "$WALK_LEDGER" \
    --out "$OUT/report" --json > "$OUT/report.json"
"$PY" -m tuner.lr_audit --grid "$GRID_LEDGER" --search "$WALK_LEDGER" --out "$OUT/lr_audit.md"
"$PY" -m tuner.ledger show --ledger "$GRID_LEDGER" > "$OUT/grid-ledger.txt"
"$PY" -m tuner.ledger show --ledger "$WALK_LEDGER" > "$OUT/walk-ledger.txt"
stamp "done: $OUT/report/summary.md, $OUT/lr_audit.md"
