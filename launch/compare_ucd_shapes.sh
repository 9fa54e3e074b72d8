#!/usr/bin/env bash
# The second paper's methods and baselines on `shapes`: scenarios 15-5 and
# 15-1, settings overlapped and disjoint, one `python -m incseg_jax.sweep` per
# scenario and setting (seeds $SEEDS, default 0; $PARALLEL runs at once,
# default 1). In each sweep the methods whose step 0 trains as ft's start from
# the ft run's step-0 model of their seed (the sweep prints which; mib, lwf and
# lwf_mc train void as background and so train their own step 0); joint is the
# upper bound. Each sweep writes its table (mean ± std over seeds) to
# $WORKDIR/<setting>/<task>/sweep.{md,csv,json}. As before, the per-class
# comparison table of the first seed's runs (python -m incseg_jax.compare; M0
# is that scenario's ft step 0) goes to docs/results_shapes_<task>_<setting>.{md,csv}.
# A method that fails is reported and left out; the script then exits 1.
#   SEEDS=0,1,2 bash launch/compare_ucd_shapes.sh [extra --config overrides]
set -uo pipefail
source "$(dirname "$0")/_install.sh"
out="${WORKDIR:-runs/ucd_shapes}"
seeds="${SEEDS:-0}"
methods=(ft lwf lwf_mc ilt mib plop ucd mib_ucd plop_ucd joint)
status=0
for setting in overlapped disjoint; do
  for task in 15-5 15-1; do
    dir="$out/$setting/$task"
    python -m incseg_jax.sweep --config=configs/shapes.py:task=$task,setting=$setting \
      --methods="$(IFS=,; echo "${methods[*]}")" --seeds="$seeds" --parallel="${PARALLEL:-1}" \
      --workdir="$dir" "$@" || status=1
    runs=()
    for m in "${methods[@]}"; do
      [ -f "$dir/$m/seed_${seeds%%,*}/results.json" ] && runs+=("$dir/$m/seed_${seeds%%,*}")
    done
    [ ${#runs[@]} -gt 0 ] && python -m incseg_jax.compare "${runs[@]}" \
      --markdown="docs/results_shapes_${task}_${setting}.md" --csv="docs/results_shapes_${task}_${setting}.csv" \
      || status=1
  done
done
exit $status
