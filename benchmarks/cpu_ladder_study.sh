#!/usr/bin/env bash
# The CPU scaling study grown to answer the paper's claims with 95% intervals
# (docs/cpu_ladder_study.md): six model sizes over two decades of parameters, budgets
# up to 8 epochs for the smaller ones, LRs 0.2-0.8 at seed 0 and three seeds of every
# cell at its best LR. Rerun it to continue after an interruption: every stage runs
# only what its ledger lacks.
#
#     bash benchmarks/cpu_ladder_study.sh            # about 4 h on 2 cores
#     STUDY_FROM=docs/cpu_ladder_study bash benchmarks/cpu_ladder_study.sh
#     RECORD_TO=docs/cpu_ladder_study bash benchmarks/cpu_ladder_study.sh
#     SWEEP_FLAGS="--num-cpus 1" bash benchmarks/cpu_ladder_study.sh   # one trial at a time
#
# One ledger holds it all: it starts as the first study's grid and seed ledgers
# (docs/cpu_scaling_study/, 165 runs: nano, mini, small at 0.125-2 epochs) and the
# grids of benchmarks/cpu_ladder.py add to it. STUDY_FROM adds the part files of a
# recorded ledger (STUDY_FROM/ledger) that this one lacks, so a study continues in a
# new checkout from its record; RECORD_TO writes that record (the ledger, the report,
# the figures) and can be run part-way: the report says what the runs so far answer.
# Stages, most informative first: seed 0 of the new sizes and of the long budgets (at
# LRs 0.2, 0.4, 0.8), then seeds 1 and 2 of every ladder cell at its best LR of seed 0
# (the first study already ran nano's and mini's at three LRs: those are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
OUT=${STUDY_DIR:-results/ladder}
FIRST=${FIRST_STUDY:-docs/cpu_scaling_study}
LADDER=benchmarks/cpu_ladder.py
LEDGER=$OUT/ledger
read -r -a EXTRA <<< "${SWEEP_FLAGS:-}"
mkdir -p "$OUT"
# stamp, json_get and run_grid (a grid continued until its ledger holds every cell).
source benchmarks/study_stages.sh

# (0) The ledger: the first study's runs, and a recorded ladder's.
add_parts() {  # add_parts FROM_LEDGER: copy its part files that $LEDGER lacks
    mkdir -p "$LEDGER"
    local part n=0
    for part in "$1"/part-*.parquet; do
        [ -e "$part" ] || continue
        if [ ! -e "$LEDGER/$(basename "$part")" ]; then cp "$part" "$LEDGER/"; n=$((n + 1)); fi
    done
    stamp "ledger: $n part file(s) added from $1"
}
if [ ! -d "$LEDGER" ]; then
    add_parts "$FIRST/grid-ledger"
    add_parts "$FIRST/seeds-ledger"
fi
if [ -n "${STUDY_FROM:-}" ]; then
    add_parts "$STUDY_FROM/ledger"
fi

# (2) The report: frontier, joint law, IsoFLOP profiles, LR table, seed noise.
report() {
    stamp "report: tuner.report, benchmarks/seed_noise.py"
    "$PY" -m tuner.report --ledger "$LEDGER" --out "$OUT/report" --json > "$OUT/report.json"
    "$PY" -m tuner.ledger show --ledger "$LEDGER" > "$OUT/ledger.txt"
    "$PY" benchmarks/seed_noise.py --ledger "$LEDGER" > "$OUT/seed_noise.md"
}

# (3) The record: the ledger (checkpoint paths relative to the repository), the report.
record() {
    mkdir -p "$RECORD_TO"
    "$PY" - "$OUT" "$RECORD_TO" <<'PYEOF'
import os, shutil, sys
from tuner.ledger import Ledger

out, record = sys.argv[1], sys.argv[2]
rows = Ledger(os.path.join(out, "ledger")).read().to_pylist()
for row in rows:
    uri = row.get("checkpoint_uri")
    if uri and "://" not in uri and os.path.isabs(uri):
        row["checkpoint_uri"] = os.path.relpath(uri)
shutil.rmtree(os.path.join(record, "ledger"), ignore_errors=True)
Ledger(os.path.join(record, "ledger")).append(rows)
for name in ("report.json", "seed_noise.md", "ledger.txt", "seed_cells.py"):
    if os.path.exists(os.path.join(out, name)):
        shutil.copy(os.path.join(out, name), record)
shutil.rmtree(os.path.join(record, "report"), ignore_errors=True)
shutil.copytree(os.path.join(out, "report"), os.path.join(record, "report"))
PYEOF
    stamp "recorded in $RECORD_TO"
}
if [ -n "${RECORD_ONLY:-}" ]; then  # the report and record of the runs so far, nothing run
    report
    [ -n "${RECORD_TO:-}" ] && record
    exit 0
fi

# (1) Seed 0 of the new sizes and the long budgets; then seeds 1 and 2 of every ladder
# cell at its best LR of seed 0 (a preset file written from the ledger: only_cells).
run_grid "ladder-sizes-s0" "$LADDER:SIZES" "$LEDGER" --seed 0 "${EXTRA[@]}"
run_grid "ladder-long-s0" "$LADDER:LONG" "$LEDGER" --seed 0 "${EXTRA[@]}"
"$PY" "$LADDER" seed-cells --ledger "$LEDGER" > "$OUT/seed_cells.py"
stamp "seed repeats: $OUT/seed_cells.py (each cell at its best LR of seed 0)"
for seed in 1 2; do
    run_grid "ladder-seeds-s$seed" "$OUT/seed_cells.py:SEEDS" "$LEDGER" --seed "$seed" "${EXTRA[@]}"
done

report
[ -n "${RECORD_TO:-}" ] && record
stamp "done: $OUT/report/summary.md"
