#!/usr/bin/env bash
# The second paper's methods and baselines on `shapes`: scenarios 15-5 and
# 15-1, settings overlapped and disjoint. Per setting, every method starts from
# the same step-0 model (the ft 15-5 run's, via init_from: 15-5 and 15-1 share
# their step-0 classes); joint is the upper bound. A method that fails is
# reported and skipped. Writes docs/results_shapes_<task>_<setting>.{md,csv}.
#   bash launch/compare_ucd_shapes.sh [extra --config overrides]
set -uo pipefail
source "$(dirname "$0")/_install.sh"
out="${WORKDIR:-runs/ucd_shapes}"
methods=(lwf lwf_mc ilt mib plop ucd mib_ucd plop_ucd)
cfg=configs/shapes.py
# The same joint run as launch/compare_ilt_shapes.sh (a finished run is only re-read).
joint="${JOINT_WORKDIR:-runs/ilt_shapes/joint}"
python -m incseg_jax.main --config=$cfg:method=joint --workdir="$joint" "$@" || exit 1
for setting in overlapped disjoint; do
  base="$out/$setting/15-5/ft"
  python -m incseg_jax.main --config=$cfg:task=15-5,method=ft,setting=$setting --workdir="$base" "$@" || exit 1
  for task in 15-5 15-1; do
    dirs=()
    for m in ft "${methods[@]}"; do
      dir="$out/$setting/$task/$m"
      [ "$dir" = "$base" ] || python -m incseg_jax.main --config=$cfg:task=$task,method=$m,setting=$setting \
        --workdir="$dir" --config.init_from="$base" "$@" || { echo "FAILED: $m $task $setting"; continue; }
      dirs+=("$dir")
    done
    python -m incseg_jax.compare "${dirs[@]}" "$joint" \
      --markdown="docs/results_shapes_${task}_${setting}.md" --csv="docs/results_shapes_${task}_${setting}.csv"
  done
done
