#!/usr/bin/env bash
# The first paper's methods on `shapes`, sequential setting ("incremental
# learning": old classes keep their labels), scenarios 15-1 and 19-1, scored
# on the held-out `test` split, one
# `python -m incseg_jax.sweep` per scenario (seeds $SEEDS, default 0;
# $PARALLEL runs at once, default 1). Every method here trains step 0 as ft
# does, so all start from the ft run's step-0 model of their seed; joint is
# the upper bound. Each sweep writes its table (mean ± std over seeds) to
# $WORKDIR/<scenario>/sweep.{md,csv,json}. As before, the per-class
# comparison table of the first seed's runs (python -m incseg_jax.compare)
# goes to docs/results_shapes_<scenario>.{md,csv}. A method that fails is
# reported and left out; the script then exits 1.
#   SEEDS=0,1,2 bash launch/compare_ilt_shapes.sh [extra --config overrides]
set -uo pipefail
source "$(dirname "$0")/_install.sh"
out="${WORKDIR:-runs/ilt_shapes}"
seeds="${SEEDS:-0}"
methods=(ft kd_cls kd_cls_t ef e2lf ef+kd_cls_t kd_enc kd_dec spkd spkd_avg ilt joint)
status=0
for task in 15-1 19-1; do
  dir="$out/$task"
  python -m incseg_jax.sweep --config=configs/shapes.py:task=$task,setting=sequential \
    --methods="$(IFS=,; echo "${methods[*]}")" --seeds="$seeds" --parallel="${PARALLEL:-1}" \
    --workdir="$dir" --config.dataset.eval_split=test "$@" || status=1
  runs=()
  for m in "${methods[@]}"; do
    [ -f "$dir/$m/seed_${seeds%%,*}/results.json" ] && runs+=("$dir/$m/seed_${seeds%%,*}")
  done
  [ ${#runs[@]} -gt 0 ] && python -m incseg_jax.compare "${runs[@]}" \
    --markdown="docs/results_shapes_$task.md" --csv="docs/results_shapes_$task.csv" || status=1
done
exit $status
