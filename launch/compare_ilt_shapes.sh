#!/usr/bin/env bash
# The first paper's methods on `shapes`, sequential setting ("incremental
# learning": old classes keep their labels), scenarios 15-1 and 19-1. Every
# method starts from the same step-0 model (the ft run's, via init_from);
# joint is the upper bound. Writes docs/results_shapes_<scenario>.{md,csv}.
#   bash launch/compare_ilt_shapes.sh [extra --config overrides]
set -euo pipefail
source "$(dirname "$0")/_install.sh"
out="${WORKDIR:-runs/ilt_shapes}"
methods=(kd_cls kd_cls_t ef e2lf ef+kd_cls_t kd_enc kd_dec spkd spkd_avg ilt)
cfg=configs/shapes.py
python -m incseg_jax.main --config=$cfg:method=joint --workdir="$out/joint" "$@"
for task in 15-1 19-1; do
  base="$out/$task/ft"
  python -m incseg_jax.main --config=$cfg:task=$task,method=ft,setting=sequential --workdir="$base" "$@"
  dirs=("$base")
  for m in "${methods[@]}"; do
    python -m incseg_jax.main --config=$cfg:task=$task,method=$m,setting=sequential \
      --workdir="$out/$task/$m" --config.init_from="$base" "$@"
    dirs+=("$out/$task/$m")
  done
  python -m incseg_jax.compare "${dirs[@]}" "$out/joint" \
    --markdown="docs/results_shapes_$task.md" --csv="docs/results_shapes_$task.csv"
done
