#!/usr/bin/env bash
# The CPU-scale reproduction study of docs/cpu_scaling_study.md, end to end, with
# nfscale's own commands. Rerun it to continue after an interruption, or after the
# presets grew: every stage works out what is missing and runs only that.
#
#     bash benchmarks/cpu_scaling_study.sh            # everything, about 2 h 15 min on 2 cores
#     STUDY_DIR=elsewhere bash benchmarks/cpu_scaling_study.sh
#     STUDY_FROM=docs/cpu_scaling_study bash benchmarks/cpu_scaling_study.sh
#     RECORD_TO=docs/cpu_scaling_study bash benchmarks/cpu_scaling_study.sh
#
# STUDY_FROM continues in a new checkout from a recorded study's ledgers (a directory
# holding grid-ledger/, seeds-ledger/ and walk-ledger/, as docs/cpu_scaling_study/
# does): they are copied in where the study directory has none, and only what they
# lack is run. Only the ledgers travel, not the checkpoints, so promotion needs its
# parents' checkpoints on this machine (tuner.promote says so when one is missing).
# RECORD_TO writes that record at the end: the ledgers (checkpoint paths relative to
# the repository), the reports and the figures.
#
# Stages: (1) the full grid with tuner.sweep, (1b) two more seeds of the nano and
# mini cells near their optima, (2) tuner.lr_search walked through the cells in order
# of size then epoch budget, (3) tuner.promote of the best run of each of the 5
# best (model, epoch budget) cells to digits at 32px, (4) tuner.report, tuner.lr_audit and the seed-noise table,
# (5) with RECORD_TO, the record.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
OUT=${STUDY_DIR:-results/study}
GRID_PRESET=cpu-scaling
SEEDS_PRESET=benchmarks/cpu_scaling_seeds.py
GRID_LEDGER=$OUT/grid-ledger
SEEDS_LEDGER=$OUT/seeds-ledger
WALK_LEDGER=$OUT/walk-ledger
FINETUNE_TOP_K=5
mkdir -p "$OUT/walk"
# stamp, json_get and run_grid (a grid continued until its ledger holds every cell).
source benchmarks/study_stages.sh

# The study's cells are the grid preset's.
plan=$("$PY" -m tuner.sweep --preset "$GRID_PRESET" --grid --dry-run --json)
read -r -a VARIANTS <<< "$(json_get '" ".join(d["space"]["variant"])' <<< "$plan")"
read -r -a EPOCHS <<< "$(json_get '" ".join(f"{e:g}" for e in d["space"]["epochs"])' <<< "$plan")"

if [ -n "${STUDY_FROM:-}" ]; then
    for ledger in grid-ledger seeds-ledger walk-ledger; do
        if [ -d "$STUDY_FROM/$ledger" ] && [ ! -d "$OUT/$ledger" ]; then
            stamp "continuing from $STUDY_FROM/$ledger"
            cp -r "$STUDY_FROM/$ledger" "$OUT/$ledger"
        fi
    done
fi

# (1) The grid: every model x epoch budget x LR of the preset, every run to its end.
run_grid cpu-scaling-grid "$GRID_PRESET" "$GRID_LEDGER"
# (1b) Seed repeats of nano and mini at the LRs where their optima lie: how much of a
# cell's LR ranking is noise (benchmarks/seed_noise.py).
for seed in 1 2; do
    run_grid "cpu-scaling-seed$seed" "$SEEDS_PRESET" "$SEEDS_LEDGER" --seed "$seed"
done

# (2) The LR search, cell by cell, smallest model and shortest budget first, from an
# empty ledger: each cell is predicted from the cells the walk has already tuned (its
# own ledger; the first from the paper's 1.6 at batch 4096) and bracketed two ways.
# The trials use the grid's trainer settings and seed, so a trial's loss is the grid's
# run at that LR. No anchor: the first cell climbs from the paper's default itself.
# `tuner.lr_audit` replays the same walk on the grid with the same planner code.
for variant in "${VARIANTS[@]}"; do
    for epochs in "${EPOCHS[@]}"; do
        common=(--variant "$variant" --epochs "$epochs" --batch-size 128 --resolution 16
                --dataset fashion_mnist --max-eval-examples 5000 --evals-per-run 4
                --fast-compile --ledger "$WALK_LEDGER" --storage "$OUT")
        status=$("$PY" -m tuner.lr_search "${common[@]}" --dry-run --json | json_get 'd["status"]')
        if [ "$status" = "done" ]; then
            stamp "walk: $variant at $epochs epochs already tuned"
            continue
        fi
        stamp "walk: tuner.lr_search --variant $variant --epochs $epochs"
        # A search that stops unbracketed exits 1; the next run of this script continues it.
        "$PY" -m tuner.lr_search "${common[@]}" --experiment-name "walk-$variant-e$epochs-$(date -u +%H%M%S)" \
            --json > "$OUT/walk/$variant-e$epochs.json" || stamp "walk: $variant at $epochs epochs did not end bracketed"
    done
done

# (3) Promote the best pre-trained models to digits at 32px: the best run of each of the
# FINETUNE_TOP_K best (model, epoch budget) cells, leaving out those fine-tuned already.
stamp "promote: tuner.promote --dataset digits --resolution 32 --top-k $FINETUNE_TOP_K --per-cell --skip-promoted"
part=cpu-scaling-finetune i=1
while [ -d "$OUT/$part" ]; do i=$((i + 1)); part="cpu-scaling-finetune-$i"; done
"$PY" -m tuner.promote --ledger "$GRID_LEDGER" --dataset digits --resolution 32 --top-k "$FINETUNE_TOP_K" \
    --per-cell --skip-promoted --name "$part" --storage "$OUT" --json > "$OUT/$part.json"

# (4) Scaling laws, the optimal-LR table, the walk against the grid, the seed noise.
stamp "report: tuner.report, tuner.lr_audit, benchmarks/seed_noise.py"
"$PY" -m tuner.report --ledger "$GRID_LEDGER" --lr-search-ledger "$WALK_LEDGER" \
    --out "$OUT/report" --json > "$OUT/report.json"
"$PY" -m tuner.lr_audit --grid "$GRID_LEDGER" --search "$WALK_LEDGER" --out "$OUT/lr_audit.md"
"$PY" -m tuner.ledger show --ledger "$GRID_LEDGER" > "$OUT/grid-ledger.txt"
"$PY" -m tuner.ledger show --ledger "$WALK_LEDGER" > "$OUT/walk-ledger.txt"
"$PY" benchmarks/seed_noise.py --ledger "$GRID_LEDGER" --ledger "$SEEDS_LEDGER" > "$OUT/seed_noise.md"
stamp "done: $OUT/report/summary.md, $OUT/lr_audit.md, $OUT/seed_noise.md"

# (5) The record: ledgers with checkpoint paths relative to the repository, reports, figures.
if [ -n "${RECORD_TO:-}" ]; then
    mkdir -p "$RECORD_TO"
    "$PY" - "$OUT" "$RECORD_TO" <<'EOF'
import os, shutil, sys
from tuner.ledger import Ledger

out, record = sys.argv[1], sys.argv[2]
for name in ("grid-ledger", "seeds-ledger", "walk-ledger"):
    rows = Ledger(os.path.join(out, name)).read().to_pylist()
    for row in rows:
        uri = row.get("checkpoint_uri")
        if uri and "://" not in uri and os.path.isabs(uri):
            row["checkpoint_uri"] = os.path.relpath(uri)
    shutil.rmtree(os.path.join(record, name), ignore_errors=True)
    Ledger(os.path.join(record, name)).append(rows)
for name in ("report.json", "lr_audit.md", "seed_noise.md", "grid-ledger.txt", "walk-ledger.txt"):
    shutil.copy(os.path.join(out, name), record)
shutil.rmtree(os.path.join(record, "report"), ignore_errors=True)
shutil.copytree(os.path.join(out, "report"), os.path.join(record, "report"))
EOF
    stamp "recorded in $RECORD_TO"
fi
