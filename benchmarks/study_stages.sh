# Stages shared by the study scripts (benchmarks/cpu_scaling_study.sh,
# benchmarks/cpu_ladder_study.sh). Sourced, not run: needs PY (the Python) and OUT
# (the study directory) set.

stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
json_get() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# A grid with tuner.sweep until its ledger holds every cell. An interrupted sweep
# (Ctrl-C, a stopped driver) exits 0 too, so what is left is read off the ledger
# (what --skip-recorded would run). The stage's newest experiment, if unfinished, is
# first resumed from Ray's state (its trials continue from their checkpoints); cells
# still missing (a grid that grew, trials that failed after their retries, an experiment directory
# that is gone) run as a new experiment NAME-2, NAME-3, ... with --skip-recorded.
# run_grid NAME PRESET LEDGER [more tuner.sweep flags]
run_grid() {
    local name=$1 preset=$2 ledger=$3
    shift 3
    left() {
        "$PY" -m tuner.sweep --preset "$preset" --grid --skip-recorded --ledger "$ledger" "$@" --dry-run --json |
            json_get 'd["num_samples"]'
    }
    local n last="" probe=$name j=1
    n=$(left "$@")
    # The newest experiment of this stage (NAME, NAME-2, ...): resumed unless it has ended.
    while [ -d "$OUT/$probe" ]; do last=$probe; j=$((j + 1)); probe="$name-$j"; done
    if [ "$n" != "0" ] && [ -n "$last" ] && [ ! -f "$OUT/$last/.ended" ]; then
        stamp "$last: $n cell(s) left; tuner.sweep --resume"
        "$PY" -m tuner.sweep --name "$last" --storage "$OUT" --resume
        touch "$OUT/$last/.ended"
        n=$(left "$@")
    fi
    if [ "$n" != "0" ]; then
        local part=$name i=1
        while [ -d "$OUT/$part" ]; do i=$((i + 1)); part="$name-$i"; done
        stamp "$part: $n cell(s) left; tuner.sweep --preset $preset --grid --skip-recorded $*"
        "$PY" -m tuner.sweep --preset "$preset" --grid --skip-recorded --name "$part" --storage "$OUT" \
            --ledger "$ledger" "$@"
        touch "$OUT/$part/.ended"
        n=$(left "$@")
    fi
    if [ "$n" != "0" ]; then
        echo "error: $name's ledger lacks $n cell(s) (interrupted, or trials failed after their retries);" \
             "rerun this script to continue" >&2
        exit 1
    fi
    stamp "$name: every cell is in $ledger"
}

