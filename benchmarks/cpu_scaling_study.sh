#!/usr/bin/env bash
# The CPU-scale reproduction study of docs/cpu_scaling_study.md, end to end, with
# nfscale's own commands. Rerun it to continue after an interruption: the grid
# resumes from Ray's experiment state (or, where that is gone, from its ledger with
# --skip-recorded), the LR walk skips cells its ledger already holds, and finished
# stages are not repeated.
#
#     bash benchmarks/cpu_scaling_study.sh            # everything, about 2 h on 2 cores
#     STUDY_DIR=elsewhere bash benchmarks/cpu_scaling_study.sh
#     STUDY_FROM=docs/cpu_scaling_study bash benchmarks/cpu_scaling_study.sh
#
# STUDY_FROM continues in a new checkout from a recorded study's ledgers (a directory
# holding grid-ledger/ and walk-ledger/, as docs/cpu_scaling_study/ does): they are
# copied in where the study directory has none, and only what they lack is run. Only
# the ledgers travel, not the checkpoints, so promotion needs its parent's checkpoint
# on this machine (tuner.promote says so when it is missing).
#
# Stages: (1) the full grid with tuner.sweep, (1b) two more seeds of the nano and
# mini cells near their optima, (2) tuner.lr_search walked through the cells in order
# of size then epoch budget, (3) tuner.promote of the best pre-trained model to digits
# at 32px, (4) tuner.report, tuner.lr_audit and the seed-noise table.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
OUT=${STUDY_DIR:-results/study}
GRID_LEDGER=$OUT/grid-ledger
WALK_LEDGER=$OUT/walk-ledger
SEEDS_LEDGER=$OUT/seeds-ledger
VARIANTS=(nano mini small)
EPOCHS=(0.125 0.25 0.5 1)
mkdir -p "$OUT/walk"
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }

if [ -n "${STUDY_FROM:-}" ]; then
    for ledger in grid-ledger seeds-ledger walk-ledger; do
        if [ -d "$STUDY_FROM/$ledger" ] && [ ! -d "$OUT/$ledger" ]; then
            stamp "continuing from $STUDY_FROM/$ledger"
            cp -r "$STUDY_FROM/$ledger" "$OUT/$ledger"
        fi
    done
fi

# A grid with tuner.sweep, continued from Ray's experiment state when it is here, else
# from the cells its ledger lacks. An interrupted sweep (Ctrl-C, a stopped driver) also
# exits 0: the grid is done when its ledger holds every cell (--skip-recorded would run
# nothing). run_grid NAME PRESET LEDGER [more tuner.sweep flags]
run_grid() {
    local name=$1 preset=$2 ledger=$3
    shift 3
    [ -f "$OUT/$name.done" ] && return 0
    local continue_from=(--skip-recorded)
    [ -d "$OUT/$name" ] && continue_from=(--resume)
    stamp "$name: tuner.sweep --preset $preset --grid $* ${continue_from[*]}"
    "$PY" -m tuner.sweep --preset "$preset" --grid --name "$name" --storage "$OUT" --ledger "$ledger" \
        "$@" "${continue_from[@]}"
    local left
    left=$("$PY" -m tuner.sweep --preset "$preset" --grid --skip-recorded --ledger "$ledger" "$@" --dry-run --json |
           "$PY" -c 'import json,sys; print(json.load(sys.stdin)["num_samples"])')
    if [ "$left" != "0" ]; then
        echo "error: $name's ledger lacks $left cell(s) (interrupted, or trials failed after their retries);" \
             "rerun this script to continue" >&2
        exit 1
    fi
    touch "$OUT/$name.done"
}

# (1) The grid: 3 sizes x 4 epoch budgets x 7 LRs, every run to its end.
run_grid cpu-scaling-grid cpu-scaling "$GRID_LEDGER"
# (1b) Seed repeats of nano and mini at the LRs where their optima lie: how much of a
# cell's LR ranking is noise (benchmarks/seed_noise.py).
for seed in 1 2; do
    run_grid "cpu-scaling-seed$seed" benchmarks/cpu_scaling_seeds.py "$SEEDS_LEDGER" --seed "$seed"
done

# (2) The two-trial LR search, cell by cell, smallest model and shortest budget first;
# each cell's bound comes from the cells the walk has already tuned (its own ledger).
# The trials use the grid's trainer settings, so a found LR's loss is the grid's.
# The walk is anchored as the paper's was: the smallest model at the shortest budget
# is tuned by a full sweep (here, the grid's own runs of that cell, imported), and
# every later cell gets two trials. `tuner.lr_audit` also replays the walk without
# the anchor (the paper's 1.6 at batch 4096 as the first bound) at no compute.
if [ ! -d "$WALK_LEDGER" ]; then
    stamp "walk: anchor ${VARIANTS[0]} at ${EPOCHS[0]} epochs from the grid"
    "$PY" -m tuner.ledger show --ledger "$GRID_LEDGER" --kind pretrain --json |
        "$PY" -c '
import csv, json, sys
variant, epochs = sys.argv[1], float(sys.argv[2])
rows = [r for r in json.load(sys.stdin) if r["variant"] == variant and r["epochs"] == epochs
        and r["status"] == "finished"]
if not rows:
    sys.exit(f"error: the grid ledger has no finished {variant} run at {epochs:g} epochs to anchor the walk")
cols = ["variant", "width_mult", "depth_mult", "params", "epochs", "lr", "batch_size", "dataset",
        "val_loss", "top1", "compute"]
out = csv.writer(sys.stdout)
out.writerow(cols)
for r in rows:
    out.writerow([r["variant"], r["width_mult"], r["depth_mult"], r["params"], r["epochs"], r["lr"],
                  r["batch_size"], r["dataset"], r["final_val_loss"], r["top1"], r["flops"]])
' "${VARIANTS[0]}" "${EPOCHS[0]}" > "$OUT/walk-anchor.csv"
    "$PY" -m tuner.ledger import "$OUT/walk-anchor.csv" --ledger "$WALK_LEDGER" --source grid-anchor
fi
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
promoted=$("$PY" -m tuner.ledger show --ledger "$GRID_LEDGER" --kind finetune --json |
           "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)))')
if [ "$promoted" = "0" ]; then
    stamp "promote: tuner.promote --dataset digits --resolution 32"
    "$PY" -m tuner.promote --ledger "$GRID_LEDGER" --dataset digits --resolution 32 \
        --name cpu-scaling-finetune --storage "$OUT" --json > "$OUT/promote.json"
fi

# (4) Scaling laws, the optimal-LR table and the walk against the grid.
stamp "report: tuner.report and tuner.lr_audit"
"$PY" -m tuner.report --ledger "$GRID_LEDGER" --lr-search-ledger "$WALK_LEDGER" \
    --out "$OUT/report" --json > "$OUT/report.json"
"$PY" -m tuner.lr_audit --grid "$GRID_LEDGER" --search "$WALK_LEDGER" --out "$OUT/lr_audit.md"
"$PY" -m tuner.ledger show --ledger "$GRID_LEDGER" > "$OUT/grid-ledger.txt"
"$PY" -m tuner.ledger show --ledger "$WALK_LEDGER" > "$OUT/walk-ledger.txt"
"$PY" benchmarks/seed_noise.py --ledger "$GRID_LEDGER" --ledger "$SEEDS_LEDGER" > "$OUT/seed_noise.md"
stamp "done: $OUT/report/summary.md, $OUT/lr_audit.md"
