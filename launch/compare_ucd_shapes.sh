#!/usr/bin/env bash
# The second paper's methods and baselines on `shapes`, scored on the held-out
# `test` split: scenarios 15-5 and 15-1, settings overlapped and disjoint, one
# `python -m incseg_jax.sweep` per scenario and setting (seeds $SEEDS, default
# 0,1,2; $PARALLEL runs at once, default 1). In the 15-5 sweep the methods whose
# step 0 trains as ft's start from the ft run's step-0 model of their seed (the
# sweep prints which; mib, lwf and lwf_mc train void as background and so train
# their own step 0); the 15-1 sweep takes every run's step 0 from the 15-5
# sweep (--step0_from), as the papers' 15-5 and 15-1 share their step-0 model.
# joint (the upper bound; one step of every class, the same in every setting)
# runs in the overlapped 15-5 sweep. Each sweep writes its table (mean ± std
# over seeds) to $WORKDIR/<setting>/<task>/sweep.{md,csv,json}; the per-class
# comparison table of the first seed's runs (python -m incseg_jax.compare; M0 is
# that scenario's ft step 0) goes to docs/results_shapes_<task>_<setting>.{md,csv}.
# A method that fails is reported and left out; the script then exits 1.
#   SEEDS=0,1,2 bash launch/compare_ucd_shapes.sh [extra --config overrides]
set -uo pipefail
source "$(dirname "$0")/_install.sh"
out="${WORKDIR:-runs/ucd_shapes}"
seeds="${SEEDS:-0,1,2}"
methods=(ft lwf lwf_mc ilt mib plop mib_ucd plop_ucd)
status=0
for setting in overlapped disjoint; do
  for task in 15-5 15-1; do
    dir="$out/$setting/$task"
    listed=("${methods[@]}")
    extra=()
    if [ "$task" = 15-5 ] && [ "$setting" = overlapped ]; then listed+=(joint); fi
    if [ "$task" = 15-1 ]; then extra=(--step0_from="$out/$setting/15-5"); fi
    python -m incseg_jax.sweep --config=configs/shapes.py:task=$task,setting=$setting \
      --methods="$(IFS=,; echo "${listed[*]}")" --seeds="$seeds" --parallel="${PARALLEL:-1}" \
      --workdir="$dir" "${extra[@]}" --config.dataset.eval_split=test "$@" || status=1
    runs=()
    for m in "${listed[@]}"; do
      [ -f "$dir/$m/seed_${seeds%%,*}/results.json" ] && runs+=("$dir/$m/seed_${seeds%%,*}")
    done
    [ ${#runs[@]} -gt 0 ] && python -m incseg_jax.compare "${runs[@]}" \
      --markdown="docs/results_shapes_${task}_${setting}.md" --csv="docs/results_shapes_${task}_${setting}.csv" \
      || status=1
  done
done
exit $status
