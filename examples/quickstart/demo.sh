#!/bin/sh
# `make demo`: the first hour in a minute -- a run, its record and metrics, a small sweep, and what to try next.
#
# Runs in examples/quickstart, whose run history is examples/quickstart/.mltrain: the folder is made first,
# so mltrain finds it there rather than at the repository's root (`make clean` removes it).
# MLTRAIN: the mltrain command (default: the one on PATH).
set -eu
cd "$(dirname "$0")"
MLTRAIN=${MLTRAIN:-mltrain}
mkdir -p .mltrain

bold='' plain=''
if [ -t 1 ]; then bold=$(printf '\033[1m') plain=$(printf '\033[0m'); fi
say() { printf '\n%s== %s%s\n$ mltrain %s\n' "$bold" "$1" "$plain" "$2"; }
hint() { printf '  %-48s  %s\n' "mltrain $1" "$2"; }
newest() {  # the id of the newest run (or sweep) in the history
    "$MLTRAIN" "$1" list --limit 1 --json | sed -n 's/^ *"id": "\([0-9a-f]*\)".*/\1/p' | head -n 1
}

say "1. a run on this machine: train.py gets --lr 0.05 --epochs 5; its output streams here" \
    "script=train.py params.lr=0.05 params.epochs=5"
"$MLTRAIN" script=train.py params.lr=0.05 params.epochs=5
run=$(newest runs)

say "2. what the history keeps about it: status, git state, snapshot, config" "runs show $run"
"$MLTRAIN" runs show "$run"

say "3. the metrics train.py logged (mltrain.log_metric, or '::metric' lines on stdout)" "runs metrics $run"
"$MLTRAIN" runs metrics "$run"

say "4. a sweep: three learning rates side by side, ranked by the last loss" \
    "-m script=train.py params.lr=0.01,0.05,0.2 sweep.primary_metric=loss"
"$MLTRAIN" -m script=train.py params.lr=0.01,0.05,0.2 sweep.primary_metric=loss
sweep=$(newest sweeps)

printf '\n%s== where to look next%s (source .venv/bin/activate; cd examples/quickstart)\n' "$bold" "$plain"
hint "runs list" "every run above, newest first"
hint "runs logs $run" "the first run's output, as it streamed"
hint "runs outputs $run" "what it wrote to \$MLTRAIN_OUTPUT_DIR (model.json)"
hint "sweeps show $sweep" "the sweep's table again (--json for scripts)"
hint "plan script=train.py environment=sklearn" "what a run in the pinned scikit-learn venv would do"
hint "--help" "every command, with examples"
echo "the run history: $(pwd)/.mltrain (make clean removes it)"
